"""Training the latent loop (DESIGN §6): the sampled depth per step and the confidence head's targets and loss.

Remote code: the loop model's forward samples its depth here while training.
"""

import math

import torch
from torch.nn import functional as F

IGNORE_INDEX = -100


def sample_iterations(config) -> int:
    """Core iterations for one training step, by `config.loop_iteration_sampling`.

    "lognormal_poisson" (Huginn): tau ~ N(log(mean) - sigma^2 / 2, sigma), r = 1 + Poisson(e^tau), clipped to
    loop_max_iterations; e^tau has mean `mean`, so r averages about mean + 1 before clipping (mean: loop_sampling_mean,
    default loop_max_iterations: most steps train full depth, some shallower ones teach early states to be useful).
    "fixed": loop_max_iterations. "loss_triggered" (the published rule, "iterate more while the loss is high"):
    loop_max_iterations, of which the loop runs only the first unless this batch's token loss after it exceeds
    `loop_loss_trigger` (decided in the forward: `SlamLoopModel._loop`). Draws use torch's
    global generator, so `transformers.set_seed` / Trainer's seed make them reproducible.
    """
    maximum = config.loop_max_iterations
    if config.loop_iteration_sampling in ("fixed", "loss_triggered") or maximum == 1:
        return maximum
    mean = config.loop_sampling_mean or maximum
    sigma = config.loop_sampling_sigma
    tau = torch.normal(math.log(mean) - sigma**2 / 2, sigma, size=(1,))
    return int(min(1 + torch.poisson(tau.exp()).item(), maximum))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: (B, L, V), (B, L) -> (B, L) float32 (0 where there is no label:
    the last position and labels of -100)."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    losses = F.cross_entropy(
        logits.float().flatten(0, 1), shifted.flatten(), reduction="none", ignore_index=IGNORE_INDEX
    )
    return losses.view(labels.shape)


def confidence_targets(config, losses: list, full_depth: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of the confidence head after each iteration, from the detached token losses l_1..l_r of one step:
    (targets (r, B, L), weight (r,) of each iteration: 0 where the target is unknown).

    "improvement": 1 when no later iteration lowers the token's loss by more than `loop_confidence_margin`; the
    last iteration's target is 1 only at full depth (a shallower step cannot tell whether more would help).
    "absolute" (the description's rule): clamp(1 - l_i / 2, 0, 1), known at every iteration.
    """
    stacked = torch.stack(losses)  # (r, B, L)
    weight = torch.ones(len(losses), device=stacked.device)
    if config.loop_confidence_target == "absolute":
        return (1 - stacked / 2).clamp(0, 1), weight
    later_best = torch.flip(torch.cummin(torch.flip(stacked, [0]), dim=0).values, [0])  # min over j >= i
    later_best = torch.cat((later_best[1:], stacked[-1:]), dim=0)  # min over j > i (the last: itself)
    targets = (stacked - later_best <= config.loop_confidence_margin).to(stacked.dtype)
    if not full_depth:
        weight[-1] = 0
    return targets, weight


def confidence_loss(config, confidence_logits, losses, labels, full_depth: bool, num_items_in_batch=None):
    """Binary cross-entropy of the confidence head, mean over labelled tokens and iterations; with
    `num_items_in_batch` (Trainer's labelled tokens of the whole accumulated batch) the sum over this micro-batch
    divided by those tokens times the iterations, so accumulated micro-batches give the big batch's loss."""
    targets, weight = confidence_targets(config, list(losses), full_depth)
    logits = torch.stack(confidence_logits).float()  # (r, B, L)
    labelled = F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False).to(logits.dtype)  # (B, L)
    per_token = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
    weights = weight[:, None, None] * labelled[None]
    per_token = per_token.masked_fill(weights == 0, 0.0)
    if num_items_in_batch is not None:
        return (per_token * weights).sum() / (weight.sum() * num_items_in_batch).clamp(min=1)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


__all__ = ["confidence_loss", "confidence_targets", "sample_iterations", "token_losses"]
