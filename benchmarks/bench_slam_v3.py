#!/usr/bin/env python
"""SLAM v3 benchmark (DESIGN §5): MLA cache size, MLA decoding speed, batched encoder paths — one run, baselines
built in the same run, ratios measured against them.

1. KV-cache bytes per generated token, read from the real cache tensors after `generate` (two generations of
   different lengths; bytes per token = growth of the self-attention cache / (batch * extra tokens)):
     SLAM v3 (MLA latent cache) vs the same SLAM v3 decoder with standard MHA self-attention (same hidden size,
     heads, head width, layers), BartForConditionalGeneration of the same width (transformers' MHA
     encoder-decoder), LlamaForCausalLM of the same width (decoder-only reference) and DeepseekV3ForCausalLM
     with the same MLA dims (transformers' MLA). Target: SLAM v3 <= 1/5 of MHA.
2. Decode speed at --context tokens of decoder prefix, batch --batch-size: one model forward per new token with
   the cache (median ms over all timed steps), for SLAM v3 with MLA absorbed (absorb="auto", which absorbs at
   one query per step), SLAM v3 with MLA expanded (absorb=False: kv_b_proj re-expands the whole cached latent
   every step, as transformers' DeepSeek-V3 does), the same decoder with MHA self-attention (the target's
   baseline) and Bart (reference). Fair comparison: every model cross-attends to the same --memory-len-token
   encoder memory (SLAM v3's real encoder output for a prompt), cross-attention K/V projected once at prefill
   and cached; the SLAM variants share every weight except the self-attention; Bart's FFN is sized to the same
   parameter count as SLAM's GeGLU MLP. The prefix is prefilled (untimed) for --prefill-batch sequences and the
   caches repeated to the batch; the cache is cropped back to --context after each timed sample (outside the
   timer), so every sample decodes positions context .. context + steps - 1. Absorbed and expanded logits are
   compared on the same cache (max |diff| printed, must be <= 1e-4). Target: absorbed / MHA <= 1.0.
   transformers' DynamicCache appends with torch.cat, copying the whole cache every step (the MHA cache is 7x
   bigger, so it pays more); the same comparison is repeated with a preallocated cache for both (append in
   place), which isolates the attention itself. Also printed: time inside the self-attention modules (forward
   hooks), the user/system CPU split, and the top profiler ops of a step.
3. The four encoder paths batched (SlamParallelPaths, one computation) vs sequential (`paths.batch_paths =
   False`: each path through its own modules), forward and forward + backward, at several shapes, outputs and
   gradients checked equal; also whole-encoder forward (vision tower + masks + paths + fusion). Measured with 1
   thread (process time) and with 2 threads (wall time: process time would add up both threads). Then a
   diagnosis: achieved GFLOP/s vs this core's matmul roofline, the cost of weight stacking, mask building,
   GQA repeat_kv and SDPA with bool / float / no mask, and a prototype that skips the rows a path gives no key
   (text path on text tokens only, image path on image tokens only, empty paths skipped) with its speed-up.
   Target: batched >= 1.5x faster.

Timings interleave the variants (order reversed every round) and report medians, so a busy machine shifts all
alike; with 1 torch thread and process time (the default) other processes barely matter.

    PYTHONPATH=. python benchmarks/bench_slam_v3.py            # ~4-5 min, writes benchmarks/results/v3_cpu_1thread.txt
    PYTHONPATH=. python benchmarks/bench_slam_v3.py --quick    # < 1 min smoke run, writes nothing unless --out
"""

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from transformers import BartConfig, BartForConditionalGeneration, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.cache_utils import DynamicLayer  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

from slam_hf import SlamV3Config, SlamV3ForConditionalGeneration  # noqa: E402
from slam_hf.bench.machine import cpu_name, git_state, load_average, software_versions  # noqa: E402
from slam_hf.bench.measure import cache_nbytes, count_parameters, interleave, interleaved, timed  # noqa: E402
from slam_hf.configuration_slam import ENCODER_PATHS  # noqa: E402
from slam_hf.slam_attention import SlamAttention  # noqa: E402
from slam_hf.slam_compat import EncoderDecoderCache, output_cache  # noqa: E402
from slam_hf.slam_fusion import SlamParallelPaths, path_masks  # noqa: E402
from slam_hf.slam_grouped import StackedLayers  # noqa: E402
from slam_hf.slam_layers import SlamRotaryEmbedding  # noqa: E402
from slam_hf.training.run_config import v3_cache_bytes_per_token  # noqa: E402

CACHE_TARGET = 0.2  # SLAM v3 self-attention cache bytes per token / MHA (<=)
DECODE_TARGET = 1.0  # absorbed MLA decode step time / MHA decode step time (<=)
PATHS_TARGET = 1.5  # sequential / batched encoder-path time (>=)
EQUAL_TOL = 1e-4


