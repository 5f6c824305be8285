#!/usr/bin/env python
"""BitNet b1.58 ternary vs. full-precision SLAM v1 and Llama under the bench's mid-size protocol (issue 19, item 6).

Same BPE tokenizer, Shakespeare rows, held-out rows and rules as `slam-hf bench` (configs/bench/midsize.yaml):
sequence 128, batch 8, AdamW lr 1e-3, cosine with 5 % warm-up, grad clip 1.0, fp32, seed 0; hidden 256, 8 heads
(MHA), SwiGLU 1024, RMSNorm pre-norm, RoPE 1e4, untied embeddings, 4 layers (SLAM v1: 2 full-attention layers + one
encoder-fusion cycle). Four models with equal parameters, trained in one process, step by step interleaved, on the
same batches: SLAM v1 fp32, SLAM v1 with `ternary_linear=True`, transformers' Llama fp32 and Llama with every
attention and MLP projection swapped for slam_hf's TernaryLinear (absmean ternary weights, per-token int8
activations, straight-through estimator, fp32 master weights; embeddings, LM head and norms full precision).

Measured: held-out loss of each, the ternary/fp32 gap per architecture, parameters, step-time ratio (fake-quantised
training), run time. Extra, beside the protocol: all four once more at --extra-learning-rate (BitNet usually wants
a higher lr; the fp32 models get it too, as a control; 0 skips it).

    PYTHONPATH=. python benchmarks/bench_ternary_quality.py           # the recorded run (~24 min on 2 CPU cores)
    PYTHONPATH=. python benchmarks/bench_ternary_quality.py --quick   # < 3 min smoke run, no files unless --out

The measurement lives in slam_hf.bench.suites.ternary_quality; this file is its command line.
"""

import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from slam_hf.bench import script  # noqa: E402
from slam_hf.bench.suites.ternary_quality import TernaryQualitySettings, markdown_table, run_ternary_quality  # noqa: E402

DEFAULT_OUT = os.path.join(_REPO_ROOT, "benchmarks", "results", "ternary_quality_midsize")
QUICK = dict(steps=20, eval_rows=16, log_every=10)  # --quick: few steps and rows; options given explicitly win


def parse_args(argv=None):
    return script.parse_settings_args(TernaryQualitySettings, argv, __doc__, QUICK, DEFAULT_OUT)


def main(argv=None):
    return script.run_script(
        parse_args(argv), argv, __file__, TernaryQualitySettings, run_ternary_quality, markdown_table
    )


if __name__ == "__main__":
    sys.exit(main())
