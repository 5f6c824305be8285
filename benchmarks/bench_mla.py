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

The layers, the prefill and the timed decode steps live in slam_hf.bench.suites.mla; this file is their command
line.
"""

import argparse
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

import torch  # noqa: E402

from slam_hf.bench.suites.mla import bench_mla, print_results  # noqa: E402


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


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "process" and args.device != "cpu":
        raise SystemExit("--timer process measures CPU time; use the wall timer on an accelerator")
    print_results(args, bench_mla(args))


if __name__ == "__main__":
    main()