# --------------------------------------------------------------------------------------------- setup
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 min); no file unless --out")
    sections = ["cache", "decode", "encoder"]
    p.add_argument("--sections", nargs="+", default=sections, choices=sections)
    p.add_argument("--threads", type=int, default=1, help="torch threads for sections 1-2 (timed with --timer)")
    p.add_argument("--setup-threads", type=int, default=None, help="threads for untimed prefills (default: all cores)")
    p.add_argument("--timer", default="process", choices=["process", "wall"], help="clock for 1-thread timings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results text file (default: benchmarks/results/v3_cpu_1thread.txt)")
    p.add_argument("--no-json", action="store_true", help="do not write the .json next to --out")
    # Decoder (sections 1 and 2).
    p.add_argument("--hidden-size", type=int, default=1024)
    p.add_argument("--num-heads", type=int, default=16)
    p.add_argument("--kv-lora-rank", type=int, default=256)
    p.add_argument("--q-lora-rank", type=int, default=None)
    p.add_argument("--qk-nope-head-dim", type=int, default=64)
    p.add_argument("--qk-rope-head-dim", type=int, default=32)
    p.add_argument("--v-head-dim", type=int, default=64)
    p.add_argument("--decoder-layers", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=2816, help="SLAM GeGLU inner size")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--context", type=int, default=1024, help="decoder prefix before the timed decode steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--memory-len", type=int, default=64, help="encoder prompt / memory tokens (cross-attention)")
    p.add_argument(
        "--prefill-batch",
        type=int,
        default=1,
        help="sequences prefilled (untimed); the cache is repeated to --batch-size (shared prefix)",
    )
    p.add_argument("--decode-steps", type=int, default=8, help="new tokens per timed sample")
    p.add_argument("--decode-repeats", type=int, default=4, help="timed samples per variant (after 1 warm-up)")
    p.add_argument("--cache-batch", type=int, default=2)
    p.add_argument("--cache-new-tokens", type=int, nargs=2, default=[4, 12], help="two generation lengths")
    # Encoder paths (section 3).
    p.add_argument(
        "--encoder-shapes",
        nargs="+",
        default=["128x64x32", "256x256x8", "512x512x4"],
        metavar="HxLxB",
        help="hidden x sequence x batch",
    )
    p.add_argument("--encoder-layers", type=int, default=2, help="layers per path (the SlamV3Config default)")
    p.add_argument("--encoder-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--encoder-repeats", type=int, default=None, help="timed repeats (default: by shape)")
    p.add_argument("--no-profile", action="store_true", help="skip the encoder-path profile")
    args = p.parse_args(argv)
    given = {
        token.split("=")[0][2:].replace("-", "_")
        for token in (sys.argv[1:] if argv is None else argv)
        if token.startswith("--")
    }
    if args.quick:
        quick = dict(
            hidden_size=512,
            num_heads=8,
            kv_lora_rank=128,
            decoder_layers=2,
            intermediate_size=1408,
            context=512,
            batch_size=4,
            memory_len=32,
            decode_steps=4,
            decode_repeats=2,
            cache_new_tokens=[2, 6],
            encoder_shapes=["128x64x16", "256x128x4"],
            encoder_threads=[1],
            encoder_repeats=3,
        )
        for name, value in quick.items():
            if name not in given:  # explicit options win over the quick sizes
                setattr(args, name, value)
    if args.out is None and not args.quick:
        args.out = os.path.join(_REPO_ROOT, "benchmarks", "results", f"v3_cpu_{args.threads}thread.txt")
    args.setup_threads = args.setup_threads or os.cpu_count() or 1
    return args


class Report:
    """Prints and keeps every line, for the results file."""

    def __init__(self):
        self.lines = []

    def __call__(self, text=""):
        print(text, flush=True)
        self.lines.append(text)


def clock_pair():
    return time.perf_counter(), time.process_time()


def elapsed(start):
    wall, proc = clock_pair()
    return {"wall": wall - start[0], "proc": proc - start[1]}


def set_threads(n):
    torch.set_num_threads(n)


def environment():
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        **software_versions(),
        "platform": platform.platform(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "git": git_state(_REPO_ROOT),
        "loadavg_at_start": load_average(),
    }


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.3f}"


# --------------------------------------------------------------------------------------------- models
def tiny_vision():
    return dict(patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def v3_config(args):
    config = SlamV3Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        encoder_layers=1,
        decoder_layers=args.decoder_layers,
        kv_lora_rank=args.kv_lora_rank,
        q_lora_rank=args.q_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        max_position_embeddings=args.context + 4 * args.decode_steps + 64,
        vision_config=tiny_vision(),
    )
    config._attn_implementation = "sdpa"
    return config


class MHASelfAttention(nn.Module):
    """Drop-in for SlamLatentAttention in a SlamV3DecoderLayer: standard MHA (SlamAttention, the module of the SLAM
    v1/v2 layers) with RoPE over the full head_dim and K/V (B, heads, S, head_dim) in the cache. Positions come from
    the cache length (the decoder hands MLA the cos/sin of its narrower decoupled RoPE key)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = SlamAttention(config, layer_idx, is_causal=True)
        self.rotary = SlamRotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        past = 0 if cache is None else cache.get_seq_length(self.layer_idx)
        length = hidden_states.shape[1]
        positions = torch.arange(past, past + length, device=hidden_states.device)[None]
        cos_sin = self.rotary(positions, hidden_states.dtype)
        return self.attn(hidden_states, cos_sin, attention_mask, cache)


def v3_with_mha(model, seed):
    """The same SLAM v3 model (every weight shared by value) with MHA self-attention in the decoder."""
    mha = copy.deepcopy(model)
    torch.manual_seed(seed + 1)
    std = model.config.initializer_range
    for index, layer in enumerate(mha.model.decoder.layers):
        layer.self_attn = MHASelfAttention(mha.config, index)
        for module in layer.self_attn.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
    return mha.eval()


def bart_config(args):
    # FFN sized to the parameters of SLAM's GeGLU MLP (3 * H * I == 2 * H * ffn); no biases-free option in Bart
    config = BartConfig(
        vocab_size=args.vocab_size,
        d_model=args.hidden_size,
        encoder_layers=1,
        decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.num_heads,
        decoder_attention_heads=args.num_heads,
        encoder_ffn_dim=3 * args.intermediate_size // 2,
        decoder_ffn_dim=3 * args.intermediate_size // 2,
        max_position_embeddings=max(args.context + 4 * args.decode_steps + 64, 256),
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        forced_bos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    return config


def llama_model(args):
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        num_hidden_layers=args.decoder_layers,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def deepseek_model(args):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        moe_intermediate_size=args.intermediate_size // 4,
        num_hidden_layers=args.decoder_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=args.decoder_layers,
        kv_lora_rank=args.kv_lora_rank,
        q_lora_rank=args.q_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_mtp_layers=0,
    )
    config._attn_implementation = "sdpa"
    return DeepseekV3ForCausalLM(config).eval()


def set_absorb(model, absorb):
    for layer in model.model.decoder.layers:
        layer.self_attn.absorb = absorb


# ------------------------------------------------------------------------------------ 1. cache bytes
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


def section_cache(args, report, models):
    report("\n" + "=" * 100)
    report("1. KV-cache bytes per generated token (self-attention cache growth measured after generate)")
    report("=" * 100)
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
        except Exception as exc:  # a reference that does not build is reported, not fatal
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        gc.collect()
    set_threads(args.threads)

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


# ----------------------------------------------------------------------------------------- 2. decode
class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose appends write into a buffer allocated once (no per-step torch.cat of the whole cache and
    no fresh allocation): isolates the attention from DynamicCache's append cost. Benchmark-only."""

    def __init__(self, keys, values, capacity):
        super().__init__()
        batch, heads, length = keys.shape[:3]
        self.key_buffer = keys.new_empty(batch, heads, capacity, keys.shape[-1])
        self.value_buffer = values.new_empty(batch, values.shape[1], capacity, values.shape[-1])
        self.key_buffer[:, :, :length].copy_(keys)
        self.value_buffer[:, :, :length].copy_(values)
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.crop_to(length)

    def crop_to(self, length):
        self.length = length
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[2]:
            raise RuntimeError("PreallocatedLayer is full")
        self.key_buffer[:, :, self.length : end].copy_(key_states)
        self.value_buffer[:, :, self.length : end].copy_(value_states)
        self.crop_to(end)
        return self.keys, self.values


