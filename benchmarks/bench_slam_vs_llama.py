#!/usr/bin/env python
"""SLAM v1 / SLAM v2 vs. a Llama baseline at equal parameter count, in one run.

Measures, for every model in --models (any of v1, v2, llama):
  * training throughput: tokens/s of one forward + backward + AdamW step, per sequence length;
  * peak memory of a training step (fresh subprocess per measurement, method printed with the results);
  * generation throughput: `model.generate` with a KV cache, greedy, prompt + N new tokens;
and prints a table with the ratios model/llama, an analytic per-token cost model that explains them, and
PASS/FAIL against the issue's targets. Optional extra sections:
  * the mixture-of-attention-experts micro-benchmark (SLAM v2's Level-3 attention, top-k of E experts,
    vs. a dense attention layer of the same width): forward + backward time ratio (when v2 is benchmarked);
  * held-out LM loss after the same number of training tokens on the Shakespeare corpus (--heldout-steps);
  * a SLAM v2 segment-length sweep (--v2-sweep), a per-part time breakdown (--breakdown) and
    torch.profiler tables (--profile, --profile-generate).

Every SLAM model is configured to match LlamaForCausalLM layer for layer (RMSNorm, pre-norm, SwiGLU, RoPE,
no biases, tied embeddings, same hidden/heads/KV heads/vocab). Parameter counts are matched to one reference
model (--match-params-to, default v2 when it is benchmarked) by solving the other models' SwiGLU
intermediate size (Llama's depth is --llama-layers); they are checked within --param-tolerance and printed.

Timings interleave the models step by step (order reversed every round) and report medians, so a noisy,
shared machine shifts all alike and the ratios stay meaningful.

    PYTHONPATH=. python benchmarks/bench_slam_vs_llama.py --threads 1 --timer process       # CPU, all three
    PYTHONPATH=. python benchmarks/bench_slam_vs_llama.py --models v1 llama --seq-lens 512 2048
    PYTHONPATH=. python benchmarks/bench_slam_vs_llama.py --device cuda --dtype bfloat16 --batch-size 8 \
        --hidden-size 1024 --num-heads 16 --intermediate-size 2816

The measurements live in slam_hf.bench.suites (slam_vs_llama: models and parameter matching; throughput; moa;
heldout; memory: the peak-memory workers; breakdowns; cost_model; report_text); this file is their command line.
"""

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

from slam_hf.bench.machine import cpu_name, load_average, software_versions  # noqa: E402
from slam_hf.bench.measure import count_parameters  # noqa: E402
from slam_hf.bench.suites import breakdowns  # noqa: E402
from slam_hf.bench.suites.cost_model import cost_model  # noqa: E402
from slam_hf.bench.suites.heldout import bench_heldout  # noqa: E402
from slam_hf.bench.suites.memory import MEMORY_METHOD, measure_memory, memory_worker  # noqa: E402
from slam_hf.bench.suites.moa import bench_moa  # noqa: E402
from slam_hf.bench.suites.report_text import ratios_over_llama, report  # noqa: E402
from slam_hf.bench.suites.slam_vs_llama import build_model, describe_sizes, make_optimizer, params_at  # noqa: E402
from slam_hf.bench.suites.slam_vs_llama_options import parse_args, prepare  # noqa: E402
from slam_hf.bench.suites.throughput import bench_generation, bench_training, bench_v2_sweep  # noqa: E402


