"""Section 3 of the SLAM v3 benchmark: the four encoder paths batched (SlamParallelPaths, one computation) vs.
sequential (`paths.batch_paths = False`: each path through its own modules), forward and forward + backward at
several shapes, outputs and gradients checked equal, and the whole encoder forward. Also the prototype that skips
the rows a path gives no key (`compact_paths_forward`). Target: batched >= 1.5x faster."""

import gc
import os
import statistics

import torch

from slam_hf import SlamV3ForConditionalGeneration
from slam_hf.bench.machine import load_average
from slam_hf.bench.measure import interleave, timed

from .v3_models import EQUAL_TOL, PATHS_TARGET
from .v3_paths import encoder_config, encoder_inputs, paths_inputs
from .v3_paths_profile import profile_paths
from .v3_timing import TIMERS, set_threads

PART_LABELS = {"paths_forward": "paths fwd", "paths_train": "paths fwd+bwd", "encoder_forward": "encoder fwd"}


def section_encoder(args, report):
    report("\n" + "=" * 100)
    report(
        f"3. Encoder paths: batched (one computation) vs sequential (batch_paths=False), {args.encoder_layers} layers "
        "per path"
    )
    report("=" * 100)
    report(
        "inputs: text + one image (1/4 of the tokens) + text, odd rows padded at the end (1/16); GeGLU 4x, heads of "
        "64 (32 at hidden 128), GQA heads/4 (SlamV3Config defaults); 'paths' = SlamParallelPaths alone (masks "
        "built outside), 'encoder' = SlamV3Encoder forward (tiny vision tower, masks, paths, fusion node)"
    )
    results = {}
    for threads in args.encoder_threads:
        results.update(encoder_thread_count(args, report, threads))
    set_threads(args.threads)
    if not args.no_profile:
        results["profile"] = profile_paths(args, report)
    shapes = {k: r for k, r in results.items() if isinstance(r, dict) and "paths_forward" in r}
    ratios = [r[part]["ratio"] for r in shapes.values() for part in ("paths_forward", "paths_train") if part in r]
    passes = {k: r["paths_forward"]["ratio"] >= PATHS_TARGET for k, r in shapes.items()}
    results["pass_forward_by_shape"] = passes
    results["best_ratio"], results["worst_ratio"] = max(ratios), min(ratios)
    return results


def encoder_thread_count(args, report, threads):
    """Every shape at one thread count: the first thread count times everything, the others the paths forward."""
    clock = "proc" if threads == 1 and args.timer == "process" else "wall"
    set_threads(threads)
    first = threads == args.encoder_threads[0]
    report(
        f"\n-- {threads} thread(s), {'process' if clock == 'proc' else 'wall'} time, ms (median; 'min' ratio = "
        "fastest sequential / fastest batched) --"
    )
    load = (load_average() or [None])[0]
    results = {f"load_{threads}t": load}
    if clock == "wall" and load is not None and load > 0.5:
        report(
            f"   NOTE: load average {load:.2f} on {os.cpu_count()} cores: other processes compete "
            "for the cores, so these wall-clock numbers are noisy (the min ratio is the less disturbed one)"
        )
    if not first:
        report("   (paths forward only; forward + backward and the whole encoder: first thread count)")
    report(
        f"{'shape HxLxB':<14}{'part':<18}{'sequential':>11}{'batched':>10}{'seq/batched':>13}{'min':>8}  "
        f"check (max |diff|)"
    )
    for shape in args.encoder_shapes:
        hidden, length, batch = (int(x) for x in shape.lower().split("x"))
        results[f"{threads}t/{shape}"] = bench_encoder_shape(
            args, report, threads, clock, hidden, length, batch, full=first
        )
        gc.collect()
    return results


class EncoderShape:
    """One encoder at one shape, its inputs, and the three timed parts, batched or sequential."""

    def __init__(self, args, hidden, length, batch):
        torch.manual_seed(args.seed)
        config = encoder_config(hidden, args.encoder_layers)
        self.model = SlamV3ForConditionalGeneration(config)
        self.encoder = self.model.model.encoder
        self.paths = self.encoder.paths
        self.ids, self.mask, self.pixels, self.states, is_image, real = encoder_inputs(config, length, batch, args.seed)
        self.masks = paths_inputs(self.encoder, self.states, is_image, real)
        self.grad_out = torch.randn(4, batch, length, hidden, generator=torch.Generator().manual_seed(1))

    def paths_forward(self, batched):
        self.paths.batch_paths = batched
        return self.paths(self.states, *self.masks, "sdpa")

    def paths_train(self, batched):
        self.paths.zero_grad(set_to_none=True)
        (self.paths_forward(batched) * self.grad_out).sum().backward()

    def encoder_forward(self, batched):
        self.paths.batch_paths = batched
        return self.encoder(input_ids=self.ids, attention_mask=self.mask, pixel_values=self.pixels).last_hidden_state

    def max_differences(self, full):
        """Max |batched - sequential| of the outputs (and gradients): also the warm-up of every timed part."""
        self.model.eval()
        with torch.no_grad():
            checks = {"paths_forward": (self.paths_forward(True) - self.paths_forward(False)).abs().max().item()}
            checks["paths_train"] = checks["encoder_forward"] = None
            if full:
                diff = self.encoder_forward(True) - self.encoder_forward(False)
                checks["encoder_forward"] = diff.abs().max().item()
        if full:
            self.model.train()
            self.paths_train(True)
            grads = [p.grad.clone() for p in self.paths.parameters()]
            self.paths_train(False)
            checks["paths_train"] = max((a - p.grad).abs().max().item() for a, p in zip(grads, self.paths.parameters()))
        return checks


def bench_encoder_shape(args, report, threads, clock, hidden, length, batch, full=True):
    """Times (batched, sequential) paths forward; with `full` also forward + backward and the whole encoder."""
    bench = EncoderShape(args, hidden, length, batch)
    repeats = args.encoder_repeats or (5 if hidden * length * batch < 2**20 else 3)
    checks = bench.max_differences(full)
    parts = {"paths_forward": (bench.paths_forward, True, False)}
    if full:
        parts["paths_train"] = (bench.paths_train, False, True)
        parts["encoder_forward"] = (bench.encoder_forward, True, False)
    out = {"shape": [hidden, length, batch], "threads": threads, "clock": clock, "repeats": repeats}
    for part, (fn, no_grad, train) in parts.items():
        bench.model.train(train)
        with torch.set_grad_enabled(not no_grad):
            samplers = {b: (lambda b=b: timed(lambda: fn(b), TIMERS[clock])) for b in (True, False)}
            times = interleave(samplers, 0, repeats)
        med = {b: statistics.median(t) for b, t in times.items()}
        ratio = med[False] / med[True]
        min_ratio = min(times[False]) / min(times[True])
        ok = checks[part] <= EQUAL_TOL
        report(
            f"{f'{hidden}x{length}x{batch}':<14}{PART_LABELS[part]:<18}"
            f"{med[False] * 1e3:>11.1f}{med[True] * 1e3:>10.1f}{ratio:>12.3f}x{min_ratio:>7.3f}x  "
            f"{'OK' if ok else 'FAIL'} ({checks[part]:.1e})"
        )
        out[part] = {
            "sequential_s": med[False],
            "batched_s": med[True],
            "ratio": ratio,
            "min_ratio": min_ratio,
            "max_abs_diff": checks[part],
            "equal": ok,
            "samples": {"batched": times[True], "sequential": times[False]},
        }
    bench.paths.batch_paths = True
    return out