def preallocated_copy(cache, capacity):
    cache = copy.deepcopy(cache)
    self_cache, _ = split_cache(cache)
    self_cache.layers = [PreallocatedLayer(layer.keys, layer.values, capacity) for layer in self_cache.layers]
    return cache


def crop(cache, length):
    self_cache, _ = split_cache(cache)
    for layer in self_cache.layers:
        if isinstance(layer, PreallocatedLayer):
            layer.crop_to(length)
        else:
            layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]


def top_ops(fn, rows=6):
    """(op, calls, self CPU ms, share %) of the ops that take the most self CPU time in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [(e.key, e.count, e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / total) for e in events[:rows]]


def format_ops(ops):
    return ";  ".join(f"{key} {ms:.1f} ms x{calls:g} ({pct:.0f}%)" for key, calls, ms, pct in ops)


@torch.no_grad()
def section_decode(args, report, models):
    report("\n" + "=" * 100)
    report(
        f"2. Decode step at {args.context} tokens of decoder context, batch {args.batch_size} "
        f"({args.decode_steps} steps per sample, {args.decode_repeats} samples + 1 warm-up per variant)"
    )
    report("=" * 100)
    torch.manual_seed(args.seed)
    v3, v3_mha, bart = models["v3"], models["v3_mha"], models["bart"]
    batch, context, shared = args.batch_size, args.context, args.prefill_batch
    if batch % shared:
        raise SystemExit(f"--prefill-batch {shared} must divide --batch-size {batch}")
    prompt = torch.randint(10, args.vocab_size, (shared, args.memory_len))
    prefix = torch.randint(10, args.vocab_size, (shared, context))
    steps = torch.randint(10, args.vocab_size, (args.decode_steps, batch, 1))

    set_threads(args.setup_threads)
    start = clock_pair()
    memory = v3.get_encoder()(input_ids=prompt).last_hidden_state  # SLAM v3's real encoder output
    encoder_outputs = BaseModelOutput(last_hidden_state=memory)
    models_by_name = {"v3": v3, "v3_mha": v3_mha, "bart": bart}
    caches = {}
    for name, model in models_by_name.items():
        out = model.model(encoder_outputs=encoder_outputs, decoder_input_ids=prefix, use_cache=True)
        caches[name] = output_cache(out)
        caches[name].batch_repeat_interleave(batch // shared)  # self- and cross-attention caches
    encoder_outputs = BaseModelOutput(last_hidden_state=memory.repeat_interleave(batch // shared, dim=0))
    prefill_s = elapsed(start)["wall"]
    set_threads(args.threads)
    for name, cache in caches.items():
        self_cache, cross_cache = split_cache(cache)
        assert self_cache.get_seq_length() == context and self_cache.layers[0].keys.shape[0] == batch, name

    capacity = context + args.decode_steps
    caches["v3_prealloc"] = preallocated_copy(caches["v3"], capacity)
    caches["v3_mha_prealloc"] = preallocated_copy(caches["v3_mha"], capacity)
    models_by_name.update(v3_prealloc=v3, v3_mha_prealloc=v3_mha)

    def step(name, token):
        return models_by_name[name](
            encoder_outputs=encoder_outputs, decoder_input_ids=token, cache=caches[name], use_cache=True
        ).logits[:, -1]

    # absorbed vs expanded on the same cache: the fast path must compute the same thing
    auto_absorbs = all(layer.self_attn.use_absorption(1) for layer in v3.model.decoder.layers)
    set_absorb(v3, True)
    absorbed = step("v3", steps[0])
    crop(caches["v3"], context)
    set_absorb(v3, False)
    expanded = step("v3", steps[0])
    crop(caches["v3"], context)
    max_diff = (absorbed - expanded).abs().max().item()
    scale = expanded.abs().max().item()
    equal = max_diff <= EQUAL_TOL

    variants = {  # name -> (model key, absorb setting)
        "MLA absorbed (auto)": ("v3", "auto"),
        "MLA expanded (absorb=False)": ("v3", False),
        "MHA, same decoder": ("v3_mha", None),
        "Bart MHA": ("bart", None),
        "MLA absorbed, prealloc cache": ("v3_prealloc", "auto"),
        "MHA, same decoder, prealloc": ("v3_mha_prealloc", None),
    }
    cpu = {name: [0.0, 0.0] for name in variants}  # user, system seconds over the timed steps

    # time spent inside the decoder self-attention modules (forward hooks), per step
    attention_clock = {"active": False, "start": None, "total": 0.0}

    def pre_hook(module, inputs):
        if attention_clock["active"]:
            attention_clock["start"] = clock_pair()

    def post_hook(module, inputs, output):
        if attention_clock["active"]:
            attention_clock["total"] += elapsed(attention_clock["start"])["proc" if args.timer == "process" else "wall"]

    hooks = []
    for model in (v3, v3_mha, bart):
        for layer in model.model.decoder.layers:
            hooks.append(layer.self_attn.register_forward_pre_hook(pre_hook))
            hooks.append(layer.self_attn.register_forward_hook(post_hook))
    attention_times = {name: [] for name in variants}

    def sample(variant, record=True):
        key, absorb = variants[variant]
        if absorb is not None:
            set_absorb(v3, absorb)
        times = []
        before = os.times()
        attention_clock["active"] = record
        for s in range(args.decode_steps):
            attention_clock["total"] = 0.0
            start = clock_pair()
            step(key, steps[s])
            times.append(elapsed(start))
            if record:
                attention_times[variant].append(attention_clock["total"])
        attention_clock["active"] = False
        after = os.times()
        if record:
            cpu[variant][0] += after.user - before.user
            cpu[variant][1] += after.system - before.system
        crop(caches[key], context)
        return times

    names = list(variants)
    for name in names:  # warm-up
        sample(name, record=False)
    times = interleave({name: (lambda name=name: sample(name)) for name in names}, 0, args.decode_repeats)
    clock = "proc" if args.timer == "process" else "wall"
    median = {n: statistics.median(t[clock] for t in ts) for n, ts in times.items()}
    fastest = {n: min(t[clock] for t in ts) for n, ts in times.items()}
    base = "MHA, same decoder"
    attention_median = {n: statistics.median(t) for n, t in attention_times.items()}
    for hook in hooks:
        hook.remove()
    ops = {}
    for name in names:  # where a step spends its time (3 steps profiled, per-step means)
        key, absorb = variants[name]
        if absorb is not None:
            set_absorb(v3, absorb)

        def three_steps():
            for s in range(3):
                step(key, steps[s])

        ops[name] = [(k, calls / 3, ms / 3, pct) for k, calls, ms, pct in top_ops(three_steps)]
        crop(caches[key], context)
    set_absorb(v3, "auto")

    report(
        f"hidden {args.hidden_size}, {args.num_heads} heads, {args.decoder_layers} decoder layers, vocab "
        f"{args.vocab_size}; MLA kv_lora_rank {args.kv_lora_rank}, q_lora_rank {args.q_lora_rank}, qk_nope "
        f"{args.qk_nope_head_dim}, qk_rope {args.qk_rope_head_dim}, v {args.v_head_dim}; MHA head_dim "
        f"{args.hidden_size // args.num_heads}, RoPE; fp32, sdpa, {args.threads} thread(s), {args.timer} time"
    )
    report(
        f"fairness: all models cross-attend to the same {args.memory_len}-token memory (SLAM v3's encoder output for a "
        "prompt), its K/V projected once at prefill and cached; the two SLAM decoders share every weight but the "
        "self-attention; one step = model forward of 1 new token per sequence with the cache (DynamicCache append, "
        "cross-attention, MLP, lm_head included), cache cropped back to the prefix after each sample"
    )
    report(
        f"prefix: {context} tokens prefilled for {shared} sequence(s), caches repeated to batch {batch} (decode cost "
        f"depends on shapes, not values; --prefill-batch {batch} prefills every row)"
    )
    attn_params = {
        "MLA": count_parameters(v3.model.decoder.layers[0].self_attn),
        "MHA": count_parameters(v3_mha.model.decoder.layers[0].self_attn),
    }
    decoder_params = {
        "v3": count_parameters(v3.model.decoder) + count_parameters(v3.lm_head),
        "v3_mha": count_parameters(v3_mha.model.decoder) + count_parameters(v3_mha.lm_head),
        "bart": count_parameters(bart.model.decoder) + count_parameters(bart.lm_head),
    }
    report(
        f"self-attention params per layer: MLA {attn_params['MLA']:,}, MHA {attn_params['MHA']:,}; decoder + lm_head "
        f"params: SLAM v3 {decoder_params['v3']:,}, same with MHA {decoder_params['v3_mha']:,}, Bart "
        f"{decoder_params['bart']:,} (Bart: biases, learned positions, GELU FFN sized to the GeGLU's parameters)"
    )
    report(f"untimed prefill of all three models ({args.setup_threads} threads): {prefill_s:.1f} s wall")
    report(
        f"absorbed vs expanded logits, same cache: max |diff| {max_diff:.2e} (max |logit| {scale:.2e}) <= "
        f"{EQUAL_TOL:g}: {'OK' if equal else 'FAIL'}; absorb='auto' absorbs at 1 query: {auto_absorbs}"
    )
    report(
        f"{'variant':<32}{'ms/step':>9}{'min':>9}{'vs MHA':>8}{'vs Bart':>9}{'self-attn ms':>14}{'vs MHA':>8}"
        f"{'user/sys %':>12}  (medians over {len(times[base])} steps)"
    )
    for name in names:
        user, system = cpu[name]
        split = f"{100 * user / max(user + system, 1e-9):.0f}/{100 * system / max(user + system, 1e-9):.0f}"
        mha_attention = attention_median["MHA, same decoder, prealloc" if "prealloc" in name else base]
        report(
            f"{name:<32}{median[name] * 1e3:>9.2f}{fastest[name] * 1e3:>9.2f}{median[name] / median[base]:>8.3f}"
            f"{median[name] / median['Bart MHA']:>9.3f}{attention_median[name] * 1e3:>14.2f}"
            f"{attention_median[name] / mha_attention:>8.3f}{split:>12}"
        )
    report(
        "self-attn ms = time inside the decoder self-attention modules (all layers, cache append included; forward "
        "hooks); its 'vs MHA' compares like caches (prealloc with prealloc)"
    )
    ratio = median["MLA absorbed (auto)"] / median[base]
    ok = ratio <= DECODE_TARGET and equal
    prealloc_ratio = median["MLA absorbed, prealloc cache"] / median["MHA, same decoder, prealloc"]
    prealloc_ok = prealloc_ratio <= DECODE_TARGET and equal
    report(f"absorbed / expanded: {median['MLA absorbed (auto)'] / median['MLA expanded (absorb=False)']:.3f}")
    report(
        f"target: absorbed / MHA = {ratio:.3f} <= {DECODE_TARGET:.2f}: {'PASS' if ok else 'MISS'} (transformers' "
        f"DynamicCache, what generate uses); with both caches preallocated (no append copy) {prealloc_ratio:.3f}: "
        f"{'PASS' if prealloc_ok else 'MISS'}"
    )
    report("top ops of a decode step (self CPU time per step, mean of 3 profiled steps):")
    for name in names:
        report(f"  {name}: {format_ops(ops[name])}")
    caches.clear()  # the closures above hold the dict, not the caches
    gc.collect()
    return {
        "median_s": median,
        "min_s": fastest,
        "samples": {n: [t[clock] for t in ts] for n, ts in times.items()},
        "user_system_s": cpu,
        "self_attention_median_s": attention_median,
        "top_ops": ops,
        "max_abs_diff_absorbed_vs_expanded": max_diff,
        "max_abs_logit": scale,
        "auto_absorbs_at_one_query": auto_absorbs,
        "ratio": ratio,
        "pass": ok,
        "ratio_preallocated": prealloc_ratio,
        "pass_preallocated": prealloc_ok,
        "attention_params_per_layer": attn_params,
        "decoder_params": decoder_params,
        "prefill_wall_s": prefill_s,
    }


# -------------------------------------------------------------------------------------- 3. encoder paths
def encoder_config(hidden, layers):
    heads = max(2, hidden // 64) if hidden >= 256 else hidden // 32
    config = SlamV3Config(
        vocab_size=1024,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        encoder_layers=layers,
        decoder_layers=1,
        kv_lora_rank=32,
        qk_rope_head_dim=16,
        vision_config=tiny_vision(),
    )
    config._attn_implementation = "sdpa"
    return config


def grid_for(n):
    rows = int(n**0.5)
    while n % rows:
        rows -= 1
    return rows, n // rows


def encoder_inputs(config, length, batch, seed):
    """A prompt of text, one image (a quarter of the tokens) and text; odd rows padded at the end."""
    g = torch.Generator().manual_seed(seed)
    n_image = length // 4
    grid = grid_for(n_image)
    patch = config.vision_config.patch_size
    ids = torch.randint(10, config.vocab_size, (batch, length), generator=g)
    start = length // 8
    ids[:, start : start + n_image] = config.image_token_id
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1::2, length - length // 16 :] = 0
    pixels = torch.randn(batch, 3, grid[0] * patch, grid[1] * patch, generator=g)
    hidden = torch.randn(batch, length, config.hidden_size, generator=g)
    is_image = ids == config.image_token_id
    return ids, mask, pixels, hidden, is_image, mask.bool()


def paths_inputs(encoder, hidden, is_image, real):
    position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)
    position_embeddings = encoder.rotary_emb(position_ids, hidden.dtype)
    allowed, has_key = path_masks(is_image, real)
    return position_embeddings, allowed, has_key


TIMERS = {"proc": "process", "wall": "wall"}  # this script's clock names -> slam_hf.bench.measure's


def section_encoder(args, report):
    report("\n" + "=" * 100)
    report(
        f"3. Encoder paths: batched (one computation) vs sequential (batch_paths=False), {args.encoder_layers} layers "
        "per path"
    )
    report("=" * 100)
    report(
        "inputs: text + one image (1/4 of the tokens) + text, odd rows padded at the end (1/16); GeGLU 4x, heads of "
        "64 (32 at hidden 128), GQA heads/4 (SlamV3Config defaults); 'paths' = SlamParallelPaths alone (masks "
        "built outside), 'encoder' = SlamV3Encoder forward (tiny vision tower, masks, paths, fusion node)"
    )
    results = {}
    for threads in args.encoder_threads:
        clock = "proc" if threads == 1 and args.timer == "process" else "wall"
        set_threads(threads)
        first = threads == args.encoder_threads[0]
        report(
            f"\n-- {threads} thread(s), {'process' if clock == 'proc' else 'wall'} time, ms (median; 'min' ratio = "
            "fastest sequential / fastest batched) --"
        )
        load = (load_average() or [None])[0]
        results[f"load_{threads}t"] = load
        if clock == "wall" and load is not None and load > 0.5:
            report(
                f"   NOTE: load average {load:.2f} on {os.cpu_count()} cores: other processes compete "
                "for the cores, so these wall-clock numbers are noisy (the min ratio is the less disturbed one)"
            )
        if not first:
            report("   (paths forward only; forward + backward and the whole encoder: first thread count)")
        report(
            f"{'shape HxLxB':<14}{'part':<18}{'sequential':>11}{'batched':>10}{'seq/batched':>13}{'min':>8}  "
            f"check (max |diff|)"
        )
        for shape in args.encoder_shapes:
            hidden, length, batch = (int(x) for x in shape.lower().split("x"))
            results[f"{threads}t/{shape}"] = bench_encoder_shape(
                args, report, threads, clock, hidden, length, batch, full=first
            )
            gc.collect()
    set_threads(args.threads)
    if not args.no_profile:
        results["profile"] = profile_paths(args, report)
    shapes = {k: r for k, r in results.items() if isinstance(r, dict) and "paths_forward" in r}
    ratios = [r[part]["ratio"] for r in shapes.values() for part in ("paths_forward", "paths_train") if part in r]
    passes = {k: r["paths_forward"]["ratio"] >= PATHS_TARGET for k, r in shapes.items()}
    results["pass_forward_by_shape"] = passes
    results["best_ratio"], results["worst_ratio"] = max(ratios), min(ratios)
    return results


def bench_encoder_shape(args, report, threads, clock, hidden, length, batch, full=True):
    """Times (batched, sequential) paths forward; with `full` also forward + backward and the whole encoder."""
    torch.manual_seed(args.seed)
    config = encoder_config(hidden, args.encoder_layers)
    model = SlamV3ForConditionalGeneration(config)
    encoder = model.model.encoder
    paths = encoder.paths
    ids, mask, pixels, states, is_image, real = encoder_inputs(config, length, batch, args.seed)
    pe, allowed, has_key = paths_inputs(encoder, states, is_image, real)
    repeats = args.encoder_repeats or (5 if hidden * length * batch < 2**20 else 3)
    grad_out = torch.randn(4, batch, length, hidden, generator=torch.Generator().manual_seed(1))

    def run_paths(batched):
        paths.batch_paths = batched
        return paths(states, pe, allowed, has_key, "sdpa")

    def run_train(batched):
        paths.zero_grad(set_to_none=True)
        (run_paths(batched) * grad_out).sum().backward()

    def run_encoder(batched):
        paths.batch_paths = batched
        return encoder(input_ids=ids, attention_mask=mask, pixel_values=pixels).last_hidden_state

    # correctness: outputs and gradients equal (also the warm-up of every timed part)
    model.eval()
    with torch.no_grad():
        out_b, out_s = run_paths(True), run_paths(False)
        fwd_diff = (out_b - out_s).abs().max().item()
        enc_diff = grad_diff = None
        if full:
            enc_b, enc_s = run_encoder(True), run_encoder(False)
            enc_diff = (enc_b - enc_s).abs().max().item()
    if full:
        model.train()
        run_train(True)
        grads_b = [p.grad.clone() for p in paths.parameters()]
        run_train(False)
        grad_diff = max((a - p.grad).abs().max().item() for a, p in zip(grads_b, paths.parameters()))

    parts = {"paths_forward": (lambda b: run_paths(b), True, False)}
    if full:
        parts["paths_train"] = (lambda b: run_train(b), False, True)
        parts["encoder_forward"] = (lambda b: run_encoder(b), True, False)
    checks = {"paths_forward": fwd_diff, "paths_train": grad_diff, "encoder_forward": enc_diff}
    out = {"shape": [hidden, length, batch], "threads": threads, "clock": clock, "repeats": repeats}
    for part, (fn, no_grad, train) in parts.items():
        model.train(train)
        with torch.set_grad_enabled(not no_grad):
            samplers = {b: (lambda b=b: timed(lambda: fn(b), TIMERS[clock])) for b in (True, False)}
            times = interleave(samplers, 0, repeats)
        med = {b: statistics.median(t) for b, t in times.items()}
        ratio = med[False] / med[True]
        min_ratio = min(times[False]) / min(times[True])
        ok = checks[part] <= EQUAL_TOL
        label = {"paths_forward": "paths fwd", "paths_train": "paths fwd+bwd", "encoder_forward": "encoder fwd"}[part]
        report(
            f"{f'{hidden}x{length}x{batch}':<14}{label:<18}{med[False] * 1e3:>11.1f}{med[True] * 1e3:>10.1f}"
            f"{ratio:>12.3f}x{min_ratio:>7.3f}x  {'OK' if ok else 'FAIL'} ({checks[part]:.1e})"
        )
        out[part] = {
            "sequential_s": med[False],
            "batched_s": med[True],
            "ratio": ratio,
            "min_ratio": min_ratio,
            "max_abs_diff": checks[part],
            "equal": ok,
            "samples": {"batched": times[True], "sequential": times[False]},
        }
    paths.batch_paths = True
    return out


def compact_paths_forward(paths, states, position_embeddings, allowed, has_key, is_image):
    """What skipping dead rows would give (benchmark-only prototype, sequential): the text path runs on the text
    tokens only, the image path on the image/aux tokens only (a query there only ever attends to keys of its own
    modality, so the other rows, zeroed at the end, never influence it), and a path that gives no token a key
    (image / cross-modal paths of text-only input) is skipped. Needs the same token count per row per modality."""
    batch, length, hidden = states.shape
    out = states.new_zeros(len(ENCODER_PATHS), batch, length, hidden)
    cos, sin = position_embeddings
    for p, name in enumerate(ENCODER_PATHS):
        if not bool(has_key[p].any()):
            continue
        layers = paths.paths[name]
        select = {"text": ~is_image, "image": is_image}.get(name)
        if select is None or bool(select.all()):
            out[p] = SlamParallelPaths._sequential_path(layers, states, position_embeddings, allowed[p])
            continue
        count = int(select[0].sum())
        index = select.nonzero()[:, 1].view(batch, count)

        def gather(t):
            return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))

        sub = allowed[p].gather(1, index[..., None].expand(-1, -1, length))
        sub = sub.gather(2, index[:, None, :].expand(-1, count, -1))  # (B, count, count)
        rows = SlamParallelPaths._sequential_path(layers, gather(states), (gather(cos), gather(sin)), sub)
        out[p].scatter_(1, index[..., None].expand(-1, -1, hidden), rows)
    return out * has_key[..., None].to(out.dtype)


def paths_flops(config, batch, length):
    """Forward FLOPs of the four paths (matmuls and attention; norms and activations left out)."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = config.head_dim
    tokens = batch * length
    projections = 2 * tokens * hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim)
    mlp = 2 * tokens * 3 * hidden * config.intermediate_size
    attention = 2 * 2 * batch * heads * length * length * head_dim
    return 4 * config.encoder_layers * (projections + mlp + attention)


