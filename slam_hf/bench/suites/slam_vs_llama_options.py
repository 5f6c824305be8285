"""Command-line options of benchmarks/bench_slam_vs_llama.py (and bench_v1_vs_llama.py), shared with the memory
workers it spawns (`python -m slam_hf.bench.suites.memory`), which parse the same command line."""

import argparse

import torch

from .slam_vs_llama import MODEL_CHOICES, plan_sizes


def _run_options(p):
    """Models, device, dtype, sequence lengths, timing protocol."""
    p.add_argument("--models", nargs="+", default=list(MODEL_CHOICES), choices=MODEL_CHOICES)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation, all models")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048, 8192], help="training sequence lengths")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and sequence length")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model and sequence length (median)")
    p.add_argument("--long-seq", type=int, default=4096, help="lengths >= this use --long-warmup / --long-repeats")
    p.add_argument("--long-warmup", type=int, default=1)
    p.add_argument("--long-repeats", type=int, default=3)


def _model_size_options(p):
    """Model size (shared by all models)."""
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-kv-heads", type=int, default=None, help="GQA; default = --num-heads (MHA)")
    p.add_argument(
        "--intermediate-size",
        type=int,
        default=768,
        help="SwiGLU inner size of the parameter reference model (see --match-params-to)",
    )
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--norm-eps", type=float, default=1e-6)


def _parameter_matching_options(p):
    """Parameter matching: which model is the reference and how the others are sized."""
    p.add_argument(
        "--match-params-to",
        default=None,
        choices=["v1", "v2"],
        help="reference model whose parameter count the others match (default: v2 if benchmarked, else v1)",
    )
    p.add_argument(
        "--llama-layers",
        type=int,
        default=None,
        help="Llama depth (default: v2's 1 + ef_num_blocks + 1 distinct layers when v2 is the reference, "
        "else v1's 2 + 2 * ef_cycles)",
    )
    p.add_argument("--llama-intermediate-size", type=int, default=None, help="default: solved to match parameters")
    p.add_argument("--v1-intermediate-size", type=int, default=None, help="default: solved to match parameters")
    p.add_argument("--v2-intermediate-size", type=int, default=None, help="default: solved to match parameters")
    p.add_argument("--param-tolerance", type=float, default=0.03, help="max relative parameter difference")


def _slam_v1_options(p):
    """SLAM v1 encoder-fusion geometry."""
    p.add_argument("--ef-cycles", type=int, default=2, help="SLAM v1: depth = 2 + 2 * ef_cycles layers")
    # 288 / 32 = stride 256: windows tile 512 and 2048 exactly (no mostly-empty trailing window), and
    # each token pair on a window border is shared. See benchmarks/README.md for the geometry sweep.
    p.add_argument("--ef-segment-length", type=int, default=288, help="SLAM v1 window")
    p.add_argument("--ef-segment-overlap", type=int, default=32, help="SLAM v1 window overlap")


def _slam_v2_options(p):
    """SLAM v2 fusion cycles, segments and attention experts."""
    p.add_argument("--v2-ef-cycles", type=int, default=2, help="SLAM v2 fusion cycles (the config default)")
    p.add_argument("--v2-num-blocks", type=int, default=4, help="SLAM v2 shared blocks = segments per rotation")
    # 256: divides 512, 2048 and 8192, so every segment is full; from 1024 tokens on all four slots hold
    # segments and each cycle is one batched computation. See benchmarks/README.md (and --v2-sweep).
    p.add_argument("--v2-segment-length", type=int, default=256, help="SLAM v2 ef_segment_length (fixed segments)")
    p.add_argument("--moa-experts", type=int, default=8)
    p.add_argument("--moa-top-k", type=int, default=2)
    p.add_argument("--router-aux-loss-coef", type=float, default=0.01)


def _generation_options(p):
    """Generation throughput."""
    p.add_argument("--gen-prompt-len", type=int, default=128)
    p.add_argument("--gen-new-tokens", type=int, default=64)
    p.add_argument("--gen-batch-size", type=int, default=1)
    p.add_argument("--gen-repeats", type=int, default=3)


