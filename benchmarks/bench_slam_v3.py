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

The sections live in slam_hf.bench.suites (v3_cache, v3_decode, v3_encoder with v3_paths and v3_paths_profile,
v3_summary; the models in v3_models); this file is their command line.
"""

import argparse
import gc
import json
import os
import platform
import sys
import time

import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from slam_hf.bench.machine import cpu_name, git_state, load_average, software_versions  # noqa: E402
from slam_hf.bench.suites.v3_cache import section_cache  # noqa: E402
from slam_hf.bench.suites.v3_decode import section_decode  # noqa: E402
from slam_hf.bench.suites.v3_encoder import section_encoder  # noqa: E402
from slam_hf.bench.suites.v3_models import build_decoder_models  # noqa: E402
from slam_hf.bench.suites.v3_summary import summary  # noqa: E402
from slam_hf.bench.suites.v3_timing import Report, set_threads  # noqa: E402

QUICK = dict(  # --quick: small sizes, few repeats; options given explicitly win
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


def _run_options(p):
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 min); no file unless --out")
    sections = ["cache", "decode", "encoder"]
    p.add_argument("--sections", nargs="+", default=sections, choices=sections)
    p.add_argument("--threads", type=int, default=1, help="torch threads for sections 1-2 (timed with --timer)")
    p.add_argument("--setup-threads", type=int, default=None, help="threads for untimed prefills (default: all cores)")
    p.add_argument("--timer", default="process", choices=["process", "wall"], help="clock for 1-thread timings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results text file (default: benchmarks/results/v3_cpu_1thread.txt)")
    p.add_argument("--no-json", action="store_true", help="do not write the .json next to --out")


def _decoder_options(p):
    """Sections 1 and 2."""
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


def _encoder_options(p):
    """Section 3."""
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_options in (_run_options, _decoder_options, _encoder_options):
        add_options(p)
    args = p.parse_args(argv)
    given = {
        token.split("=")[0][2:].replace("-", "_")
        for token in (sys.argv[1:] if argv is None else argv)
        if token.startswith("--")
    }
    if args.quick:
        for name, value in QUICK.items():
            if name not in given:
                setattr(args, name, value)
    if args.out is None and not args.quick:
        args.out = os.path.join(_REPO_ROOT, "benchmarks", "results", f"v3_cpu_{args.threads}thread.txt")
    args.setup_threads = args.setup_threads or os.cpu_count() or 1
    return args


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


def report_setup(args, report, env):
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


def run_sections(args, report):
    results = {}
    models = None
    if "cache" in args.sections or "decode" in args.sections:
        models = build_decoder_models(args, report)
    for name in ("cache", "decode", "encoder"):
        if name not in args.sections:
            continue
        start = time.perf_counter()
        if name == "cache":
            results[name] = section_cache(args, report, models)
        elif name == "decode":
            results[name] = section_decode(args, report, models)
        else:
            results[name] = section_encoder(args, report)
        report(f"[section {name}: {time.perf_counter() - start:.0f} s wall]")
        if name == "decode" or (name == "cache" and "decode" not in args.sections):
            models = None  # the decoder models are large: free them before the encoder section
            gc.collect()
    return results


def write_outputs(args, report, env, results, total):
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


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    report = Report()
    started = time.perf_counter()
    env = environment()
    report_setup(args, report, env)
    results = run_sections(args, report)
    summary(args, report, results)
    total = time.perf_counter() - started
    env["loadavg_at_end"] = load_average()
    end_load = env["loadavg_at_end"]
    report(f"\ntotal time {total:.0f} s wall; load average at end " + (f"{end_load[0]:.2f}" if end_load else "n/a"))
    if args.out:
        write_outputs(args, report, env, results, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