@torch.no_grad()
def profile_paths(args, report):
    """Where the paths forward spends its time and what would make it faster (1 thread, no grad)."""
    report(
        "\n-- diagnosis of the paths forward (1 thread, process time, median of 5, no grad), at the first two shapes --"
    )
    set_threads(1)
    clock = "proc" if args.timer == "process" else "wall"

    def med(fn, n=5):
        return interleaved({"fn": fn}, 1, n, clock=TIMERS[clock])["fn"]["median_s"] * 1e3

    a, b = torch.randn(2048, 1024), torch.randn(1024, 2048)
    peak = 2 * 2048 * 1024 * 2048 / (med(lambda: a @ b) / 1e3) / 1e9
    report(f"matmul roofline of this core: {peak:.1f} GFLOP/s (2048x1024 @ 1024x2048, fp32, 1 thread)")
    out = {"matmul_gflops": peak}
    for shape in args.encoder_shapes[:2]:
        hidden, length, batch = (int(x) for x in shape.lower().split("x"))
        torch.manual_seed(args.seed)
        config = encoder_config(hidden, args.encoder_layers)
        model = SlamV3ForConditionalGeneration(config).eval()
        encoder, paths = model.model.encoder, model.model.encoder.paths
        _, _, _, states, is_image, real = encoder_inputs(config, length, batch, args.seed)
        pe, allowed, has_key = paths_inputs(encoder, states, is_image, real)
        text_only = torch.zeros_like(is_image)
        pe_t, allowed_t, has_key_t = paths_inputs(encoder, states, text_only, real)
        attention = paths.paths["text"][0].self_attn
        heads, kv_heads, head_dim = attention.num_heads, attention.num_key_value_heads, attention.head_dim
        groups = [paths.layer_group(i, range(4)) for i in range(paths.num_layers)]

        def forward(batched, masks=(pe, allowed, has_key)):
            paths.batch_paths = batched
            return paths(states, masks[0], masks[1], masks[2], "sdpa")

        ref, ref_t = forward(False), forward(False, (pe_t, allowed_t, has_key_t))
        compact = compact_paths_forward(paths, states, pe, allowed, has_key, is_image)
        compact_t = compact_paths_forward(paths, states, pe_t, allowed_t, has_key_t, text_only)
        compact_diff = max((compact - ref).abs().max().item(), (compact_t - ref_t).abs().max().item())
        compact_scale = max(ref.abs().max().item(), ref_t.abs().max().item())

        n = 4 * batch
        q = torch.randn(n, heads, length, head_dim)
        k = torch.randn(n, kv_heads, length, head_dim)
        v = torch.randn(n, kv_heads, length, head_dim)
        bool_mask = allowed.flatten(0, 1)[:, None]
        float_mask = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
        k_rep = k.repeat_interleave(heads // kv_heads, dim=1)
        v_rep = v.repeat_interleave(heads // kv_heads, dim=1)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        layers = paths.num_layers
        rows = {
            "batched forward": med(lambda: forward(True)),
            "sequential forward": med(lambda: forward(False)),
            "  stack weights, all layers (in batched)": med(lambda: [StackedLayers.try_build(g) for g in groups]),
            "  path_masks (4 x B x L x L bool; in encoder)": med(lambda: path_masks(is_image, real)),
            f"  repeat_kv K,V x{heads // kv_heads} (GQA with a mask), x{layers}": med(
                lambda: [
                    (k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1))
                    for _ in range(layers)
                ]
            ),
            f"  SDPA x{layers}, bool mask (as now)": med(
                lambda: [sdpa(q, k_rep, v_rep, attn_mask=bool_mask) for _ in range(layers)]
            ),
            f"  SDPA x{layers}, float mask": med(
                lambda: [sdpa(q, k_rep, v_rep, attn_mask=float_mask) for _ in range(layers)]
            ),
            f"  SDPA x{layers}, no mask (lower bound)": med(lambda: [sdpa(q, k_rep, v_rep) for _ in range(layers)]),
            "compacted sequential (prototype, see below)": med(
                lambda: compact_paths_forward(paths, states, pe, allowed, has_key, is_image)
            ),
            "text-only input: batched": med(lambda: forward(True, (pe_t, allowed_t, has_key_t))),
            "text-only input: sequential": med(lambda: forward(False, (pe_t, allowed_t, has_key_t))),
            "text-only input: compacted (2 empty paths skipped)": med(
                lambda: compact_paths_forward(paths, states, pe_t, allowed_t, has_key_t, text_only)
            ),
        }
        flops = paths_flops(config, batch, length)
        report(
            f"shape {shape} (hidden x seq x batch), {heads} heads / {kv_heads} kv heads of {head_dim}, "
            f"{flops / 1e9:.2f} GFLOP per paths forward:"
        )
        for name, ms in rows.items():
            note = ""
            if name in ("batched forward", "sequential forward"):
                gflops = flops / (ms / 1e3) / 1e9
                note = f"{gflops:6.1f} GFLOP/s = {100 * gflops / peak:3.0f} % of the matmul roofline"
            elif name.startswith("  "):
                note = f"{100 * ms / rows['batched forward']:5.1f} % of the batched forward"
            elif name.startswith("compacted"):
                note = (
                    f"sequential / compacted {rows['sequential forward'] / ms:.2f}x (max |diff| {compact_diff:.1e}, "
                    f"max |output| {compact_scale:.1e})"
                )
            elif name.startswith("text-only input: compacted"):
                note = f"sequential / compacted {rows['text-only input: sequential'] / ms:.2f}x"
            report(f"  {name:<52}{ms:>9.2f} ms  {note}")
        tables = {}
        for batched in (True, False):
            key = "batched" if batched else "sequential"
            tables[key] = top_ops(lambda: forward(batched), rows=6)
            report(f"  top ops, {key} forward: {format_ops(tables[key])}")
        paths.batch_paths = True
        out[shape] = {"rows_ms": rows, "top_ops": tables, "gflop": flops / 1e9, "compact_max_abs_diff": compact_diff}
        del model
        gc.collect()
    set_threads(args.threads)
    return out


# ------------------------------------------------------------------------------------------------ main
def build_decoder_models(args, report):
    torch.manual_seed(args.seed)
    set_threads(args.setup_threads)
    v3 = SlamV3ForConditionalGeneration(v3_config(args)).eval()
    v3_mha = v3_with_mha(v3, args.seed)
    torch.manual_seed(args.seed + 2)
    bart = BartForConditionalGeneration(bart_config(args)).eval()
    set_threads(args.threads)
    return {"v3": v3, "v3_mha": v3_mha, "bart": bart}


def summary(args, report, results):
    report("\n" + "=" * 100)
    report("summary (targets)")
    report("=" * 100)
    rows = []
    if "cache" in results:
        r = results["cache"]
        rows.append(("KV-cache B/token, SLAM v3 / MHA", r["ratio"], f"<= {CACHE_TARGET:.2f}", r["pass"]))
    if "decode" in results:
        r = results["decode"]
        target = f"<= {DECODE_TARGET:.2f}"
        rows.append((f"decode step @{args.context}, absorbed MLA / MHA", r["ratio"], target, r["pass"]))
        rows.append(
            (
                "  same, both caches preallocated",
                r["ratio_preallocated"],
                f"<= {DECODE_TARGET:.2f}",
                r["pass_preallocated"],
            )
        )
        mla_e = r["median_s"]["MLA expanded (absorb=False)"] / r["median_s"]["MHA, same decoder"]
        rows.append(("  (reference) expanded MLA / MHA", mla_e, "", None))
    if "encoder" in results:
        r = results["encoder"]
        for key, shape in r.items():
            if not isinstance(shape, dict) or "paths_forward" not in shape:
                continue
            for part, label in (
                ("paths_forward", "paths fwd"),
                ("paths_train", "paths fwd+bwd"),
                ("encoder_forward", "whole encoder fwd"),
            ):
                if part not in shape:
                    continue
                ratio = shape[part]["ratio"]
                target = part != "encoder_forward"
                name = f"seq/batched {label}, {key} (min {shape[part]['min_ratio']:.2f})"
                verdict = ratio >= PATHS_TARGET if target else None
                rows.append((name, ratio, f">= {PATHS_TARGET:.2f}" if target else "", verdict))
    for name, ratio, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        report(f"{name:<56}{fmt_ratio(ratio):>8}  {target:<8} {verdict}")
    walls = [t for t in args.encoder_threads if t > 1 or args.timer == "wall"]
    if "encoder" in results and walls:
        loads = ", ".join(f"{t} threads: {results['encoder'].get(f'load_{t}t') or 0:.2f}" for t in walls)
        report(
            f"(multi-thread encoder rows are wall-clock times, only meaningful on an idle machine; load average when "
            f"they started: {loads})"
        )


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    report = Report()
    started = time.perf_counter()
    env = environment()
    report(f"SLAM v3 benchmark{' (--quick)' if args.quick else ''}: python {' '.join(sys.argv[1:]) or '(defaults)'}")
    report(
        f"cpu: {env['cpu']} x {env['cpu_count']}; torch {env['torch']} (mkldnn {env['mkldnn']}), transformers "
        f"{env['transformers']}, python {env['python']}, {env['platform']}"
    )
    load = env["loadavg_at_start"]
    report(
        f"torch threads {args.threads} for timed sections 1-2 ({args.timer} time), {args.setup_threads} for untimed "
        f"setup; encoder section threads {args.encoder_threads}; git {env['git']}; load average at start "
        + (f"{load[0]:.2f}" if load else "n/a")
    )
    results = {}
    models = None
    if "cache" in args.sections or "decode" in args.sections:
        models = build_decoder_models(args, report)
    section_s = {}
    for name, run in (("cache", section_cache), ("decode", section_decode), ("encoder", section_encoder)):
        if name not in args.sections:
            continue
        start = time.perf_counter()
        results[name] = run(args, report, models) if name != "encoder" else run(args, report)
        section_s[name] = time.perf_counter() - start
        report(f"[section {name}: {section_s[name]:.0f} s wall]")
        if name == "decode" or (name == "cache" and "decode" not in args.sections):
            models = None
            gc.collect()
    summary(args, report, results)
    total = time.perf_counter() - started
    env["loadavg_at_end"] = load_average()
    end_load = env["loadavg_at_end"]
    report(f"\ntotal time {total:.0f} s wall; load average at end " + (f"{end_load[0]:.2f}" if end_load else "n/a"))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(report.lines) + "\n")
        print(f"wrote {args.out}")
        if not args.no_json:
            path = os.path.splitext(args.out)[0] + ".json"
            payload = {"args": vars(args), "environment": env, "results": results, "total_s": total}
            with open(path, "w") as f:
                json.dump(payload, f, indent=1, default=str)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
