#!/usr/bin/env python
"""The latent-loop transformer (slam_loop) vs. Llama under the bench's mid-size protocol (issue 18, item 6).

Same BPE tokenizer, Shakespeare rows, held-out rows and rules as `slam-hf bench` (configs/bench/midsize.yaml):
sequence 128, batch 8, AdamW lr 1e-3, cosine with 5 % warm-up, grad clip 1.0, fp32, seed 0; hidden 256, 8 heads
(MHA), SwiGLU 1024, RMSNorm pre-norm, RoPE 1e4, untied embeddings. Llama: 4 layers. slam_loop: the same 4 unique
layers as prelude 1 + core 2 (applied up to 4 times, lognormal-Poisson sampled depth, backprop through all 4) +
coda 1, confidence head trained on the "improvement" target, per-iteration cache. Both train in one process, step
by step interleaved, on the same batches.

Measured: 1. held-out loss of the loop at full depth vs. Llama; 2. held-out loss vs. mean core iterations for the
trained confidence exit, a second head trained on the frozen trunk with the "absolute" target, the hidden-change and
KL exits and fixed depths 1..4, thresholds calibrated (loss budget 0.5 %) on other held-out rows; 3. greedy decode
tokens/s at batch 8 with the calibrated exit vs. full depth (and Llama), batch-8 output vs. each row alone;
4. cache bytes per token in both cache modes and the held-out loss of a cached teacher-forced decode in "shared"
vs. "per_iteration" mode.

    PYTHONPATH=. python benchmarks/bench_loop.py                 # the recorded run (~30 min on 2 CPU cores)
    PYTHONPATH=. python benchmarks/bench_loop.py --quick          # a < 3 min smoke run, writes nothing unless --out

The sections live in slam_hf.bench.suites (loop, loop_exits, loop_decode, loop_report); this file is their command
line.
"""

import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from slam_hf.bench import script  # noqa: E402
from slam_hf.bench.suites.loop import LoopBenchSettings  # noqa: E402
from slam_hf.bench.suites.loop_report import full_text, markdown_tables, run_loop_bench  # noqa: E402

DEFAULT_OUT = os.path.join(_REPO_ROOT, "benchmarks", "results", "loop_vs_llama_midsize")
QUICK = dict(  # --quick: few steps and rows; options given explicitly win
    steps=20,
    confidence_steps=10,
    eval_rows=16,
    calibration_rows=16,
    decode_repeats=1,
    new_tokens=8,
    teacher_forced_rows=8,
    log_every=10,
)


def parse_args(argv=None):
    return script.parse_settings_args(LoopBenchSettings, argv, __doc__, QUICK, DEFAULT_OUT)


def main(argv=None):
    return script.run_script(
        parse_args(argv), argv, __file__, LoopBenchSettings, run_loop_bench, markdown_tables, full_text
    )


if __name__ == "__main__":
    sys.exit(main())