def _sections_options(p):
    """Which sections run."""
    p.add_argument("--no-train", action="store_true", help="skip training throughput")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--no-generate", action="store_true", help="skip generation throughput")
    p.add_argument("--no-moa", action="store_true", help="skip the MoA micro-benchmark")
    p.add_argument("--moa-seq-lens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--moa-repeats", type=int, default=7)


def _heldout_options(p):
    """Held-out loss (small models trained on the Shakespeare corpus)."""
    p.add_argument("--heldout-steps", type=int, default=0, help="training steps per model; 0 skips the section")
    p.add_argument("--heldout-models", nargs="+", default=["v2", "llama"], choices=MODEL_CHOICES)
    p.add_argument("--heldout-seq-len", type=int, default=1024)
    p.add_argument("--heldout-batch-size", type=int, default=2)
    p.add_argument("--heldout-hidden-size", type=int, default=128)
    p.add_argument("--heldout-num-heads", type=int, default=4)
    p.add_argument("--heldout-intermediate-size", type=int, default=384, help="of the parameter reference model")
    p.add_argument(
        "--heldout-v2-segment-length",
        type=int,
        default=None,
        help="default: --v2-segment-length (256: four segments of a 1024-token row, the published four parts)",
    )
    p.add_argument("--heldout-lr", type=float, default=1e-3)
    p.add_argument("--heldout-eval-batches", type=int, default=None, help="cap on validation batches (default all)")


def _diagnostics_options(p):
    """Diagnostics, clock, threads and output."""
    p.add_argument(
        "--v2-sweep",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="also measure SLAM v2 training tok/s with these ef_segment_length values (vs Llama)",
    )
    p.add_argument("--sweep-seq-lens", type=int, nargs="+", default=[2048])
    p.add_argument(
        "--breakdown",
        type=int,
        default=None,
        metavar="SEQ",
        help="time forward and backward of each part (layer, fusion cycle, MoA layer) of one training step",
    )
    p.add_argument(
        "--breakdown-generate",
        action="store_true",
        help="time the forward of each part during one generate() call (prefill + decode)",
    )
    p.add_argument(
        "--saved-memory",
        type=int,
        default=None,
        metavar="SEQ",
        help="MiB of tensors saved for backward by each part in one training forward (explains step memory)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="SEQ",
        help="also run torch.profiler on one training step of each model at this sequence length",
    )
    p.add_argument("--profile-generate", action="store_true", help="torch.profiler table of one generate() call")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timer",
        default="wall",
        choices=["wall", "process"],
        help="wall: perf_counter (default). process: CPU time of this process (CPU only; with --threads 1 it "
        "is insensitive to other processes competing for the cores, i.e. a fair comparison on a busy machine)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: leave torch's default; 1 is steadier on a shared, busy CPU)",
    )
    p.add_argument("--json-out", default=None, help="write all results to this JSON file")
    # Internal: one isolated memory measurement in a fresh process (see measure_memory).
    p.add_argument("--_memory-worker", nargs=2, metavar=("MODEL", "SEQ"), default=None, help=argparse.SUPPRESS)


def parse_args(argv=None, description=None):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_options in (
        _run_options,
        _model_size_options,
        _parameter_matching_options,
        _slam_v1_options,
        _slam_v2_options,
        _generation_options,
        _sections_options,
        _heldout_options,
        _diagnostics_options,
    ):
        add_options(p)
    args = p.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))  # unique, in the given order
    if args.timer == "process" and args.device == "cuda":
        p.error("--timer process measures CPU time; use the default wall timer with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was requested but torch.cuda.is_available() is False")
    if args.match_params_to is None:
        args.match_params_to = "v2" if "v2" in args.models else "v1"
    if args.llama_layers is None:
        args.llama_layers = 2 + (args.v2_num_blocks if args.match_params_to == "v2" else 2 * args.ef_cycles)
    return args


def prepare(args):
    """What every run (and every memory worker) derives from the options: threads, intermediate sizes, cost
    models."""
    if args.threads:
        torch.set_num_threads(args.threads)
    needed = list(dict.fromkeys(args.models + [args.match_params_to] + (["v2", "llama"] if args.v2_sweep else [])))
    args.sizes = plan_sizes(args, needed)
    args.cost_models = list(args.models)
    return args
