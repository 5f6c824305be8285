"""Section 1 of the SLAM v3 benchmark: KV-cache bytes per generated token, read from the real cache tensors after
two `generate` calls of different lengths (bytes per token = growth of the self-attention cache / (batch * extra
tokens)), for SLAM v3 (MLA latent), the same decoder with MHA, Bart, Llama and DeepSeek-V3. Target: SLAM v3 <= 1/5
of MHA."""

import gc

import torch

from slam_hf.bench.measure import cache_nbytes
from slam_hf.slam_compat import EncoderDecoderCache, output_cache
from slam_hf.training.run_config import v3_cache_bytes_per_token

from .v3_models import CACHE_TARGET, deepseek_model, llama_model
from .v3_timing import set_threads


def split_cache(cache):
    if isinstance(cache, EncoderDecoderCache):
        return cache.self_attention_cache, cache.cross_attention_cache
    return cache, None


def layer_shapes(cache):
    layer = cache.layers[0]
    return f"K {tuple(layer.keys.shape)} V {tuple(layer.values.shape)} {str(layer.keys.dtype).replace('torch.', '')}"


@torch.no_grad()
def measure_cache(model, prompt, new_tokens, encoder_decoder):
    """Self-attention cache bytes per generated token: growth between two generations / (batch * extra tokens)."""
    points = []
    for n in new_tokens:
        out = model.generate(
            input_ids=prompt,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            return_dict_in_generate=True,
        )
        self_cache, cross_cache = split_cache(output_cache(out))
        points.append((self_cache.get_seq_length(), cache_nbytes(self_cache), cache_nbytes(cross_cache), self_cache))
    (len1, b1, _, _), (len2, b2, cross, last) = points
    batch = prompt.shape[0]
    return {
        "bytes_per_token": (b2 - b1) / (batch * (len2 - len1)),
        "bytes_per_cached_token": b2 / (batch * len2),
        "cached_tokens": [len1, len2],
        "cross_attention_bytes_per_sequence": cross / batch if encoder_decoder else None,
        "layer_tensors": layer_shapes(last),
        "layers": len(last.layers),
    }


def cache_rows(args, models):
    """Bytes per token of every model; a transformers reference that does not build is reported, not fatal."""
    torch.manual_seed(args.seed)
    prompt = torch.randint(10, args.vocab_size, (args.cache_batch, 16))
    rows = {}
    entries = [
        ("SLAM v3 (MLA latent)", models["v3"], True),
        ("SLAM v3, MHA self-attn", models["v3_mha"], True),
        ("Bart (MHA)", models["bart"], True),
    ]
    extra = [("Llama (MHA, decoder-only)", llama_model), ("DeepSeek-V3 (transformers MLA)", deepseek_model)]
    set_threads(args.setup_threads)
    for name, model, enc_dec in entries:
        rows[name] = measure_cache(model, prompt, args.cache_new_tokens, enc_dec)
    for name, build in extra:
        try:
            torch.manual_seed(args.seed)
            model = build(args)
            rows[name] = measure_cache(model, prompt, args.cache_new_tokens, False)
            del model
        except Exception as exc:
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        gc.collect()
    set_threads(args.threads)
    return rows


def section_cache(args, report, models):
    report("\n" + "=" * 100)
    report("1. KV-cache bytes per generated token (self-attention cache growth measured after generate)")
    report("=" * 100)
    rows = cache_rows(args, models)
    mha = rows["SLAM v3, MHA self-attn"]["bytes_per_token"]
    expected, _ = v3_cache_bytes_per_token(models["v3"].config)  # fp32
    report(
        f"fp32, batch {args.cache_batch}, prompt 16, generations of {args.cache_new_tokens} new tokens; "
        f"{args.decoder_layers} decoder layers, hidden {args.hidden_size}, {args.num_heads} heads; MLA "
        f"kv_lora_rank {args.kv_lora_rank} + qk_rope {args.qk_rope_head_dim}"
    )
    report(f"{'model':<32}{'B/token':>10}{'vs MHA':>8}  one layer of the self-attention cache (after the longer run)")
    for name, r in rows.items():
        if "error" in r:
            report(f"{name:<32}{'-':>10}{'-':>8}  did not build/run: {r['error'][:120]}")
            continue
        report(f"{name:<32}{r['bytes_per_token']:>10,.0f}{r['bytes_per_token'] / mha:>8.3f}  {r['layer_tensors']}")
    v3 = rows["SLAM v3 (MLA latent)"]
    report(
        f"SLAM v3 measured {v3['bytes_per_token']:,.0f} B/token = (kv_lora_rank + qk_rope) x 4 B x layers = "
        f"{expected:,} expected: {'OK' if v3['bytes_per_token'] == expected else 'MISMATCH'}"
    )
    for name in ("SLAM v3 (MLA latent)", "SLAM v3, MHA self-attn", "Bart (MHA)"):
        cross = rows[name]["cross_attention_bytes_per_sequence"]
        report(
            f"  {name}: cross-attention K/V cache {cross:,.0f} B per sequence (16 memory tokens, fixed, "
            "not per generated token)"
        )
    ratio = v3["bytes_per_token"] / mha
    ok = ratio <= CACHE_TARGET
    report(f"target: SLAM v3 / MHA = {ratio:.3f} <= {CACHE_TARGET:.2f} (1/5): {'PASS' if ok else 'MISS'}")
    return {"rows": rows, "ratio": ratio, "pass": ok, "expected_v3_bytes_per_token": expected}
