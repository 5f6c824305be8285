"""The cross-entropy method over expert mixing weights: Transformer²'s few-shot search (DESIGN §7).

`cem_search(score_fn, num_experts)` maximises a score of the mixing weights α; `SelfAdaptiveModel.fit_mixture`
(slam_hf.adapters.transformer2) uses it with the log-likelihood of a few (prompt, answer) examples. Progress (the
best score after each iteration) goes to this module's logger at INFO level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

logger = logging.getLogger(__name__)


@dataclass
class CEMResult:
    """Outcome of `cem_search`: the best weights seen, their score, and the best score after each iteration."""

    alphas: torch.Tensor
    score: float
    best_scores: list[float]
    mean: torch.Tensor  # the search distribution's final mean
    std: torch.Tensor  # and standard deviation


def cem_search(
    score_fn: Callable[[torch.Tensor], float],
    num_experts: int,
    *,
    iterations: int = 10,
    population_size: int = 16,
    num_elites: int = 6,
    bounds: tuple[float, float] = (0.0, 1.0),
    init_mean: Optional[Union[Sequence[float], torch.Tensor]] = None,
    init_std: Optional[float] = None,
    smoothing: float = 0.3,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
) -> CEMResult:
    """Maximise `score_fn(alphas)` over mixing weights with the cross-entropy method (Transformer²'s few-shot search).

    Each iteration samples `population_size` weight vectors from a diagonal Gaussian (clamped to `bounds`), scores
    them, and moves the Gaussian towards the mean and spread of the `num_elites` best; `smoothing` is the share
    of the old mean and spread kept each time (like the released code's EMA option; without it a small lucky elite
    set tends to collapse the spread before the optimum is reached). The first population contains the start mean
    (uniform 1/K weights by default), so the result never scores below it. `init_std` defaults to half the width
    of `bounds`. Sampling uses `generator`, or a `torch.Generator` seeded with `seed`, so a search repeats
    exactly. `score_fn` gets a float64 tensor (num_experts,) and returns a number, higher is better.
    """
    _check_search_sizes(num_experts, iterations, population_size, num_elites)
    low, high = _checked_bounds(bounds)
    mean, std = _start_distribution(num_experts, low, high, init_mean, init_std)
    if not 0 <= smoothing < 1:
        raise ValueError(f"cem_search(smoothing={smoothing!r}) must lie in [0, 1): the share of the old mean kept.")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)

    best_alphas, best_score, best_scores = mean.clone(), -math.inf, []
    for iteration in range(iterations):
        noise = torch.randn((population_size, num_experts), generator=generator, dtype=torch.float64)
        population = (mean + std * noise).clamp(low, high)
        if iteration == 0:
            population[0] = mean  # the start point is always scored
        scores = torch.tensor([_checked_score(score_fn, candidate) for candidate in population], dtype=torch.float64)
        top = int(scores.argmax())
        if scores[top] > best_score:
            best_alphas, best_score = population[top].clone(), float(scores[top])
        best_scores.append(best_score)
        logger.info("CEM iteration %d/%d: best score %.6g", iteration + 1, iterations, best_score)
        elites = population[scores.topk(num_elites).indices]
        # Smoothing keeps part of the old distribution, so a lucky small elite set cannot collapse it at once.
        mean = smoothing * mean + (1 - smoothing) * elites.mean(0)
        std = smoothing * std + (1 - smoothing) * elites.std(0, unbiased=False)
    return CEMResult(
        alphas=best_alphas.float(), score=best_score, best_scores=best_scores, mean=mean.float(), std=std.float()
    )


def _check_search_sizes(num_experts, iterations, population_size, num_elites) -> None:
    if not (isinstance(num_experts, int) and num_experts >= 1):
        raise ValueError(f"cem_search(num_experts={num_experts!r}) must be an integer >= 1.")
    for name, value in (("iterations", iterations), ("population_size", population_size), ("num_elites", num_elites)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"cem_search({name}={value!r}) must be an integer >= 1.")
    if num_elites > population_size:
        raise ValueError(f"cem_search(num_elites={num_elites}) cannot exceed population_size={population_size}.")


def _checked_bounds(bounds) -> tuple[float, float]:
    low, high = (float(bound) for bound in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"cem_search(bounds={bounds!r}) must be two finite numbers (low, high) with low < high.")
    return low, high


def _start_distribution(num_experts: int, low: float, high: float, init_mean, init_std):
    """The first Gaussian's mean (clamped to the bounds) and standard deviation, float64 (num_experts,)."""
    if init_mean is None:
        mean = torch.full((num_experts,), 1.0 / num_experts, dtype=torch.float64)
    else:
        mean = torch.as_tensor(init_mean, dtype=torch.float64).flatten()
        if mean.numel() != num_experts or not torch.isfinite(mean).all():
            raise ValueError(f"cem_search(init_mean=...) must hold {num_experts} finite numbers, got {init_mean!r}.")
    mean = mean.clamp(low, high)
    std = torch.full((num_experts,), (high - low) / 2 if init_std is None else float(init_std), dtype=torch.float64)
    if not (torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"cem_search(init_std={init_std!r}) must be a finite number > 0.")
    return mean, std


def _checked_score(score_fn: Callable, alphas: torch.Tensor) -> float:
    value = score_fn(alphas.clone())
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise ValueError(
            f"score_fn returned {value!r} for alphas {[round(a, 4) for a in alphas.tolist()]}: it must return a "
            "finite number (higher is better)."
        )
    return score