def environment(args):
    env = {
        **software_versions(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "device": args.device,
        "dtype": args.dtype,
        "attn": args.attn,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
    }
    if load_average() is not None:
        env["loadavg_at_start"] = load_average()
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def print_setup(args, env):
    print(
        f"torch {env['torch']}  transformers {env['transformers']}  device {args.device}  dtype {args.dtype}  "
        f"attn {args.attn}  torch threads {env['torch_num_threads']} (interop {env['torch_num_interop_threads']}), "
        f"cpus {env['cpu_count']}" + (f", gpu {env['gpu']}" if "gpu" in env else "")
    )
    if "loadavg_at_start" in env:
        load = env["loadavg_at_start"][0]
        busy = load > 0.5 * (os.cpu_count() or 1)
        hint = "  WARNING: machine is busy, timings will be noisy (consider --threads 1 --timer process)"
        print(f"load average {load:.2f}" + (hint if busy and args.device == "cpu" else ""))
    print(
        f"models: hidden {args.hidden_size}, heads {args.num_heads} (kv {args.num_kv_heads or args.num_heads}), "
        f"vocab {args.vocab_size}, SwiGLU, pre-RMSNorm, RoPE, tied embeddings; {describe_sizes(args)}; "
        f"batch {args.batch_size}, warmup {args.warmup}/{args.long_warmup}, repeats {args.repeats}/{args.long_repeats} "
        f"(short/long >= {args.long_seq}), seed {args.seed}, timer {args.timer}"
    )


def build_models(args):
    """The compared models, with their parameter counts checked against the reference within the tolerance."""
    models = {name: build_model(name, args) for name in args.models}
    params = {name: count_parameters(m) for name, m in models.items()}
    ref = params_at(args.match_params_to, args, args.sizes[args.match_params_to])
    for name, p in params.items():
        if abs(p - ref) / ref > args.param_tolerance:
            raise SystemExit(f"parameter counts differ by more than ±{100 * args.param_tolerance:.0f} %: {params}")
    print("params: " + ",  ".join(f"{n} {p:,} ({100 * (p - ref) / ref:+.2f} %)" for n, p in params.items()))
    return models, params


def run_model_sections(args, models, sections):
    """The sections that time the full-size models: throughput, breakdowns, saved memory, profiles."""
    optimizers = {name: make_optimizer(m) for name, m in models.items()}
    if not args.no_train:
        print("training throughput (forward + backward + AdamW step):", flush=True)
        sections["train"] = bench_training(args, models, optimizers)
    if not args.no_generate:
        print("generation throughput (greedy, KV cache):", flush=True)
        sections["generate"] = bench_generation(args, models)
    if args.breakdown:
        sections["breakdown"] = breakdowns.breakdown(args, models, optimizers, args.breakdown)
    if args.breakdown_generate:
        sections["breakdown_generate"] = breakdowns.breakdown_generate(args, models)
    if args.saved_memory:
        sections["saved_for_backward_mib"] = breakdowns.saved_memory(args, models, args.saved_memory)
    if args.profile:
        sections["profile_tables"] = breakdowns.profile_step(args, models, optimizers, args.profile)
    if args.profile_generate:
        sections["profile_generate_tables"] = breakdowns.profile_generate(args, models)


def run_own_sections(args, argv, sections):
    """The sections that build their own models: MoA, segment sweep, held-out loss, memory workers."""
    if "v2" in args.models and not args.no_moa:
        print("MoA micro-benchmark (SLAM v2 Level-3 attention vs dense attention of the same width):", flush=True)
        sections["moa"] = bench_moa(args)
    if args.v2_sweep:
        print("SLAM v2 segment-length sweep (training tok/s):", flush=True)
        sections["v2_sweep"] = bench_v2_sweep(args)
    if args.heldout_steps:
        print("held-out loss (Shakespeare corpus, validation = held-out works):", flush=True)
        sections["heldout"] = bench_heldout(args)
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the memory subprocesses need the GPU memory this process cached
    if not args.no_memory:
        print("peak memory (fresh subprocess per measurement):", flush=True)
        jobs = [(name, seq) for seq in args.seq_lens for name in args.models]
        if not args.no_generate:
            jobs += [(name, "gen") for name in args.models]
        sections["memory"] = measure_memory(args, argv, jobs)


def write_json(args, env, params, costs, sections, verdicts, elapsed):
    train, memory, gen = sections["train"], sections["memory"], sections["generate"]
    payload = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "environment": env,
        "parameters": params,
        "cost_model": {str(k): v for k, v in costs.items()},
        "train": {str(k): v for k, v in (train or {}).items()},
        "memory": memory,
        "memory_method": MEMORY_METHOD[args.device],
        **{key: sections[key] for key in ("generate", "moa", "heldout", "v2_sweep")},
        **{key: sections[key] for key in ("breakdown", "breakdown_generate", "saved_for_backward_mib")},
        "ratios_over_llama": ratios_over_llama(args, train, memory, gen),
        "targets": verdicts,
        "profile_tables": sections["profile_tables"],
        "profile_generate_tables": sections["profile_generate_tables"],
        "elapsed_s": elapsed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"wrote {args.json_out}")


SECTIONS = (
    "train memory generate moa heldout v2_sweep breakdown breakdown_generate saved_for_backward_mib profile_tables "
    "profile_generate_tables"
).split()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = prepare(parse_args(argv, description=__doc__))
    if args._memory_worker:  # the workers' former entry point, kept for old command lines
        return memory_worker(args)
    started = time.perf_counter()
    env = environment(args)
    print_setup(args, env)
    models, params = build_models(args)
    costs = {seq: cost_model(args, seq) for seq in args.seq_lens}
    sections = dict.fromkeys(SECTIONS)
    run_model_sections(args, models, sections)
    del models
    gc.collect()
    run_own_sections(args, argv, sections)

    measured = (sections[key] for key in ("train", "memory", "generate", "moa", "heldout"))
    _, verdicts = report(args, params, costs, *measured)
    elapsed = time.perf_counter() - started
    print(f"\ntotal time {elapsed:.1f} s")
    if args.json_out:
        write_json(args, env, params, costs, sections, verdicts, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
