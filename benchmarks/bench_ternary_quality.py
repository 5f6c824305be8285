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

import argparse
import os
import sys
from dataclasses import fields

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from slam_hf.bench.suites.ternary_quality import (  # noqa: E402
    TernaryQualitySettings,
    markdown_table,
    run_ternary_quality,
    write_results,
)

DEFAULT_OUT = os.path.join(_REPO_ROOT, "benchmarks", "results", "ternary_quality_midsize")
QUICK = dict(steps=20, eval_rows=16, log_every=10)  # --quick: few steps and rows; options given explicitly win


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TernaryQualitySettings()
    for field in fields(TernaryQualitySettings):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=type(value) if value is not None else str, default=value)
    p.add_argument("--quick", action="store_true", help="a smoke run (few steps and rows); no files unless --out")
    p.add_argument("--out", default=None, help=f"results prefix, writes .json and .txt (default: {DEFAULT_OUT})")
    args = p.parse_args(argv)
    given = {t.split("=")[0][2:].replace("-", "_") for t in (sys.argv[1:] if argv is None else argv) if t[:2] == "--"}
    if args.quick:
        for name, value in QUICK.items():
            if name not in given:
                setattr(args, name, value)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = TernaryQualitySettings(**{f.name: getattr(args, f.name) for f in fields(TernaryQualitySettings)})
    lines = []

    def log(text=""):
        print(text, flush=True)
        lines.append(text)

    command = "PYTHONPATH=. python benchmarks/bench_ternary_quality.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    results = run_ternary_quality(settings, log, command=command.strip())
    print("\n" + markdown_table(results), flush=True)  # the .txt gets it once, after the log
    if args.out:
        for path in write_results(results, lines, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
