"""Held-out loss against mean core iterations for the loop model's exits (benchmarks/bench_loop.py).

Curves, all on the bench's held-out rows through `slam_hf.training.loop` (the model's own adaptive, uncached
forward): the trained confidence head ("improvement" target, trained with the LM), a second head trained on the
frozen trunk with the "absolute" target, the untrained hidden-state-change and KL (Huginn) exits, and fixed depths
1..N. Thresholds are chosen by `calibrate_exit_threshold` on separate calibration rows (other rows of the same
held-out works), then scored on the held-out rows, so the reported saving is not fitted to the rows it is scored on.
The frontier of a curve at a loss budget b is the fewest mean iterations of any of its points whose held-out loss is
at most (1 + b) x the full-depth loss (the full-depth point always qualifies), the same rule for every exit.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch.nn import functional as F

from slam_hf.training.loop import (
    DEFAULT_THRESHOLDS,
    calibrate_exit_threshold,
    exit_curve,
    fixed_depth_curve,
)

# The default confidence grid stops at 0.5; lower thresholds show the rest of the curve, down to ~1 iteration.
CONFIDENCE_GRID = (*DEFAULT_THRESHOLDS["confidence"], 0.4, 0.3, 0.2, 0.1)
# curve name -> (which model, criterion, thresholds): "loop" is the trained model, "absolute" the second head.
EXIT_CURVES = {
    "confidence_improvement": ("loop", "confidence", CONFIDENCE_GRID),
    "confidence_absolute": ("absolute", "confidence", CONFIDENCE_GRID),
    "hidden_change": ("loop", "hidden_change", None),
    "kl": ("loop", "kl", None),
}
CALIBRATED = ("confidence_improvement", "confidence_absolute")
UNTRAINED = ("hidden_change", "kl")


@torch.no_grad()
def heldout_loss(model, batches) -> float:
    """Mean next-token cross-entropy over every prediction of the rows (the plain forward; for Llama)."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    return total / count


@torch.no_grad()
def absolute_target_share(model, batches) -> dict:
    """At full depth: the share of held-out predictions with loss below 2 nats (where the "absolute" confidence
    target clamp(1 - loss / 2, 0, 1) is above 0) and that target's mean."""
    model.eval()
    below, target, count = 0, 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch, use_cache=False, loop_exit_criterion="none").logits[:, :-1].float()
        losses = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        below += int((losses < 2).sum())
        target += (1 - losses / 2).clamp(0, 1).sum().item()
        count += losses.numel()
    return {"share_loss_below_2": below / count, "mean_absolute_target": target / count}


def point(exit_point) -> dict:
    return asdict(exit_point)


def frontier(points: list[dict], full_loss: float, budgets) -> dict:
    """{budget: the point with the fewest mean iterations within (1 + budget) x full_loss}, as a dict."""
    result = {}
    for budget in budgets:
        within = [p for p in points if p["loss"] <= full_loss * (1 + budget)]
        best = min(within, key=lambda p: (p["mean_iterations"], p["loss"]))
        result[str(budget)] = {key: best[key] for key in ("threshold", "loss", "mean_iterations")}
    return result


def exit_curves(models: dict, eval_batches, calibration_batches, settings, log=print) -> dict:
    """Every curve, the calibrated confidence thresholds (applied to each model's config) scored on the held-out
    rows, the frontiers at settings.budgets and the target checks' raw numbers."""
    loop = models["loop"]
    started = time.perf_counter()
    fixed = [point(p) for p in fixed_depth_curve(loop, eval_batches)]
    full = fixed[-1]
    log("  fixed depths: " + ", ".join(f"{p['mean_iterations']:.0f}: {p['loss']:.4f}" for p in fixed))
    curves = {"fixed_depth": fixed}
    for name, (which, criterion, grid) in EXIT_CURVES.items():
        t0 = time.perf_counter()
        curves[name] = [point(p) for p in exit_curve(models[which], eval_batches, criterion, grid)]
        log(f"  {name}: {_describe(curves[name])} ({time.perf_counter() - t0:.0f} s)")
    calibrations = {
        name: calibrate(models[EXIT_CURVES[name][0]], name, calibration_batches, curves[name], full, settings, log)
        for name in CALIBRATED
    }
    return {
        "full_depth": full,
        "curves": curves,
        "calibrations": calibrations,
        "frontiers": {
            name: frontier(points + [full], full["loss"], settings.budgets) for name, points in curves.items()
        },
        "seconds": time.perf_counter() - started,
    }


def calibrate(model, name, calibration_batches, heldout_curve, full, settings, log=print) -> dict:
    """calibrate_exit_threshold on the calibration rows (written into model.config), then that threshold's point on
    the held-out curve, with its loss increase and iteration saving against full depth."""
    _, criterion, grid = EXIT_CURVES[name]
    calibration = calibrate_exit_threshold(model, calibration_batches, settings.loss_budget, criterion, grid)
    threshold = calibration.threshold
    if threshold is None:
        scored = full
    else:
        scored = next(p for p in heldout_curve if p["threshold"] == threshold)
    result = {
        "criterion": criterion,
        "threshold": threshold,
        "loss_budget": settings.loss_budget,
        "calibration_rows": {"full_depth": point(calibration.full_depth), "chosen": point(calibration.chosen)},
        "heldout": scored,
        "heldout_loss_increase": scored["loss"] / full["loss"] - 1,
        "heldout_iteration_saving": 1 - scored["mean_iterations"] / full["mean_iterations"],
    }
    log(
        f"  calibrated {name}: threshold {threshold} -> held-out {scored['mean_iterations']:.3f} iterations "
        f"({100 * result['heldout_iteration_saving']:.1f}% fewer), loss {100 * result['heldout_loss_increase']:+.3f}%"
    )
    return result


def _describe(points: list[dict]) -> str:
    return ", ".join(f"{p['threshold']:.3g}: {p['mean_iterations']:.2f} it / {p['loss']:.4f}" for p in points)


__all__ = [
    "CALIBRATED",
    "CONFIDENCE_GRID",
    "EXIT_CURVES",
    "UNTRAINED",
    "calibrate",
    "exit_curves",
    "frontier",
    "absolute_target_share",
    "heldout_loss",
]
