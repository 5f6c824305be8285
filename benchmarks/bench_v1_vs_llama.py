#!/usr/bin/env python
"""SLAM v1 vs. a Llama baseline of the same width, depth and parameter count (the original v1 benchmark).

A thin front end of `bench_slam_vs_llama.py` with its v1 defaults: `--models v1 llama --seq-lens 512 2048`,
Llama depth 2 + 2 * ef_cycles and the same intermediate size as SLAM v1 (parameters identical), tolerance ±5 %,
no MoA micro-benchmark. Every option of bench_slam_vs_llama.py works here too and overrides these defaults.

    PYTHONPATH=. python benchmarks/bench_v1_vs_llama.py --threads 1 --timer process
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_slam_vs_llama import main  # noqa: E402

V1_DEFAULTS = ["--models", "v1", "llama", "--seq-lens", "512", "2048", "--param-tolerance", "0.05"]

if __name__ == "__main__":
    sys.exit(main(V1_DEFAULTS + sys.argv[1:]))
