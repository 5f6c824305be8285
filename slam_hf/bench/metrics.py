"""What the metrics of a bench run mean and how they read: labels, units, better direction, and which models a
table or plot shows (ranking, incomplete budgets, models lacking a metric)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

INCOMPLETE_MARK = "†"  # marks a model that trained on less than the planned budget


class Unit(NamedTuple):
    """How a metric's numbers are shown. `scale(mean, std)` -> (divisor, suffix, decimals) chosen from the mean, so
    the mean and its ± std share one scale."""

    words: str  # the unit in words, for the metric definitions
    scale: Callable[[float, float | None], tuple[float, str, int]]
    thousands: bool = False  # group digits (12,345) in plain numbers


def _is_whole(value: float | None) -> bool:
    return value is None or float(value).is_integer()


def _count_scale(mean, std):
    return 1, "", 0 if _is_whole(mean) and _is_whole(std) else 1


def _params_scale(mean, std):
    size = abs(mean)
    if size >= 1e9:
        return 1e9, "B", 2
    if size >= 1e6:
        return 1e6, "M", 2
    if size >= 1e3:
        return 1e3, "K", 1
    return 1, "", 0


def _bytes_scale(mean, std):
    size = abs(mean)
    if size < 1024:
        return 1, " B", 0 if _is_whole(mean) and _is_whole(std) else 1
    if size < 1024**2:
        return 1024, " KiB", 1
    if size < 1024**3:
        return 1024**2, " MiB", 1
    return 1024**3, " GiB", 2


def _mib_scale(mean, std):
    # Peak memory always in MiB, so a column compares at a glance; small values get more decimals.
    return 1024**2, " MiB", 2 if abs(mean) < 10 * 1024**2 else 1


def _perplexity_scale(mean, std):
    size = abs(mean)
    return 1, "", 2 if size < 100 else 1 if size < 1e3 else 0


def _rate_scale(mean, std):
    return 1, "", 0 if abs(mean) >= 100 else 1


def _milliseconds_scale(mean, std):
    size = abs(mean)
    return 1, " ms", 2 if size < 10 else 1 if size < 100 else 0


def _significant_scale(mean, std, digits=3):
    if mean == 0 or not math.isfinite(mean):
        return 1, "", digits - 1
    return 1, "", min(8, max(0, digits - 1 - math.floor(math.log10(abs(mean)))))


COUNT = Unit("count", _count_scale, thousands=True)
PARAMS = Unit("parameters", _params_scale)
BYTES = Unit("bytes", _bytes_scale, thousands=True)
MEMORY = Unit("bytes, shown in MiB", _mib_scale, thousands=True)
LOSS = Unit("nats per token", lambda mean, std: (1, "", 3))
PERPLEXITY = Unit("exp(nats per token)", _perplexity_scale)
FRACTION = Unit("fraction, shown in %", lambda mean, std: (0.01, "%", 1))
RATE = Unit("tokens per second", _rate_scale, thousands=True)
MILLISECONDS = Unit("milliseconds", _milliseconds_scale)
PLAIN = Unit("number", _significant_scale)


class MetricSpec(NamedTuple):
    label: str
    unit: Unit
    higher_is_better: bool | None  # None: neither (a size, not a score)
    definition: str


# name: (label, unit, higher_is_better)
_SPECS = {
    "total_parameters": ("total parameters", PARAMS, None),
    "active_parameters": ("active parameters", PARAMS, None),
    "train_peak_memory_bytes": ("train peak memory", MEMORY, False),
    "inference_peak_memory_bytes": ("inference peak memory", MEMORY, False),
    "heldout_loss": ("held-out loss", LOSS, False),
    "heldout_loss_second_half": ("held-out loss, 2nd half", LOSS, False),
    "heldout_perplexity": ("perplexity", PERPLEXITY, False),
    "heldout_top1_accuracy": ("top-1 accuracy", FRACTION, True),
    "train_tokens_per_second": ("train tokens/s", RATE, True),
    "inference_latency_ms_median": ("latency", MILLISECONDS, False),
    "generation_tokens_per_second": ("generation tokens/s", RATE, True),
    "kv_cache_bytes_per_token": ("cache bytes/token", BYTES, False),
    "cache_fixed_bytes": ("fixed cache", BYTES, False),
    "loss_spikes": ("loss spikes", COUNT, False),
    "loss_curve_roughness": ("loss-curve roughness", PLAIN, False),
}
_DEFINITIONS = {
    "total_parameters": "Every parameter of the model (`num_parameters()`), embeddings included.",
    "active_parameters": (
        "Parameters that take part in processing one token; smaller than the total only where a layer routes tokens "
        "to a subset of its experts."
    ),
    "train_peak_memory_bytes": (
        "Peak memory while building and training the model at the benchmark's batch size and sequence length, above "
        "the process's baseline just before the model was built (CUDA: allocator peak; CPU: peak resident set)."
    ),
    "inference_peak_memory_bytes": (
        "Peak memory of the inference measurements (latency, generation, cache size), measured like the training peak."
    ),
    "heldout_loss": "Mean next-token cross-entropy (nats per token) on the held-out works after training.",
    "heldout_loss_second_half": (
        "Held-out cross-entropy on the second half of each row only (every prediction has at least half a row of "
        "context). SLAM v3 (prefix -> continuation) scores only these tokens, so this column compares every model "
        "on the same predictions."
    ),
    "heldout_perplexity": "exp(held-out loss).",
    "heldout_top1_accuracy": (
        "Share of held-out tokens for which the most likely predicted token is the actual next token."
    ),
    "train_tokens_per_second": (
        "Training tokens per second of optimizer-step time (forward, backward, clipping, optimizer and scheduler "
        "steps), over the whole run."
    ),
    "inference_latency_ms_median": (
        "Median time of one forward pass over one full-length sequence (batch 1, no cache), after warm-up."
    ),
    "generation_tokens_per_second": (
        "New tokens per second of greedy generation with the cache (batch 1, fixed prompt and output length)."
    ),
    "kv_cache_bytes_per_token": "Growth of the generation cache per token of context.",
    "cache_fixed_bytes": "Part of the generation cache that does not grow with the context length.",
    "loss_spikes": "Training steps whose loss exceeds 1.3 × the median of the 10 steps before.",
    "loss_curve_roughness": (
        "Standard deviation of the step-to-step loss changes over the second half of training, divided by the mean "
        "loss of that half (0 = smooth)."
    ),
}
METRICS: dict[str, MetricSpec] = {name: MetricSpec(*spec, _DEFINITIONS[name]) for name, spec in _SPECS.items()}


def metric_spec(name: str) -> MetricSpec:
    """The spec of a metric; names outside METRICS get a unit guessed from the name, and no direction."""
    if name in METRICS:
        return METRICS[name]
    if name.endswith("_bytes") or "_bytes_" in name:
        unit = BYTES
    elif name.endswith("_ms") or "_ms_" in name:
        unit = MILLISECONDS
    elif name.endswith("_per_second"):
        unit = RATE
    elif "accuracy" in name:
        unit = FRACTION
    else:
        unit = PLAIN
    return MetricSpec(name.replace("_", " "), unit, None, "No definition recorded in slam_hf.bench.metrics.METRICS.")


def is_measured(metric: Mapping | None) -> bool:
    return isinstance(metric, Mapping) and "mean" in metric


def _number(value: float, decimals: int, thousands: bool) -> str:
    text = f"{value:,.{decimals}f}" if thousands else f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text.replace(",", "")) == 0 else text  # no "-0.0" from rounding


def format_measured(name: str, metric: Mapping) -> str:
    """'mean ± std unit' of a measured METRIC (the ± part only where n > 1 and std is not zero)."""
    unit = metric_spec(name).unit
    mean, std = metric["mean"], metric.get("std")
    divisor, suffix, decimals = unit.scale(mean, std)
    text = _number(mean / divisor, decimals, unit.thousands)
    if metric.get("n", 1) > 1 and std:
        text += " ± " + _number(std / divisor, decimals, unit.thousands)
    return text + suffix


# --------------------------------------------------------------------------------------------------------------
# which models, in which order


def is_incomplete(model: Mapping) -> bool:
    return not model["budget"]["complete"]


def display_label(model: Mapping, mark: str = INCOMPLETE_MARK) -> str:
    return model["label"] + (f" {mark}" if is_incomplete(model) else "")


def ranking_metric(results: Mapping) -> str:
    """The loss that ranks the models: the second-half held-out loss when every model has it (the one column in
    which a prefix -> continuation model such as SLAM v3 and the causal models score the same predictions), else
    the held-out loss."""
    if all("heldout_loss_second_half" in model["metrics"] for model in results["models"]):
        return "heldout_loss_second_half"
    return "heldout_loss"


def sorted_models(results: Mapping) -> list[Mapping]:
    """Models by `ranking_metric`, lowest first; models without it measured last, in their given order."""
    metric = ranking_metric(results)

    def key(item):
        index, model = item
        loss = model["metrics"].get(metric)
        return (0, loss["mean"], index) if is_measured(loss) else (1, 0.0, index)

    return [model for _, model in sorted(enumerate(results["models"]), key=key)]


def quality_points(
    results: Mapping, x_metric: str = "train_tokens_per_second", y_metric: str = "heldout_perplexity"
) -> tuple[list[Mapping], dict[str, str]]:
    """The models that have both metrics measured (in results order), and {label: why not} for the others."""
    plotted, not_plotted = [], {}
    for model in results["models"]:
        reasons = []
        for name in (x_metric, y_metric):
            metric = model["metrics"].get(name)
            if metric is None:
                reasons.append(f"no {name}")
            elif not is_measured(metric):
                reasons.append(f"{name} not measured: {metric['not_measured']}")
        if reasons:
            not_plotted[model["label"]] = "; ".join(reasons)
        else:
            plotted.append(model)
    return plotted, not_plotted
