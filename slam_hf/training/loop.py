"""Calibrating the latent loop's exit (DESIGN §6): held-out loss against mean core iterations, and the threshold that
saves the most iterations within a loss budget.

    report = calibrate_exit_threshold(model, heldout_batches, loss_budget=0.005)   # sets model.config's exit
    model.save_pretrained(folder)                                                  # ships the threshold

Every point runs the model's own adaptive forward (uncached, exited tokens' K/V standing in at deeper iterations,
exactly as in cached decoding), so the measured loss is the loss the shipped threshold gives. Not remote code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F

# Threshold grids per criterion, from "exit almost never" to "exit almost always".
DEFAULT_THRESHOLDS = {
    "confidence": (0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5),
    "hidden_change": tuple(round(0.01 * 1.5**k, 5) for k in range(12)),  # 0.01 .. 0.86
    "kl": tuple(10.0 ** (k / 2) for k in range(-12, 1)),  # 1e-6 .. 1
}


@dataclass
class ExitPoint:
    """Held-out numbers of one exit setting: mean next-token loss (nats) and mean core iterations per token."""

    criterion: str | None
    threshold: float | None
    loss: float
    mean_iterations: float
    tokens: int


@dataclass
class Calibration:
    criterion: str
    threshold: float | None  # None: no threshold met the budget (full depth)
    loss_budget: float
    full_depth: ExitPoint
    chosen: ExitPoint
    curve: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _batch_inputs(batch, device):
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    return {name: value.to(device) for name, value in batch.items() if name in ("input_ids", "attention_mask")}


@torch.no_grad()
def evaluate_exit(model, batches, criterion=None, threshold=None, loop_iterations=None) -> ExitPoint:
    """Mean next-token loss over the real tokens of `batches` (tensors of ids, or dicts with `input_ids` and an
    optional `attention_mask`) and mean core iterations per real token, with the given exit (None: full depth) or
    a fixed depth `loop_iterations`."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens, total_iterations, counted = 0.0, 0, 0, 0
    try:
        for batch in batches:
            inputs = _batch_inputs(batch, model.device)
            outputs = model(
                **inputs,
                use_cache=False,
                loop_exit_criterion=criterion if threshold is not None else "none",
                loop_exit_threshold=threshold,
                loop_iterations=loop_iterations,
            )
            ids = inputs["input_ids"]
            real = inputs.get("attention_mask", torch.ones_like(ids)).bool()
            targets = ids[:, 1:].masked_fill(~real[:, 1:], -100)
            losses = F.cross_entropy(
                outputs.logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="sum", ignore_index=-100
            )
            total_loss += losses.item()
            total_tokens += int((targets != -100).sum())
            total_iterations += int(outputs.loop_iterations[real].sum())
            counted += int(real.sum())
    finally:
        model.train(was_training)
    return ExitPoint(
        criterion=criterion if threshold is not None else None,
        threshold=threshold,
        loss=total_loss / max(total_tokens, 1),
        mean_iterations=total_iterations / max(counted, 1),
        tokens=total_tokens,
    )


def exit_curve(model, batches, criterion, thresholds=None) -> list[ExitPoint]:
    """One `ExitPoint` per threshold of `criterion` (default grid: DEFAULT_THRESHOLDS)."""
    batches = list(batches)
    thresholds = DEFAULT_THRESHOLDS[criterion] if thresholds is None else thresholds
    return [evaluate_exit(model, batches, criterion, threshold) for threshold in thresholds]


def fixed_depth_curve(model, batches) -> list[ExitPoint]:
    batches = list(batches)
    depths = range(1, model.config.loop_max_iterations + 1)
    return [evaluate_exit(model, batches, loop_iterations=depth) for depth in depths]


def calibrate_exit_threshold(
    model, batches, loss_budget: float = 0.005, criterion: str = "confidence", thresholds=None, apply: bool = True
) -> Calibration:
    """The threshold of `criterion` with the fewest mean iterations whose held-out loss is at most (1 + loss_budget)
    times the full-depth loss. With `apply`, it is written to `model.config` (loop_exit_criterion,
    loop_exit_threshold), so save_pretrained ships it; no threshold within the budget leaves the exit off."""
    if not (isinstance(loss_budget, (int, float)) and 0 <= loss_budget and math.isfinite(loss_budget)):
        raise ValueError(
            f"`loss_budget` must be a finite relative loss increase >= 0 (0.005 = 0.5 %), got {loss_budget!r}."
        )
    if criterion not in DEFAULT_THRESHOLDS:
        raise ValueError(f"`criterion` must be one of {', '.join(DEFAULT_THRESHOLDS)}, got {criterion!r}.")
    if criterion == "kl" and apply and model.config.use_cache:
        raise ValueError(
            "The 'kl' exit runs only without a cache, so it cannot be applied to a model with use_cache=True: "
            "calibrate it with apply=False and pass loop_exit_criterion='kl', loop_exit_threshold=<threshold> "
            "with use_cache=False to the forward or generate."
        )
    batches = list(batches)
    full = evaluate_exit(model, batches)
    curve = exit_curve(model, batches, criterion, thresholds)
    within = [point for point in curve if point.loss <= full.loss * (1 + loss_budget)]
    chosen = min(within, key=lambda point: point.mean_iterations) if within else full
    if apply:
        model.config.loop_exit_criterion = criterion
        model.config.loop_exit_threshold = chosen.threshold
    return Calibration(criterion, chosen.threshold, loss_budget, full, chosen, curve)


__all__ = [
    "Calibration",
    "DEFAULT_THRESHOLDS",
    "ExitPoint",
    "calibrate_exit_threshold",
    "evaluate_exit",
    "exit_curve",
    "fixed_depth_curve",
]
