"""One MLA layer (SlamLatentAttention, absorbed and expanded) vs. one MHA layer (SlamAttention) of the same width:
one decode step after --context tokens of cache, interleaved, medians, and the cache bytes per token of each
(benchmarks/bench_mla.py)."""

import statistics

import torch
from transformers import PretrainedConfig

from slam_hf.bench.measure import CLOCKS, cache_nbytes, count_parameters, interleave, synchronize
from slam_hf.slam_attention import SlamAttention
from slam_hf.slam_compat import DynamicCache
from slam_hf.slam_layers import SlamRotaryEmbedding
from slam_hf.slam_mla import SlamLatentAttention


def make_config(args, **fields):
    config = PretrainedConfig(attn_implementation=args.attn)
    common = dict(
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        attention_bias=False,
        attention_dropout=0.0,
        norm_eps=1e-6,
    )
    for name, value in {**common, **fields}.items():
        setattr(config, name, value)
    return config


def build_layers(args, device, dtype):
    mha_config = make_config(
        args,
        head_dim=args.hidden_size // args.num_heads,
        num_key_value_heads=args.num_heads,
        position_embedding_type="rope",
    )
    mla_config = make_config(
        args,
        kv_lora_rank=args.kv_lora_rank,
        q_lora_rank=args.q_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
    )
    mla = SlamLatentAttention(mla_config, layer_idx=0).to(device, dtype).eval()
    layers = {
        "MLA absorbed": (mla, True, SlamRotaryEmbedding(args.qk_rope_head_dim, 10000.0).to(device)),
        "MLA expanded": (mla, False, SlamRotaryEmbedding(args.qk_rope_head_dim, 10000.0).to(device)),
        "MHA": (
            SlamAttention(mha_config, layer_idx=0).to(device, dtype).eval(),
            None,
            SlamRotaryEmbedding(mha_config.head_dim, 10000.0).to(device),
        ),
    }
    return layers


def prefill(args, layers, device, dtype):
    """Every layer's cache with the same --context tokens (MLA prefills on its expanded path); returns the caches
    and the cache bytes per token of one layer."""
    batch, context = args.batch_size, args.context
    prompt = torch.randn(batch, context, args.hidden_size, device=device, dtype=dtype)
    positions = torch.arange(context, device=device).expand(batch, context)
    caches, bytes_per_token = {}, {}
    for name, (layer, absorb, rope) in layers.items():
        if absorb is not None:
            layer.absorb = False
        caches[name] = DynamicCache()
        layer(prompt, rope(positions, dtype), None, cache=caches[name])
        bytes_per_token[name] = cache_nbytes(caches[name]) / (batch * context)
    return caches, bytes_per_token


def decode_sampler(args, layers, caches, device, dtype):
    """sample(name) -> (seconds per decode step over --steps steps, last output); the cache goes back to
    --context tokens after each sample, outside the timer."""
    batch, context, clock = args.batch_size, args.context, CLOCKS[args.timer]
    token = torch.randn(batch, 1, args.hidden_size, device=device, dtype=dtype)

    def sample(name):
        layer, absorb, rope = layers[name]
        if absorb is not None:
            layer.absorb = absorb
        cos_sin = [rope(torch.full((batch, 1), context + s, device=device), dtype) for s in range(args.steps)]
        synchronize(device)
        start = clock()
        for s in range(args.steps):
            out, _ = layer(token, cos_sin[s], None, cache=caches[name])
        synchronize(device)
        elapsed = (clock() - start) / args.steps
        for cached in caches[name].layers:  # back to `context` tokens (crop()'s argument changed across releases)
            cached.keys, cached.values = cached.keys[:, :, :context], cached.values[:, :, :context]
        return elapsed, out

    return sample


@torch.no_grad()
def bench_mla(args):
    """Returns {params, bytes_per_token, times (per layer), median, max_diff (absorbed vs expanded)}."""
    torch.manual_seed(args.seed)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    layers = build_layers(args, device, dtype)
    caches, bytes_per_token = prefill(args, layers, device, dtype)
    sample = decode_sampler(args, layers, caches, device, dtype)
    # the two MLA paths must agree on the same cache (a wrong fast path is no result)
    a, e = sample("MLA absorbed")[1], sample("MLA expanded")[1]
    max_diff = (a.float() - e.float()).abs().max().item()
    times = interleave({name: (lambda name=name: sample(name)[0]) for name in layers}, 1, args.repeats)
    return {
        "params": {name: count_parameters(layer) for name, (layer, _, _) in layers.items()},
        "bytes_per_token": bytes_per_token,
        "times": times,
        "median": {name: statistics.median(t) for name, t in times.items()},
        "max_diff": max_diff,
    }


def print_results(args, results):
    times, median, params, bytes_per_token = (results[k] for k in ("times", "median", "params", "bytes_per_token"))
    print(
        f"batch {args.batch_size}, context {args.context}, hidden {args.hidden_size}, heads {args.num_heads}, attn "
        f"{args.attn}, {args.dtype} on {args.device}, torch threads {torch.get_num_threads()}, timer {args.timer}, "
        f"{args.steps} steps x {args.repeats} repeats"
    )
    print(
        f"MLA: kv_lora_rank {args.kv_lora_rank}, q_lora_rank {args.q_lora_rank}, qk_nope {args.qk_nope_head_dim}, "
        f"qk_rope {args.qk_rope_head_dim}, v {args.v_head_dim}; MHA head_dim {args.hidden_size // args.num_heads}"
    )
    print(f"absorbed vs expanded max |diff| after the same cache: {results['max_diff']:.2e}")
    header = f"{'layer':<14}{'params':>10}{'decode ms/token':>17}{'spread':>9}{'vs MHA':>8}"
    print(header + f"{'cache B/token':>15}{'vs MHA':>8}")
    for name in times:
        spread = (max(times[name]) - min(times[name])) / median[name]
        print(
            f"{name:<14}{params[name]:>10,}{median[name] * 1e3:>17.3f}{spread:>8.0%}"
            f"{median[name] / median['MHA']:>8.2f}"
            f"{bytes_per_token[name]:>15,.0f}{bytes_per_token[name] / bytes_per_token['MHA']:>8.3f}"
        )
    print(f"absorbed / expanded decode time: {median['MLA absorbed'] / median['MLA expanded']:.3f}")
    verdict = "PASS" if median["MLA absorbed"] <= median["MHA"] else "FAIL"
    print(f"target (absorbed MLA decode <= MHA decode at this context): {verdict}")
