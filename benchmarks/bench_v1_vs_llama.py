#!/usr/bin/env python
"""SLAM v1 vs. a Llama baseline of the same width, depth and parameter count, in one run.

Measures, for both models:
  * training throughput: tokens/s of one forward + backward + AdamW step, per sequence length;
  * peak memory of a training step (method printed with the results, see `measure_memory`);
  * generation throughput: `model.generate` with a KV cache, greedy, prompt + N new tokens;
and prints a table with the ratios slam/llama (plus an analytic per-token cost model that explains
them), optionally writing everything to JSON.

The SLAM model is configured to match `LlamaForCausalLM` layer for layer (RMSNorm, pre-norm, SwiGLU,
RoPE, no biases, tied embeddings, same hidden/heads/intermediate/vocab); depth is
num_hidden_layers = 2 + 2 * ef_cycles for both, and parameter counts are checked (within 5 %).

Timings interleave the two models step by step (slam, llama, llama, slam, ...) and report medians,
so a noisy, shared machine shifts both alike and the ratios stay meaningful.

    PYTHONPATH=. python benchmarks/bench_v1_vs_llama.py                       # CPU defaults
    PYTHONPATH=. python benchmarks/bench_v1_vs_llama.py --device cuda --dtype bfloat16 \
        --seq-lens 512 2048 8192 --hidden-size 1024 --num-heads 16 --intermediate-size 2816
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from slam_hf import SlamV1Config, SlamV1ForCausalLM  # noqa: E402

MODELS = ("slam", "llama")
# The targets, as ratios slam / llama: training tokens/s at a sequence length, peak memory.
SPEED_TARGETS = {512: 0.90, 2048: 1.30}
MEMORY_TARGETS = {2048: 1.00}
PARAM_TOLERANCE = 0.05


# --------------------------------------------------------------------------------------------- setup
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation, both models")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048], help="training sequence lengths")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and sequence length")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model and sequence length (median)")
    # Model size (shared by both models).
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-kv-heads", type=int, default=None, help="GQA; default = --num-heads (MHA)")
    p.add_argument("--intermediate-size", type=int, default=768, help="SwiGLU inner size")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--norm-eps", type=float, default=1e-6)
    # SLAM v1 EF geometry.
    p.add_argument("--ef-cycles", type=int, default=2, help="depth = 2 + 2 * ef_cycles layers for both models")
    # 288 / 32 = stride 256: windows tile 512 and 2048 exactly (no mostly-empty trailing window), and
    # each token pair on a window border is shared. See benchmarks/README.md for the geometry sweep.
    p.add_argument("--ef-segment-length", type=int, default=288)
    p.add_argument("--ef-segment-overlap", type=int, default=32)
    # Generation.
    p.add_argument("--gen-prompt-len", type=int, default=128)
    p.add_argument("--gen-new-tokens", type=int, default=64)
    p.add_argument("--gen-batch-size", type=int, default=1)
    p.add_argument("--gen-repeats", type=int, default=3)
    # What to run.
    p.add_argument("--no-train", action="store_true", help="skip training throughput")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--no-generate", action="store_true", help="skip generation throughput")
    p.add_argument(
        "--profile", type=int, default=None, metavar="SEQ",
        help="also run torch.profiler on one training step of each model at this sequence length",
    )  # fmt: skip
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timer", default="wall", choices=["wall", "process"],
        help="wall: perf_counter (default). process: CPU time of this process (CPU only; with --threads 1 it "
        "is insensitive to other processes competing for the cores, i.e. a fair comparison on a busy machine)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch.set_num_threads (default: leave torch's default; 1 is steadier on a shared, busy CPU)",
    )  # fmt: skip
    p.add_argument("--json-out", default=None, help="write all results to this JSON file")
    # Internal: one isolated memory measurement in a fresh process (see measure_memory).
    p.add_argument("--_memory-worker", nargs=2, metavar=("MODEL", "SEQ"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timer == "process" and args.device == "cuda":
        p.error("--timer process measures CPU time; use the default wall timer with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was requested but torch.cuda.is_available() is False")
    return args


def torch_dtype(args):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]


def max_positions(args):
    return max(list(args.seq_lens) + [args.gen_prompt_len + args.gen_new_tokens, args.profile or 0])


def slam_config(args) -> SlamV1Config:
    config = SlamV1Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size,
        mlp_type="swiglu",
        norm_type="rmsnorm",
        norm_position="pre",
        norm_eps=args.norm_eps,
        position_embedding_type="rope",
        rope_theta=args.rope_theta,
        max_position_embeddings=max_positions(args),
        attention_bias=False,
        mlp_bias=False,
        ef_cycles=args.ef_cycles,
        ef_segment_length=args.ef_segment_length,
        ef_segment_overlap=args.ef_segment_overlap,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = args.attn
    return config


def llama_config(args) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=2 + 2 * args.ef_cycles,
        hidden_act="silu",
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        max_position_embeddings=max_positions(args),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = args.attn
    return config


def build_model(name, args):
    """Seeded construction in float32, then cast: the same seed gives the same weights on any device."""
    torch.manual_seed(args.seed)
    if name == "slam":
        model = SlamV1ForCausalLM(slam_config(args))
    else:
        model = LlamaForCausalLM(llama_config(args))
    return model.to(device=args.device, dtype=torch_dtype(args))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


def make_batch(args, seq_len, batch_size, salt=0):
    generator = torch.Generator().manual_seed(args.seed + 1000 * seq_len + salt)
    # Ids >= 3 avoid pad / bos / eos; the same batch for both models.
    ids = torch.randint(3, args.vocab_size, (batch_size, seq_len), generator=generator)
    return ids.to(args.device)


def synchronize(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, ids):
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def make_optimizer(model):
    # foreach=True is the default on CUDA; fixed here so both devices run the same implementation.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)


# ------------------------------------------------------------------------------------ cost model
def ef_geometry(seq_len, window, overlap):
    """Windows a causal SLAM v1 EF cycle runs over a sequence of `seq_len` tokens (see plan_windows)."""
    stride = window - overlap
    num_windows = -(-seq_len // stride)  # every window that starts before the end
    q_len = min(window, seq_len)
    return {"stride": stride, "windows": num_windows, "window_tokens": q_len, "slots": num_windows * q_len}


def cost_model(args, seq_len):
    """Forward multiply-accumulates per token, split into parts (backward is ~2x the same mix).

    Causal attention counts the lower triangle only (what flash/SDPA causal kernels compute). SLAM EF
    blocks project Q/K/V for *every* token in both blocks (slam_blocks.SlamWindowedLayer), then run
    o_proj + MLP on the gathered window slots (including slots of a partial last window).
    """
    h, heads, inter, vocab = args.hidden_size, args.num_heads, args.intermediate_size, args.vocab_size
    kv_heads = args.num_kv_heads or heads
    d = h // heads
    L = seq_len
    qkv = h * (heads + 2 * kv_heads) * d  # per token
    o = heads * d * h
    mlp = 3 * h * inter
    causal_attn = 2 * heads * d * (L + 1) / 2  # QK^T + AV, average key count (L + 1) / 2

    def full_layer():
        return {"qkv_o_proj": qkv + o, "attention": causal_attn, "mlp": mlp}

    layers = 2 + 2 * args.ef_cycles
    llama = {"qkv_o_proj": 0.0, "attention": 0.0, "mlp": 0.0}
    for _ in range(layers):
        for k, v in full_layer().items():
            llama[k] += v
    llama["lm_head"] = h * vocab

    geo = ef_geometry(L, args.ef_segment_length, args.ef_segment_overlap)
    w, slots = geo["window_tokens"], geo["slots"]
    slam = {"qkv_o_proj": 0.0, "attention": 0.0, "mlp": 0.0}
    for _ in range(2):
        for k, v in full_layer().items():
            slam[k] += v
    per_cycle = {
        "qkv_o_proj": 2 * qkv + o * slots / L,
        "attention": 2 * heads * d * geo["windows"] * w * (w + 1) / 2 / L,
        "mlp": mlp * slots / L,
    }
    for _ in range(args.ef_cycles):
        for k, v in per_cycle.items():
            slam[k] += v
    slam["lm_head"] = h * vocab
    out = {}
    for name, parts in (("slam", slam), ("llama", llama)):
        total = sum(parts.values())
        out[name] = {
            "macs_per_token": total,
            "fractions": {k: v / total for k, v in parts.items()},
        }
    out["geometry"] = geo
    out["coverage"] = slots / L
    out["predicted_speedup"] = sum(llama.values()) / sum(slam.values())
    return out


# ----------------------------------------------------------------------------------------- timing
def timed(args, fn):
    clock = time.process_time if args.timer == "process" else time.perf_counter
    synchronize(args)
    start = clock()
    fn()
    synchronize(args)
    return clock() - start


def summarize(times):
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
    }


def interleaved(args, fns, warmup, repeats):
    """Warm up each callable, then time them alternately (order flipped every round); medians."""
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    synchronize(args)
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats):
        for name in order if r % 2 == 0 else reversed(order):
            times[name].append(timed(args, fns[name]))
    return {name: summarize(t) for name, t in times.items()}


def bench_training(args, models, optimizers):
    results = {}
    for seq in args.seq_lens:
        ids = make_batch(args, seq, args.batch_size)
        for model in models.values():
            model.train()
        fns = {name: (lambda m=models[name], o=optimizers[name]: train_step(m, o, ids)) for name in MODELS}
        stats = interleaved(args, fns, args.warmup, args.repeats)
        tokens = args.batch_size * seq
        for name in MODELS:
            stats[name]["tokens_per_s"] = tokens / stats[name]["median_s"]
        results[seq] = stats
        print(
            f"  train seq={seq:<6d} slam {stats['slam']['tokens_per_s']:10.1f} tok/s   "
            f"llama {stats['llama']['tokens_per_s']:10.1f} tok/s   "
            f"ratio {stats['slam']['tokens_per_s'] / stats['llama']['tokens_per_s']:.3f}",
            flush=True,
        )
    return results


def bench_generation(args, models):
    prompt = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
    mask = torch.ones_like(prompt)
    n = args.gen_new_tokens
    outputs = {}

    def generate(model, name):
        out = model.generate(
            input_ids=prompt,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,  # suppresses eos: always exactly n new tokens
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=0,
        )
        outputs[name] = out

    def prefill(model):
        model(input_ids=prompt, attention_mask=mask, use_cache=True, logits_to_keep=1)

    for model in models.values():
        model.eval()
    with torch.inference_mode():
        gen = interleaved(args, {k: (lambda m=m, k=k: generate(m, k)) for k, m in models.items()}, 1, args.gen_repeats)
        pre = interleaved(args, {k: (lambda m=m: prefill(m)) for k, m in models.items()}, 1, args.gen_repeats)
    results = {}
    for name in MODELS:
        assert outputs[name].shape == (args.gen_batch_size, args.gen_prompt_len + n), outputs[name].shape
        total, prefill_s = gen[name]["median_s"], pre[name]["median_s"]
        results[name] = {
            "generate": gen[name],
            "prefill": pre[name],
            "tokens_per_s": args.gen_batch_size * n / total,
            "prefill_tokens_per_s": args.gen_batch_size * args.gen_prompt_len / prefill_s,
            # Decode-only estimate: generate time minus one prompt forward (the prefill it contains).
            "decode_tokens_per_s": args.gen_batch_size * (n - 1) / (total - prefill_s) if total > prefill_s else None,
        }
    print(
        f"  generate prompt={args.gen_prompt_len} new={n}: slam {results['slam']['tokens_per_s']:.1f} tok/s   "
        f"llama {results['llama']['tokens_per_s']:.1f} tok/s",
        flush=True,
    )
    return results


# ----------------------------------------------------------------------------------------- memory
MEMORY_METHOD = {
    "cuda": (
        "torch.cuda.max_memory_allocated() during one training step (after a warmup step, so weights and AdamW "
        "states already exist; gradients are freed by zero_grad(set_to_none=True) and count in the step), minus "
        "torch.cuda.memory_allocated() just before it; each (model, seq) in a fresh subprocess. 'peak' = that "
        "maximum, including weights and optimizer states."
    ),
    "cpu": (
        "Fresh subprocess per (model, seq) with glibc MALLOC_MMAP_THRESHOLD_=65536 (large tensors are mmap'ed "
        "and returned to the OS on free, so RSS tracks live tensors). After one warmup step (weights and AdamW "
        "states exist; gradients are freed each step and count in the step), gc + malloc_trim, then the "
        "peak-RSS counter is reset (echo 5 > /proc/self/clear_refs) and "
        "one step runs; step delta = VmHWM - VmRSS before the step; 'peak' = VmHWM (whole process, incl. "
        "Python + torch runtime). If clear_refs is unavailable, ru_maxrss is used (then a lower bound)."
    ),
}


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_cpu_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_cpu_heap():
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(args):
    """Runs in a fresh process: one model, one sequence length (or 'gen'); prints one JSON line."""
    name, seq = args._memory_worker
    model = build_model(name, args)
    mib = 1024 * 1024
    if seq == "gen":
        ids = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
        model.eval()

        def step():
            with torch.inference_mode():
                model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.gen_new_tokens,
                    min_new_tokens=args.gen_new_tokens, do_sample=False, pad_token_id=0,
                )  # fmt: skip
    else:
        ids = make_batch(args, int(seq), args.batch_size)
        optimizer = make_optimizer(model)
        model.train()

        def step():
            train_step(model, optimizer, ids)

    step()  # warmup: allocates AdamW states, lazy kernels, caches
    synchronize(args)
    if args.device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        synchronize(args)
        peak = torch.cuda.max_memory_allocated()
        result = {"before_mib": before / mib, "peak_mib": peak / mib, "step_delta_mib": (peak - before) / mib}
    else:
        import resource

        _trim_cpu_heap()
        exact = _reset_cpu_peak()
        maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731  (KiB on Linux)
        before = _status_kib("VmRSS") * 1024 if exact else maxrss()
        step()
        peak = _status_kib("VmHWM") * 1024 if exact else maxrss()
        result = {
            "before_mib": before / mib,
            "peak_mib": peak / mib,
            "step_delta_mib": (peak - before) / mib,
            "peak_reset": exact,
        }
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def measure_memory(args, argv, jobs):
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "65536"
    env["PYTHONPATH"] = os.pathsep.join([_REPO_ROOT] + [x for x in [env.get("PYTHONPATH")] if x])
    results = {}
    for name, seq in jobs:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_memory-worker", name, str(seq)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY_RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"memory worker {name} seq={seq} failed:\n{proc.stdout}\n{proc.stderr}")
        results.setdefault(str(seq), {})[name] = json.loads(line[-1].split(" ", 1)[1])
        r = results[str(seq)][name]
        print(
            f"  memory {name:5s} seq={seq!s:<6} step delta {r['step_delta_mib']:9.1f} MiB   "
            f"peak {r['peak_mib']:9.1f} MiB",
            flush=True,
        )
    return results


# ---------------------------------------------------------------------------------------- profile
def profile_step(args, models, optimizers, seq):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    sort_by = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    ids = make_batch(args, seq, args.batch_size)
    tables = {}
    for name in MODELS:
        model, optimizer = models[name], optimizers[name]
        model.train()
        train_step(model, optimizer, ids)
        synchronize(args)
        with profile(activities=activities, record_shapes=False) as prof:
            train_step(model, optimizer, ids)
            synchronize(args)
        table = prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows, max_name_column_width=60)
        tables[name] = table
        print(f"\n=== torch.profiler: {name}, one training step at seq {seq} (sorted by {sort_by}) ===")
        print(table)
    return tables


# ----------------------------------------------------------------------------------------- report
def fmt_ratio(x):
    return f"{x:6.3f}x" if x is not None else "    n/a"


def report(args, env, params, costs, train, memory, gen):
    rows = []  # (metric, slam, llama, ratio, target)

    def check(ratio, target, higher_is_better=True):
        if target is None or ratio is None:
            return ""
        ok = ratio >= target if higher_is_better else ratio <= target
        return f"{'>=' if higher_is_better else '<='}{target:.2f} {'PASS' if ok else 'FAIL'}"

    verdicts = {}
    for seq, stats in (train or {}).items():
        s, l = stats["slam"]["tokens_per_s"], stats["llama"]["tokens_per_s"]
        target = SPEED_TARGETS.get(seq)
        best = stats["llama"]["min_s"] / stats["slam"]["min_s"]  # fastest step each: least disturbed by load
        note = check(s / l, target) + f"  (min-time ratio {best:.3f})"
        rows.append((f"train tok/s @{seq}", f"{s:.1f}", f"{l:.1f}", s / l, note))
        if target is not None:
            verdicts[f"train_speed@{seq}"] = s / l >= target
    for seq, stats in (memory or {}).items():
        s, l = stats["slam"]["step_delta_mib"], stats["llama"]["step_delta_mib"]
        label = "generate" if seq == "gen" else f"train @{seq}"
        target = MEMORY_TARGETS.get(int(seq)) if seq != "gen" else None
        ratio = s / l if l > 0 else None
        rows.append((f"step mem MiB {label}", f"{s:.1f}", f"{l:.1f}", ratio, check(ratio, target, False)))
        if target is not None and ratio is not None:
            verdicts[f"train_memory@{seq}"] = ratio <= target
    if gen:
        s, l = gen["slam"]["tokens_per_s"], gen["llama"]["tokens_per_s"]
        rows.append(("generate tok/s", f"{s:.1f}", f"{l:.1f}", s / l, ""))
        s, l = gen["slam"]["prefill_tokens_per_s"], gen["llama"]["prefill_tokens_per_s"]
        rows.append(("  prompt prefill tok/s", f"{s:.1f}", f"{l:.1f}", s / l, ""))
        s, l = gen["slam"]["decode_tokens_per_s"], gen["llama"]["decode_tokens_per_s"]
        if s and l:
            rows.append(("  decode-only tok/s (est.)", f"{s:.1f}", f"{l:.1f}", s / l, ""))

    print("\n" + "=" * 86)
    print("SLAM v1 vs Llama  (ratio = slam / llama; >1 is better for tok/s, <1 is better for memory)")
    print("=" * 86)
    print(f"{'metric':<28}{'slam':>14}{'llama':>14}{'ratio':>10}  target")
    print("-" * 86)
    for metric, s, l, ratio, target in rows:
        print(f"{metric:<28}{s:>14}{l:>14}{fmt_ratio(ratio):>10}  {target}")
    print("-" * 86)
    print(
        f"params: slam {params['slam']:,}  llama {params['llama']:,}  "
        f"(diff {100 * params['rel_diff']:+.2f} %, tolerance ±{100 * PARAM_TOLERANCE:.0f} %)"
    )
    if memory:
        print(f"memory method ({args.device}): {MEMORY_METHOD[args.device]}")
    print("\nanalytic forward cost per token (MACs; backward ~2x with the same mix). coverage = query slots one EF")
    print("cycle runs o_proj + MLP on / tokens (1.0: each token through one block once; 2.0: as costly as 2 Llama")
    print("layers):")
    for seq, c in costs.items():
        g = c["geometry"]
        for name in MODELS:
            fr = c[name]["fractions"]
            print(
                f"  seq {seq:<6} {name:5s} {c[name]['macs_per_token'] / 1e6:7.2f} M  "
                f"attention {100 * fr['attention']:4.1f} %  mlp {100 * fr['mlp']:4.1f} %  "
                f"qkv/o {100 * fr['qkv_o_proj']:4.1f} %  lm_head {100 * fr['lm_head']:4.1f} %"
            )
        print(
            f"  seq {seq:<6} EF windows/cycle {g['windows']} x {g['window_tokens']} tokens "
            f"(stride {g['stride']}, coverage {c['coverage']:.3f}); predicted speedup {c['predicted_speedup']:.3f}x"
        )
        if g["windows"] < 2:
            print(f"  NOTE: at seq {seq} one window holds the whole sequence: EF block B gets no tokens (degenerate).")
    spreads = [st["max_s"] / st["min_s"] for stats in (train or {}).values() for st in stats.values()]
    if gen:
        parts = ("generate", "prefill")
        spreads += [gen[name][part]["max_s"] / gen[name][part]["min_s"] for name in MODELS for part in parts]
    if spreads and max(spreads) > 1.5:
        print(
            f"\nWARNING: repeated timings differ by up to {max(spreads):.1f}x (max/min): the machine was disturbed and "
            "the medians are unreliable. Rerun on an idle machine, with more --repeats, or (CPU) --threads 1 "
            "--timer process."
        )
    if verdicts:
        print("\ntargets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items()))
    return rows, verdicts


def environment(args):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "platform": platform.platform(),
        "device": args.device,
        "dtype": args.dtype,
        "attn": args.attn,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_at_start"] = os.getloadavg()
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_worker:
        return memory_worker(args)
    started = time.perf_counter()
    env = environment(args)
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
    layers = 2 + 2 * args.ef_cycles
    print(
        f"models: hidden {args.hidden_size}, heads {args.num_heads} (kv {args.num_kv_heads or args.num_heads}), "
        f"intermediate {args.intermediate_size} (SwiGLU), vocab {args.vocab_size}, {layers} layers; "
        f"SLAM ef_cycles {args.ef_cycles}, window {args.ef_segment_length}, overlap {args.ef_segment_overlap}; "
        f"batch {args.batch_size}, warmup {args.warmup}, repeats {args.repeats}, seed {args.seed}, timer {args.timer}"
    )

    models = {name: build_model(name, args) for name in MODELS}
    params = {name: count_parameters(m) for name, m in models.items()}
    params["rel_diff"] = (params["slam"] - params["llama"]) / params["llama"]
    if abs(params["rel_diff"]) > PARAM_TOLERANCE:
        raise SystemExit(f"parameter counts differ by {100 * params['rel_diff']:.2f} %: {params}")
    print(f"params: slam {params['slam']:,}  llama {params['llama']:,}  ({100 * params['rel_diff']:+.2f} %)")

    costs = {seq: cost_model(args, seq) for seq in args.seq_lens}
    train = memory = gen = tables = None
    optimizers = {name: make_optimizer(m) for name, m in models.items()}
    if not args.no_train:
        print("training throughput (forward + backward + AdamW step):", flush=True)
        train = bench_training(args, models, optimizers)
    if not args.no_generate:
        print("generation throughput (greedy, KV cache):", flush=True)
        gen = bench_generation(args, models)
    if args.profile:
        tables = profile_step(args, models, optimizers, args.profile)
    del models, optimizers
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the memory subprocesses need the GPU memory this process cached
    if not args.no_memory:
        print("peak memory (fresh subprocess per measurement):", flush=True)
        jobs = [(name, seq) for seq in args.seq_lens for name in MODELS]
        if not args.no_generate:
            jobs += [(name, "gen") for name in MODELS]
        memory = measure_memory(args, argv, jobs)

    rows, verdicts = report(args, env, params, costs, train, memory, gen)
    elapsed = time.perf_counter() - started
    print(f"\ntotal time {elapsed:.1f} s")
    if args.json_out:
        ratios = {}
        for seq, stats in (train or {}).items():
            ratios[f"train_tokens_per_s@{seq}"] = stats["slam"]["tokens_per_s"] / stats["llama"]["tokens_per_s"]
            ratios[f"train_tokens_per_s_min_time@{seq}"] = stats["llama"]["min_s"] / stats["slam"]["min_s"]
        for seq, stats in (memory or {}).items():
            if stats["llama"]["step_delta_mib"] > 0:
                ratios[f"step_memory@{seq}"] = stats["slam"]["step_delta_mib"] / stats["llama"]["step_delta_mib"]
        if gen:
            ratios["generate_tokens_per_s"] = gen["slam"]["tokens_per_s"] / gen["llama"]["tokens_per_s"]
            ratios["prefill_tokens_per_s"] = gen["slam"]["prefill_tokens_per_s"] / gen["llama"]["prefill_tokens_per_s"]
            if gen["slam"]["decode_tokens_per_s"] and gen["llama"]["decode_tokens_per_s"]:
                ratios["decode_tokens_per_s"] = gen["slam"]["decode_tokens_per_s"] / gen["llama"]["decode_tokens_per_s"]
        payload = {
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "environment": env,
            "parameters": params,
            "cost_model": {str(k): v for k, v in costs.items()},
            "train": {str(k): v for k, v in (train or {}).items()},
            "memory": memory,
            "memory_method": MEMORY_METHOD[args.device],
            "generate": gen,
            "ratios_slam_over_llama": ratios,
            "targets": verdicts,
            "profile_tables": tables,
            "elapsed_s": elapsed,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
