#!/usr/bin/env python
"""BitNet b1.58 inference on CPU: fp32 vs ternary-int8 vs transformers' BitLinear vs fake-quant (issue 19, item 4).

One SLAM v1 model of the small preset (hidden 512, 16 heads, FFN 2048, 6 layers, vocabulary 8192), built with
`ternary_linear=True` from seed 0 (random init: speed does not depend on training), exported with `export_ternary`
and loaded four ways: (a) fp32, the same architecture with plain nn.Linear holding the dequantised ternary weights
W_q * gamma; (b) ternary-int8, `load_ternary(export)` (Int8TernaryLinear: int8 weights unpacked once; oneDNN's int8
linear on a weight packed once for projections of >= 2**20 weights, torch._int_mm below); (c) transformers'
BitLinear, `AutoModelForCausalLM.from_pretrained(export)` (unpacks its 2-bit weights on every call; torch.compiled
helpers, warmed up before timing, warm-up reported apart); (d) the training layer TernaryLinear in eval. A
diagnostic (z) times the fp32 model with every projection stubbed out: the ceiling of any projection speed-up.

Measured on CPU with 1 torch thread, the implementations interleaved round-robin, medians: prefill tokens/s (batch
1 x 128 and 4 x 128, one forward with the KV cache, last position's logits), decode tokens/s (greedy `generate` at
batch 1, 16 prompt + 32 new tokens, min_new_tokens = max_new_tokens), the seven projections of one layer alone
(M = 1 and 128); per implementation in its own subprocess: peak RSS (load + prefill + decode) and projection weight
bytes; how many of (b)'s projections run on each kernel; logits and greedy tokens of (b), (c), (d) equal bit for
bit; the issue's targets, met or missed.

    PYTHONPATH=. python benchmarks/bench_ternary.py            # the recorded run (~5 min on 2 CPU cores)
    PYTHONPATH=. python benchmarks/bench_ternary.py --quick    # a smoke run (1 round); writes nothing unless --out

The measurement lives in slam_hf.bench.suites.ternary_speed; this file is its command line.
"""

import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from slam_hf.bench import script  # noqa: E402
from slam_hf.bench.suites.ternary_speed import TernarySpeedSettings, run_ternary_speed  # noqa: E402
from slam_hf.bench.suites.ternary_speed_report import markdown_table  # noqa: E402

DEFAULT_OUT = os.path.join(_REPO_ROOT, "benchmarks", "results", "ternary_speed_cpu_1thread")
# --quick: one round, short sequences; options given explicitly win
QUICK = dict(repeats=1, warmup=0, layer_repeats=2, prefill_length=64, prompt_length=8, new_tokens=8)


def parse_args(argv=None):
    return script.parse_settings_args(
        TernarySpeedSettings, argv, __doc__, QUICK, DEFAULT_OUT, quick_help="a smoke run (one round)"
    )


def main(argv=None):
    return script.run_script(parse_args(argv), argv, __file__, TernarySpeedSettings, run_ternary_speed, markdown_table)


if __name__ == "__main__":
    sys.exit(main())
