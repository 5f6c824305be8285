#!/usr/bin/env python
"""MLA decode micro-benchmark: SlamLatentAttention (absorbed / expanded) vs. SlamAttention (MHA), one layer.

Issue 4 target: decoding at ~1k tokens of context is at least as fast as a standard MHA layer of the same
width (hidden size, heads). Each layer first prefills --context tokens into a DynamicCache, then one decode
step (one new token per sequence, cache append included) is timed; the cache is cropped back to --context
outside the timer so every step sees the same context. Layers are interleaved step by step (order reversed
every round) and medians reported, so a noisy, shared machine shifts all alike. Also printed: KV-cache bytes
per token per layer (MLA latent c_kv + k_rope vs. MHA K + V) and the ratios.

MLA defaults scale DeepSeek-V2's shape (head 128, kv_lora_rank 512 = 4 heads' width, rope 64) to head 64:
kv_lora_rank 256, qk_nope 64, qk_rope 32, v 64.

    PYTHONPATH=. python benchmarks/bench_mla.py --threads 1 --timer process
    PYTHONPATH=. python benchmarks/bench_mla.py --device cuda --dtype bfloat16
"""

import argparse
import os
import statistics
import sys

import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from transformers import PretrainedConfig  # noqa: E402

from slam_hf.bench.measure import CLOCKS, cache_nbytes, count_parameters, interleave, synchronize  # noqa: E402
from slam_hf.slam_attention import SlamAttention  # noqa: E402
from slam_hf.slam_compat import DynamicCache  # noqa: E402
from slam_hf.slam_layers import SlamRotaryEmbedding  # noqa: E402
from slam_hf.slam_mla import SlamLatentAttention  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--hidden-size", type=int, default=1024)
    p.add_argument("--num-heads", type=int, default=16)
    p.add_argument("--kv-lora-rank", type=int, default=256)
    p.add_argument("--q-lora-rank", type=int, default=None)
    p.add_argument("--qk-nope-head-dim", type=int, default=64)
    p.add_argument("--qk-rope-head-dim", type=int, default=32)
    p.add_argument("--v-head-dim", type=int, default=64)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--steps", type=int, default=4, help="decode steps per timed sample")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per layer (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--timer", default="wall", choices=["wall", "process"], help="process: CPU time (CPU only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 is steadier when shared)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_config(args, **fields):
    config = PretrainedConfig()
    common = dict(
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        attention_bias=False,
        attention_dropout=0.0,
        norm_eps=1e-6,
    )
    for name, value in {**common, **fields}.items():
        setattr(config, name, value)
    config._attn_implementation = args.attn
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


@torch.no_grad()
def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "process" and args.device != "cpu":
        raise SystemExit("--timer process measures CPU time; use the wall timer on an accelerator")
    torch.manual_seed(args.seed)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    clock = CLOCKS[args.timer]
    batch, context = args.batch_size, args.context
    layers = build_layers(args, device, dtype)

    # prefill every layer's cache with the same context (MLA prefill on its expanded path)
    prompt = torch.randn(batch, context, args.hidden_size, device=device, dtype=dtype)
    positions = torch.arange(context, device=device).expand(batch, context)
    caches, bytes_per_token = {}, {}
    for name, (layer, absorb, rope) in layers.items():
        if absorb is not None:
            layer.absorb = False
        caches[name] = DynamicCache()
        layer(prompt, rope(positions, dtype), None, cache=caches[name])
        bytes_per_token[name] = cache_nbytes(caches[name]) / (batch * context)  # one layer

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

    # the two MLA paths must agree on the same cache (a wrong fast path is no result)
    a, e = sample("MLA absorbed")[1], sample("MLA expanded")[1]
    max_diff = (a.float() - e.float()).abs().max().item()

    names = list(layers)
    times = interleave({name: (lambda name=name: sample(name)[0]) for name in names}, 1, args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}

    params = {name: count_parameters(layer) for name, (layer, _, _) in layers.items()}
    print(
        f"batch {batch}, context {context}, hidden {args.hidden_size}, heads {args.num_heads}, attn {args.attn}, "
        f"{args.dtype} on {args.device}, torch threads {torch.get_num_threads()}, timer {args.timer}, "
        f"{args.steps} steps x {args.repeats} repeats"
    )
    print(
        f"MLA: kv_lora_rank {args.kv_lora_rank}, q_lora_rank {args.q_lora_rank}, qk_nope {args.qk_nope_head_dim}, "
        f"qk_rope {args.qk_rope_head_dim}, v {args.v_head_dim}; MHA head_dim {args.hidden_size // args.num_heads}"
    )
    print(f"absorbed vs expanded max |diff| after the same cache: {max_diff:.2e}")
    header = f"{'layer':<14}{'params':>10}{'decode ms/token':>17}{'spread':>9}{'vs MHA':>8}"
    print(header + f"{'cache B/token':>15}{'vs MHA':>8}")
    for name in names:
        spread = (max(times[name]) - min(times[name])) / median[name]
        print(
            f"{name:<14}{params[name]:>10,}{median[name] * 1e3:>17.3f}{spread:>8.0%}"
            f"{median[name] / median['MHA']:>8.2f}"
            f"{bytes_per_token[name]:>15,.0f}{bytes_per_token[name] / bytes_per_token['MHA']:>8.3f}"
        )
    print(f"absorbed / expanded decode time: {median['MLA absorbed'] / median['MLA expanded']:.3f}")
    verdict = "PASS" if median["MLA absorbed"] <= median["MHA"] else "FAIL"
    print(f"target (absorbed MLA decode <= MHA decode at this context): {verdict}")


if __name__ == "__main__":
    main()
