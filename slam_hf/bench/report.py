"""Reports of `slam-hf bench`: validate a results dict, render a Markdown leaderboard and draw PNG plots.

`slam_hf.bench.runner` measures; this module only reads what it measured. Everything here works from the results dict
alone (or a `results.json` written by `write_reports`), so a run can be re-rendered without re-running it:

    python -m slam_hf.bench.report outputs/bench/results.json --output-dir outputs/bench

The results schema ("slam_hf.bench/1"), checked by `validate_results`:

    {
      "schema": "slam_hf.bench/1",
      "title": str, "created": ISO-8601 time str, "command": str (reproduces the run), "duration_seconds": float,
      "caveats": [str, ...] (optional: what a reader must know about how the run went),
      "machine": {"description": str, "device": "cpu" | "cuda", "torch_threads": int, ...},
      "software": {"python": str, "torch": str, "transformers": str, "slam_hf": str, ...},
      "settings": {
        "shape": {"hidden_size": int, "num_attention_heads": int, "intermediate_size": int,
                  "num_hidden_layers": int, ...},
        "vocab_size": int, "batch_size": int, "sequence_length": int, "learning_rate": float,
        "optimizer": str, "scheduler": str, "seeds": [int, ...],
        "train_tokens": int (the planned budget per model and seed), "epochs": float, "eval_tokens": int,
        "data": str, ...
      },
      "models": [
        {"name": str (unique), "label": str, "class": str, "family": "slam" | "baseline", "notes": str,
         "budget": {"train_tokens": int, "steps": int, "complete": bool, "reason": str | null},
         "metrics": {<metric name>: METRIC, ...},
         "curves": {"<seed>": {"train": [[step, loss], ...], "eval": [[step, loss], ...]}, ...}},
        ...
      ]
    }

    METRIC = {"mean": float, "std": float | null, "values": [float, one per seed], "n": int}   # measured
           | {"not_measured": str}                                                         # the reason

Rules beyond the types:
- every metric is a METRIC dict: a bare number (in particular a 0 standing in for "not measured") is rejected;
- a measured metric has n == len(values) >= 1, finite values, mean == fmean(values) and std == the sample
  standard deviation (statistics.stdev, ddof=1) of the values, or null when n == 1; a value that is not finite
  (a diverged run) is not a measurement: report it as {"not_measured": reason};
- a budget with "complete": false carries a non-empty reason, and "complete": true is only allowed when the model
  trained within one step of the planned settings.train_tokens;
- curve steps are integers in increasing order; a curve loss may be null or not finite (the step where a run
  diverged): plots leave such points out, and results.json stores them as null so that it stays strict JSON.
Keys not listed are allowed and shown generically (machine, software, settings, shape, and unknown metric names).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from PIL import Image, ImageDraw, ImageFont, features

SCHEMA = "slam_hf.bench/1"
FAMILIES = ("slam", "baseline")
DEVICES = ("cpu", "cuda")
INCOMPLETE_MARK = "†"  # Markdown; Pillow's default font has no dagger glyph, so the plots spell it out
PLOT_INCOMPLETE_MARK = "(incomplete budget)"


# --------------------------------------------------------------------------------------------------------------
# units and the metric table


class Unit(NamedTuple):
    """How a metric's numbers are shown. `scale(mean, std)` -> (divisor, suffix, decimals) chosen from the mean, so
    the mean and its ± std share one scale."""

    words: str  # the unit in words, for the metric definitions
    scale: Callable[[float, float | None], tuple[float, str, int]]
    thousands: bool = False  # group digits (12,345) in plain numbers


def _is_whole(value: float | None) -> bool:
    return value is None or float(value).is_integer()


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


def _significant_decimals(mean, digits=3):
    if mean == 0 or not math.isfinite(mean):
        return digits - 1
    return min(8, max(0, digits - 1 - math.floor(math.log10(abs(mean)))))


COUNT = Unit("count", lambda mean, std: (1, "", 0 if _is_whole(mean) and _is_whole(std) else 1), thousands=True)
PARAMS = Unit("parameters", _params_scale)
BYTES = Unit("bytes", _bytes_scale, thousands=True)
MEMORY = Unit("bytes, shown in MiB", _mib_scale, thousands=True)
LOSS = Unit("nats per token", lambda mean, std: (1, "", 3))
PERPLEXITY = Unit(
    "exp(nats per token)", lambda mean, std: (1, "", 2 if abs(mean) < 100 else 1 if abs(mean) < 1e3 else 0)
)
FRACTION = Unit("fraction, shown in %", lambda mean, std: (0.01, "%", 1))
RATE = Unit("tokens per second", lambda mean, std: (1, "", 0 if abs(mean) >= 100 else 1), thousands=True)
MILLISECONDS = Unit("milliseconds", lambda mean, std: (1, " ms", 2 if abs(mean) < 10 else 1 if abs(mean) < 100 else 0))
PLAIN = Unit("number", lambda mean, std: (1, "", _significant_decimals(mean)))


class MetricSpec(NamedTuple):
    label: str
    unit: Unit
    higher_is_better: bool | None  # None: neither (a size, not a score)
    definition: str


METRICS: dict[str, MetricSpec] = {
    "total_parameters": MetricSpec(
        "total parameters", PARAMS, None, "Every parameter of the model (`num_parameters()`), embeddings included."
    ),
    "active_parameters": MetricSpec(
        "active parameters", PARAMS, None,
        "Parameters that take part in processing one token; smaller than the total only where a layer routes tokens "
        "to a subset of its experts.",
    ),
    "train_peak_memory_bytes": MetricSpec(
        "train peak memory", MEMORY, False,
        "Peak memory while building and training the model at the benchmark's batch size and sequence length, above "
        "the process's baseline just before the model was built (CUDA: allocator peak; CPU: peak resident set).",
    ),
    "inference_peak_memory_bytes": MetricSpec(
        "inference peak memory", MEMORY, False,
        "Peak memory of the inference measurements (latency, generation, cache size), measured like the training peak.",
    ),
    "heldout_loss": MetricSpec(
        "held-out loss", LOSS, False,
        "Mean next-token cross-entropy (nats per token) on the held-out works after training.",
    ),
    "heldout_loss_second_half": MetricSpec(
        "held-out loss, 2nd half", LOSS, False,
        "Held-out cross-entropy on the second half of each row only (every prediction has at least half a row of "
        "context). SLAM v3 (prefix -> continuation) scores only these tokens, so this column compares every model "
        "on the same predictions.",
    ),
    "heldout_perplexity": MetricSpec("perplexity", PERPLEXITY, False, "exp(held-out loss)."),
    "heldout_top1_accuracy": MetricSpec(
        "top-1 accuracy", FRACTION, True,
        "Share of held-out tokens for which the most likely predicted token is the actual next token.",
    ),
    "train_tokens_per_second": MetricSpec(
        "train tokens/s", RATE, True,
        "Training tokens per second of optimizer-step time (forward, backward, clipping, optimizer and scheduler "
        "steps), over the whole run.",
    ),
    "inference_latency_ms_median": MetricSpec(
        "latency", MILLISECONDS, False,
        "Median time of one forward pass over one full-length sequence (batch 1, no cache), after warm-up.",
    ),
    "generation_tokens_per_second": MetricSpec(
        "generation tokens/s", RATE, True,
        "New tokens per second of greedy generation with the cache (batch 1, fixed prompt and output length).",
    ),
    "kv_cache_bytes_per_token": MetricSpec(
        "cache bytes/token", BYTES, False, "Growth of the generation cache per token of context."
    ),
    "cache_fixed_bytes": MetricSpec(
        "fixed cache", BYTES, False, "Part of the generation cache that does not grow with the context length."
    ),
    "loss_spikes": MetricSpec(
        "loss spikes", COUNT, False,
        "Training steps whose loss exceeds 1.3 × the median of the 10 steps before.",
    ),
    "loss_curve_roughness": MetricSpec(
        "loss-curve roughness", PLAIN, False,
        "Standard deviation of the step-to-step loss changes over the second half of training, divided by the mean "
        "loss of that half (0 = smooth).",
    ),
}  # fmt: skip


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
    return MetricSpec(name.replace("_", " "), unit, None, "No definition recorded in slam_hf.bench.report.METRICS.")


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
# validation


def _fail(path: str, problem: str):
    raise ValueError(f"bench results: {path} {problem}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(container: Mapping, key: str, path: str, check: Callable[[Any], bool], expected: str):
    full = f"{path}.{key}" if path else key
    if key not in container:
        _fail(full, f"is missing (expected {expected})")
    value = container[key]
    if not check(value):
        _fail(full, f"is {value!r}, expected {expected}")
    return value


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _close(a: float, b: float, scale: float) -> bool:
    # Values may have been rounded when stored; a relative tolerance plus one relative to the values' magnitude
    # (for means near zero) accepts that and still catches a mean that belongs to other values.
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6 * scale + 1e-12)


def validate_metric(metric, path: str) -> None:
    """Checks one METRIC (module docstring); raises ValueError naming `path` and what is wrong."""
    if _is_number(metric):
        _fail(path, f"is the bare number {metric!r}: a metric is {{'mean', 'std', 'values', 'n'}} or "
                    f"{{'not_measured': reason}}, and a 0 never stands in for 'not measured'")  # fmt: skip
    if not isinstance(metric, Mapping):
        _fail(path, f"is {metric!r}, expected {{'mean', 'std', 'values', 'n'}} or {{'not_measured': reason}}")
    if "not_measured" in metric:
        if set(metric) != {"not_measured"}:
            _fail(path, f"mixes 'not_measured' with {sorted(set(metric) - {'not_measured'})}")
        if not _nonempty_str(metric["not_measured"]):
            _fail(f"{path}.not_measured", "must be the reason, a non-empty string")
        return
    missing = [key for key in ("mean", "std", "values", "n") if key not in metric]
    if missing:
        _fail(path, f"lacks {missing}: a measured metric has 'mean', 'std', 'values' and 'n'")
    values, n = metric["values"], metric["n"]
    if not isinstance(values, list) or not values:
        _fail(f"{path}.values", f"is {values!r}, expected a non-empty list with one number per seed")
    for i, value in enumerate(values):
        if not _is_number(value):
            _fail(f"{path}.values[{i}]", f"is {value!r}, expected a number")
        if not math.isfinite(value):
            _fail(f"{path}.values[{i}]", f"is {value!r}: not a measurement; report {{'not_measured': reason}}")
    if not _is_int(n) or n != len(values):
        _fail(f"{path}.n", f"is {n!r} but there are {len(values)} values")
    mean, std = metric["mean"], metric["std"]
    scale = max(abs(v) for v in values)
    if not _is_number(mean) or not math.isfinite(mean):
        _fail(f"{path}.mean", f"is {mean!r}, expected a finite number")
    if not _close(mean, statistics.fmean(values), scale):
        _fail(f"{path}.mean", f"is {mean!r} but the mean of values {values} is {statistics.fmean(values)!r}")
    if std is not None:
        if not _is_number(std) or not math.isfinite(std) or std < 0:
            _fail(f"{path}.std", f"is {std!r}, expected a non-negative number or null")
        expected = statistics.stdev(values) if n > 1 else 0.0
        if not _close(std, expected, scale):
            _fail(f"{path}.std", f"is {std!r} but the sample standard deviation of values {values} is {expected!r}")


def _validate_curve(points, path: str) -> None:
    if not isinstance(points, list):
        _fail(path, f"is {type(points).__name__}, expected a list of [step, loss]")
    previous = None
    for i, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            _fail(f"{path}[{i}]", f"is {point!r}, expected [step, loss]")
        step, loss = point
        if not _is_int(step) or step < 0:
            _fail(f"{path}[{i}]", f"has step {step!r}, expected a non-negative integer")
        if previous is not None and step <= previous:
            _fail(f"{path}[{i}]", f"has step {step} after step {previous}: steps must increase")
        if loss is not None and not _is_number(loss):
            _fail(f"{path}[{i}]", f"has loss {loss!r}, expected a number (or null where the run diverged)")
        previous = step


def validate_results(results) -> None:
    """Raises ValueError naming the first field (in document order) that breaks the schema in the module docstring."""
    if not isinstance(results, Mapping):
        _fail("<results>", f"is {type(results).__name__}, expected a dict")
    if results.get("schema") != SCHEMA:
        _fail("schema", f"is {results.get('schema')!r}, expected {SCHEMA!r}")
    _require(results, "title", "", _nonempty_str, "a non-empty string")
    created = _require(results, "created", "", lambda v: isinstance(v, str), "an ISO-8601 time string")
    try:
        datetime.datetime.fromisoformat(created)
    except ValueError:
        _fail("created", f"is {created!r}, expected an ISO-8601 time string")
    _require(results, "command", "", lambda v: isinstance(v, str), "a string (the command that reproduces the run)")
    _require(results, "duration_seconds", "", lambda v: _is_number(v) and v >= 0, "a non-negative number")
    if "caveats" in results:
        _require(results, "caveats", "", lambda v: isinstance(v, list) and all(map(_nonempty_str, v)),
                 "a list of non-empty strings (what a reader must know about how the run went)")  # fmt: skip

    machine = _require(results, "machine", "", lambda v: isinstance(v, Mapping), "a dict")
    _require(machine, "description", "machine", _nonempty_str, "a non-empty string")
    _require(machine, "device", "machine", lambda v: v in DEVICES, f"one of {DEVICES}")
    _require(machine, "torch_threads", "machine", lambda v: _is_int(v) and v > 0, "a positive integer")
    software = _require(results, "software", "", lambda v: isinstance(v, Mapping), "a dict")
    for key in ("python", "torch", "transformers", "slam_hf"):
        _require(software, key, "software", _nonempty_str, "a version string")

    settings = _require(results, "settings", "", lambda v: isinstance(v, Mapping), "a dict")
    shape = _require(settings, "shape", "settings", lambda v: isinstance(v, Mapping), "a dict")
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"):
        _require(shape, key, "settings.shape", lambda v: _is_int(v) and v > 0, "a positive integer")
    positive_int = (lambda v: _is_int(v) and v > 0, "a positive integer")
    for key, (check, expected) in {
        "vocab_size": positive_int, "batch_size": positive_int, "sequence_length": positive_int,
        "learning_rate": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "optimizer": (_nonempty_str, "a non-empty string"), "scheduler": (_nonempty_str, "a non-empty string"),
        "seeds": (lambda v: isinstance(v, list) and v and all(_is_int(s) for s in v) and len(set(v)) == len(v),
                  "a non-empty list of distinct integers"),
        "train_tokens": positive_int, "epochs": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
        "eval_tokens": positive_int, "data": (_nonempty_str, "a non-empty string"),
    }.items():  # fmt: skip
        _require(settings, key, "settings", check, expected)
    one_step = settings["batch_size"] * settings["sequence_length"]

    models = _require(results, "models", "", lambda v: isinstance(v, list) and v, "a non-empty list")
    names = set()
    for index, model in enumerate(models):
        path = f"models[{index}]"
        if not isinstance(model, Mapping):
            _fail(path, f"is {type(model).__name__}, expected a dict")
        name = _require(model, "name", path, _nonempty_str, "a non-empty string")
        if name in names:
            _fail(f"{path}.name", f"{name!r} appears twice")
        names.add(name)
        path = f"models[{index}] ({name})"
        _require(model, "label", path, _nonempty_str, "a non-empty string")
        _require(model, "class", path, _nonempty_str, "a non-empty string")
        _require(model, "family", path, lambda v: v in FAMILIES, f"one of {FAMILIES}")
        _require(model, "notes", path, lambda v: isinstance(v, str), "a string")
        budget = _require(model, "budget", path, lambda v: isinstance(v, Mapping), "a dict")
        tokens = _require(budget, "train_tokens", f"{path}.budget", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        _require(budget, "steps", f"{path}.budget", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        complete = _require(budget, "complete", f"{path}.budget", lambda v: isinstance(v, bool), "true or false")
        _require(budget, "reason", f"{path}.budget", lambda v: v is None or isinstance(v, str), "a string or null")
        if not complete and not _nonempty_str(budget["reason"]):
            _fail(f"{path}.budget.reason", "must say why the model got less than the planned budget")
        if complete and tokens < settings["train_tokens"] - one_step:
            _fail(f"{path}.budget.complete", f"is true but the model trained {tokens:,} of the planned "
                                             f"{settings['train_tokens']:,} tokens")  # fmt: skip
        metrics = _require(model, "metrics", path, lambda v: isinstance(v, Mapping), "a dict of metric name -> METRIC")
        for metric_name, metric in metrics.items():
            validate_metric(metric, f"{path}.metrics.{metric_name}")
        curves = _require(model, "curves", path, lambda v: isinstance(v, Mapping), "a dict of seed -> curves")
        for seed, curve in curves.items():
            curve_path = f"{path}.curves[{seed!r}]"
            if not isinstance(seed, str) or not seed.lstrip("-").isdigit():
                _fail(curve_path, "is keyed by something that is not a seed (an integer as a string)")
            if not isinstance(curve, Mapping):
                _fail(curve_path, "is not a dict with 'train' and 'eval'")
            for kind in ("train", "eval"):
                if kind not in curve:
                    _fail(f"{curve_path}.{kind}", "is missing (an empty list if nothing was recorded)")
                _validate_curve(curve[kind], f"{curve_path}.{kind}")


# --------------------------------------------------------------------------------------------------------------
# Markdown


def _md(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _plain(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return json.dumps(value)
    if _is_int(value):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    return str(value)


def _incomplete(model: Mapping) -> bool:
    return not model["budget"]["complete"]


def _display_label(model: Mapping, mark: str = INCOMPLETE_MARK) -> str:
    return model["label"] + (f" {mark}" if _incomplete(model) else "")


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


@dataclass
class _Column:
    header: str
    metrics: tuple[str, ...]
    template: str = "{0}"  # how the metrics' formatted values combine into one cell


_STANDARD_COLUMNS = (
    _Column("params total / active", ("total_parameters", "active_parameters"), "{0} / {1}"),
    _Column("held-out loss", ("heldout_loss",)),
    _Column("held-out loss, 2nd half", ("heldout_loss_second_half",)),
    _Column("perplexity", ("heldout_perplexity",)),
    _Column("top-1 acc", ("heldout_top1_accuracy",)),
    _Column("train tokens/s", ("train_tokens_per_second",)),
    _Column("train peak mem", ("train_peak_memory_bytes",)),
    _Column("inference peak mem", ("inference_peak_memory_bytes",)),
    _Column("latency", ("inference_latency_ms_median",)),
    _Column("gen tokens/s", ("generation_tokens_per_second",)),
    _Column("cache bytes/token (+fixed)", ("kv_cache_bytes_per_token", "cache_fixed_bytes"), "{0} (+{1})"),
    _Column("stability: spikes / roughness", ("loss_spikes", "loss_curve_roughness"), "{0} / {1}"),
)


def _columns(results: Mapping) -> list[_Column]:
    known = {name for column in _STANDARD_COLUMNS for name in column.metrics}
    extra = []
    for model in results["models"]:
        extra += [name for name in model["metrics"] if name not in known and name not in extra]
    return list(_STANDARD_COLUMNS) + [_Column(metric_spec(name).label, (name,)) for name in extra]


class _Footnotes:
    """One numbered footnote per distinct not-measured reason, listing where it applies."""

    def __init__(self):
        self.numbers: dict[str, int] = {}
        self.uses: dict[str, dict[str, list[str]]] = {}  # reason -> model label -> metric names

    def mark(self, reason: str, model_label: str, metric_name: str) -> str:
        number = self.numbers.setdefault(reason, len(self.numbers) + 1)
        names = self.uses.setdefault(reason, {}).setdefault(model_label, [])
        if metric_name not in names:
            names.append(metric_name)
        return f"n/m [{number}]"

    def lines(self, metric_counts: Mapping[str, int]) -> list[str]:
        """`metric_counts`: model label -> how many metrics it carries, to say "every metric" when that is so."""
        lines = []
        for reason, number in self.numbers.items():
            uses = [f"{label}: every metric" if len(names) == metric_counts.get(label) and len(names) > 1
                    else f"{label}: " + ", ".join(f"`{n}`" for n in names)
                    for label, names in self.uses[reason].items()]  # fmt: skip
            lines.append(f"- **[{number}]** {_md(reason)} ({'; '.join(uses)})")
        return lines


def _best_means(results: Mapping, name: str) -> float | None:
    direction = metric_spec(name).higher_is_better
    means = [m["metrics"][name]["mean"] for m in results["models"] if is_measured(m["metrics"].get(name))]
    if direction is None or len(set(means)) < 2:  # nothing to single out when every model has the same value
        return None
    return max(means) if direction else min(means)


def _cell(model: Mapping, column: _Column, footnotes: _Footnotes, best: Mapping[str, float | None]) -> str:
    parts = []
    for name in column.metrics:
        metric = model["metrics"].get(name)
        if metric is None:
            parts.append("—")
        elif not is_measured(metric):
            parts.append(footnotes.mark(metric["not_measured"], model["label"], name))
        else:
            text = format_measured(name, metric)
            if len(column.metrics) == 1 and best.get(name) is not None and metric["mean"] == best[name]:
                text = f"**{text}**"
            parts.append(text)
    return column.template.format(*parts)


def _arrow(column: _Column) -> str:
    directions = {metric_spec(name).higher_is_better for name in column.metrics}
    if directions == {True}:
        return " ↑"
    if directions == {False}:
        return " ↓"
    return ""


def quality_points(results: Mapping, x_metric: str = "train_tokens_per_second",
                   y_metric: str = "heldout_perplexity") -> tuple[list[Mapping], dict[str, str]]:  # fmt: skip
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


def render_markdown(results: Mapping, *, figures: Mapping[str, str] | None = None) -> str:
    """The leaderboard page. `figures` maps "loss_curves" / "quality_vs_throughput" to image paths (relative to
    where the Markdown is written) to embed; `write_reports` passes the PNGs it draws."""
    validate_results(results)
    settings, machine, software = results["settings"], results["machine"], results["software"]
    shape = dict(settings["shape"])
    models = sorted_models(results)
    incomplete = [m for m in models if _incomplete(m)]
    out = [f"# {results['title']}", ""]

    # Header: what ran, where, with what, and how to run it again.
    shape_text = (
        f"{shape.pop('num_hidden_layers')} layers, hidden {shape.pop('hidden_size')}, "
        f"{shape.pop('num_attention_heads')} heads, intermediate {shape.pop('intermediate_size')}"
    )
    if shape:
        shape_text += "; " + ", ".join(f"{k} {_plain(v)}" for k, v in shape.items())
    extra_machine = {k: v for k, v in machine.items() if k not in ("description", "device", "torch_threads")}
    machine_text = f"{machine['description']} (device `{machine['device']}`, {machine['torch_threads']} torch threads)"
    if extra_machine:
        machine_text += "; " + "; ".join(f"{k}: {_plain(v)}" for k, v in extra_machine.items())
    budget_text = (
        f"{settings['train_tokens']:,} training tokens per model and seed "
        f"({settings['batch_size']} × {settings['sequence_length']} tokens per step, {settings['epochs']:.2f} epochs)"
    )
    if incomplete:
        budget_text += (f"; **{len(incomplete)} of {len(models)} models got less** "
                        f"(marked {INCOMPLETE_MARK}, see below the leaderboard)")  # fmt: skip
    listed = {"shape", "vocab_size", "batch_size", "sequence_length", "learning_rate", "optimizer", "scheduler",
              "seeds", "train_tokens", "epochs", "eval_tokens", "data"}  # fmt: skip
    rows = [
        ("Machine", machine_text),
        ("Software", ", ".join(f"{k} {v}" for k, v in software.items())),
        ("Model shape", f"{shape_text}; vocabulary {settings['vocab_size']:,}"),
        ("Budget", budget_text),
        (
            "Optimizer",
            f"{settings['optimizer']}; learning rate {settings['learning_rate']:g}; schedule {settings['scheduler']}",
        ),
        ("Seeds", ", ".join(str(s) for s in settings["seeds"])),
        ("Data", f"{settings['data']}; held-out evaluation on {settings['eval_tokens']:,} tokens"),
    ]
    rows += [(f"`{key}`", _plain(value)) for key, value in settings.items() if key not in listed]  # beyond the schema
    rows.append(("Run", f"{results['created']}, took {_duration(results['duration_seconds'])}"))
    out += ["| | |", "|---|---|"] + [f"| **{_md(k)}** | {_md(v)} |" for k, v in rows] + [""]
    if results.get("caveats"):
        out += ["**Caveats:**", ""] + [f"- {_md(caveat)}" for caveat in results["caveats"]] + [""]
    if results["command"]:
        out += ["Reproduce with:", "", "```bash", results["command"], "```", ""]

    # Leaderboard.
    columns = _columns(results)
    footnotes = _Footnotes()
    best = {name: _best_means(results, name) for column in columns for name in column.metrics}
    out += ["## Leaderboard", ""]
    out.append("| model | family | " + " | ".join(_md(c.header) + _arrow(c) for c in columns) + " |")
    out.append("|---|---|" + "|".join("--:" for _ in columns) + "|")
    for model in models:
        label = f"**{_md(model['label'])}**" + (f" {INCOMPLETE_MARK}" if _incomplete(model) else "")
        cells = [label, "SLAM" if model["family"] == "slam" else "baseline"]
        cells += [_md(_cell(model, column, footnotes, best)) for column in columns]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    seeds = len(settings["seeds"])
    spread = (
        f"Values are the mean ± sample standard deviation over {seeds} seeds (± left out where it is zero or there "
        "is one value)."
        if seeds > 1
        else "One seed, so no spread is shown: differences may be noise."
    )
    out.append(
        f"Sorted by {metric_spec(ranking_metric(results)).label}. {spread} ↓ lower is better, ↑ higher is better; "
        "**bold**: best in its column. "
        "n/m: not measured, for the reason in the numbered note; —: not reported."
    )
    out.append("")
    if incomplete:
        out.append(f"> **{INCOMPLETE_MARK} Incomplete budget: these models trained on less than the planned "
                   f"{settings['train_tokens']:,} tokens, so their quality numbers are not comparable with the "
                   "others'.**")  # fmt: skip
        for model in incomplete:
            budget = model["budget"]
            share = budget["train_tokens"] / settings["train_tokens"]
            out.append(f"> - **{_md(model['label'])}**: {budget['train_tokens']:,} tokens ({share:.1%}), "
                       f"{budget['steps']:,} steps: {_md(budget['reason'])}")  # fmt: skip
        out.append("")
    if footnotes.numbers:
        counts = {m["label"]: len(m["metrics"]) for m in models}
        out += ["Not measured:", ""] + footnotes.lines(counts) + [""]

    # Figures.
    figures = figures or {}
    if figures.get("loss_curves"):
        out += ["## Training curves", "", f"![Training loss per step]({figures['loss_curves']})", "",
                "Thin lines: each seed; thick lines: the mean over seeds (dashed for baselines); markers: held-out "
                "loss at evaluation steps.", ""]  # fmt: skip
    if figures.get("quality_vs_throughput"):
        _, not_plotted = quality_points(results)
        out += ["## Quality vs. training throughput", "",
                f"![Held-out perplexity vs. training tokens/s]({figures['quality_vs_throughput']})", ""]  # fmt: skip
        if not_plotted:
            out += ["Not plotted: " + "; ".join(f"{_md(k)} ({_md(v)})" for k, v in not_plotted.items()) + ".", ""]

    # Models.
    out += ["## Models", ""]
    for model in models:
        budget = model["budget"]
        line = (f"- **{_md(_display_label(model))}** (`{model['name']}`, `{model['class']}`, "
                f"{'SLAM' if model['family'] == 'slam' else 'baseline'})")  # fmt: skip
        if model["notes"].strip():
            line += f": {model['notes'].strip()}"
        if budget["complete"]:
            line += f" Trained {budget['train_tokens']:,} tokens in {budget['steps']:,} steps."
        else:
            line += (f" **Incomplete budget: {budget['train_tokens']:,} of {settings['train_tokens']:,} tokens, "
                     f"{budget['steps']:,} steps: {budget['reason'].rstrip('.')}.**")  # fmt: skip
        out.append(line)
    out.append("")

    # Definitions of every metric the models carry, in the table's order.
    present = [name for column in columns for name in column.metrics
               if any(name in m["metrics"] for m in results["models"])]  # fmt: skip
    out += ["## Metric definitions", ""]
    for name in present:
        spec = metric_spec(name)
        direction = {True: "higher is better", False: "lower is better", None: "no better direction"}
        out.append(f"- **{spec.label}** (`{name}`; {spec.unit.words}; {direction[spec.higher_is_better]}): "
                   f"{spec.definition}")  # fmt: skip
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# drawing: a small plotting layer on Pillow (matplotlib is not a dependency)

PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
MARKERS = ("circle", "square", "triangle", "diamond", "triangle_down", "hexagon", "star")
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
TEXT, MUTED, GRID, FRAME = (33, 33, 33), (96, 96, 96), (228, 228, 228), (120, 120, 120)
# Drawn at twice the final size and reduced (box filter) at the end: ImageDraw does not anti-alias lines or
# shapes. Without FreeType the default font is a fixed-size bitmap that would shrink, so then draw at 1x.
_SUPERSAMPLE = 2 if features.check("freetype2") else 1


def model_style(results: Mapping, model: Mapping) -> tuple[tuple[int, int, int], str]:
    """(color, marker) of a model, by its position in results["models"], so both plots agree."""
    index = next(i for i, m in enumerate(results["models"]) if m["name"] == model["name"])
    return PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]


def _tint(color, amount: float):
    """`color` blended towards white by `amount` (0 = unchanged)."""
    return tuple(round(c + (255 - c) * amount) for c in color)


@functools.lru_cache(maxsize=None)
def _font(pixels: int):
    try:
        return ImageFont.load_default(size=pixels)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font, one size
        return ImageFont.load_default()


class _Canvas:
    """An RGB image addressed in final-size pixels, drawn supersampled."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.image = Image.new("RGB", (width * _SUPERSAMPLE, height * _SUPERSAMPLE), WHITE)
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def px(value: float) -> int:
        return round(value * _SUPERSAMPLE)

    def text_size(self, text: str, size: int) -> tuple[float, float]:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=_font(size * _SUPERSAMPLE))
        return (right - left) / _SUPERSAMPLE, (bottom - top) / _SUPERSAMPLE

    def line_height(self, size: int) -> float:
        return self.text_size("Ag", size)[1]

    def text(self, x, y, text, size, fill=TEXT, align="left", valign="top"):
        """Text placed by its ink box; align: left/center/right of x, valign: top/middle/bottom of y."""
        font = _font(size * _SUPERSAMPLE)
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        ref_top, ref_bottom = self.draw.textbbox((0, 0), "Ag", font=font)[1::2]  # one baseline for every string
        w = right - left
        dx = {"left": 0, "center": -w / 2, "right": -w}[align]
        dy = {"top": 0, "middle": -(ref_bottom - ref_top) / 2, "bottom": -(ref_bottom - ref_top)}[valign]
        self.draw.text((self.px(x) + dx - left, self.px(y) + dy - ref_top), text, font=font, fill=fill)

    def vertical_text(self, x, y, text, size, fill=TEXT):
        """Text rotated to read bottom-up, centred on (x, y)."""
        font = _font(size * _SUPERSAMPLE)
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        strip = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(strip).text((2 - left, 2 - top), text, font=font, fill=255)
        strip = strip.rotate(90, expand=True)
        self.image.paste(fill, (self.px(x) - strip.width // 2, self.px(y) - strip.height // 2), strip)

    def wrap(self, text: str, size: int, width: float) -> list[str]:
        lines, current = [], ""
        for word in text.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and self.text_size(candidate, size)[0] > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        return lines + ([current] if current else [])

    def save(self, path) -> None:
        image = self.image.reduce(_SUPERSAMPLE) if _SUPERSAMPLE > 1 else self.image
        image.save(path, format="PNG", optimize=True)


def _marker_polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    def regular(count, radius, start):
        return [(x + radius * math.cos(start + 2 * math.pi * k / count),
                 y + radius * math.sin(start + 2 * math.pi * k / count)) for k in range(count)]  # fmt: skip

    if shape == "square":
        s = r * 0.85
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "triangle":
        return regular(3, r * 1.15, -math.pi / 2)
    if shape == "triangle_down":
        return regular(3, r * 1.15, math.pi / 2)
    if shape == "diamond":
        return regular(4, r * 1.15, 0)
    if shape == "hexagon":
        return regular(6, r, 0)
    if shape == "star":
        outer, inner = regular(5, r * 1.25, -math.pi / 2), regular(5, r * 0.55, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    return None  # circle


def _draw_marker(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill, outline=WHITE):
    """A filled marker with a light outline, at supersampled coordinates."""
    ring = max(1.0, r * 0.3)
    polygon = _marker_polygon(shape, x, y, r + ring)
    if polygon is None:
        draw.ellipse([x - r - ring, y - r - ring, x + r + ring, y + r + ring], fill=outline)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon(polygon, fill=outline)
        draw.polygon(_marker_polygon(shape, x, y, r), fill=fill)


def _draw_polyline(draw: ImageDraw.ImageDraw, points, fill, width: int, dashed: bool = False):
    """A polyline (supersampled coordinates), solid or dashed; the dash pattern carries across the vertices."""
    if len(points) < 2:
        return
    if not dashed:
        draw.line(points, fill=fill, width=width, joint="curve")
        return
    dash, gap = 4.0 * width, 2.5 * width
    period, phase = dash + gap, 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        travelled = 0.0
        while travelled < length:
            in_dash = phase < dash
            run = min((dash - phase) if in_dash else (period - phase), length - travelled)
            if in_dash:
                a, b = travelled / length, (travelled + run) / length
                draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                          fill=fill, width=width)  # fmt: skip
            travelled += run
            phase = (phase + run) % period


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude


def _linear_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + step * 1e-9:
        ticks.append(round(k * step, 12))
        k += 1
    return ticks


def _tick_label(value: float, reference: float | None = None) -> str:
    """A short tick label; the suffix (k, M) follows `reference` (the axis' largest tick) when given, so one
    linear axis reads 0, 500, 1000, 1500 rather than 0, 500, 1k, 1500; log axes label each power on its own."""
    size = abs(value if reference is None else reference)
    if size >= 1e6:
        return f"{value / 1e6:.6g}M"
    if size >= 1e4 or (reference is None and size >= 1e3 and value % 1000 == 0):
        return f"{value / 1e3:.6g}k"
    return f"{value:.6g}"


@dataclass
class _Axis:
    lo: float
    hi: float
    log: bool = False

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def fraction(self, value: float) -> float:
        return (self._t(value) - self._t(self.lo)) / (self._t(self.hi) - self._t(self.lo))

    @classmethod
    def fit(cls, values: Sequence[float], log: bool, pad: float = 0.05) -> _Axis:
        values = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        if not values:
            return cls(1.0, 10.0, log) if log else cls(0.0, 1.0, log)
        lo, hi = min(values), max(values)
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:  # one value: give it room
            lo, hi = (lo - 0.2, hi + 0.2) if log else (lo - max(abs(lo) * 0.1, 1e-3), hi + max(abs(hi) * 0.1, 1e-3))
        span = hi - lo
        lo, hi = lo - pad * span, hi + pad * span
        return cls(10**lo, 10**hi, log) if log else cls(lo, hi, log)

    def ticks(self) -> list[float]:
        if not self.log:
            return _linear_ticks(self.lo, self.hi)
        decades = math.log10(self.hi) - math.log10(self.lo)
        if decades < 1:  # less than a decade: evenly spaced values read better than powers of ten
            return [t for t in _linear_ticks(self.lo, self.hi, 5) if t > 0]
        mantissas = (1, 2, 5) if decades < 3 else (1,)
        every = max(1, math.ceil(decades / 7))
        ticks = [m * 10.0**k for k in range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1)
                 if k % every == 0 for m in mantissas]  # fmt: skip
        return [t for t in ticks if self.lo <= t <= self.hi]

    def tick_labels(self) -> list[tuple[float, str]]:
        ticks = self.ticks()
        reference = None if self.log else max((abs(t) for t in ticks), default=0.0)
        return [(t, _tick_label(t, reference)) for t in ticks]


@dataclass
class _Plot:
    """Axes on a canvas: frame, grid, ticks, labels, and a clipped layer for the data."""

    canvas: _Canvas
    box: tuple[float, float, float, float]  # left, top, right, bottom, final-size pixels
    x: _Axis
    y: _Axis
    layer: Image.Image = field(init=False)

    def __post_init__(self):
        left, top, right, bottom = (_Canvas.px(v) for v in self.box)
        self.layer = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.layer)

    def to_layer(self, x: float, y: float) -> tuple[float, float]:
        """Data coordinates -> supersampled pixel coordinates on the data layer."""
        left, top, right, bottom = self.box
        return (_Canvas.px((right - left) * self.x.fraction(x)), _Canvas.px((bottom - top) * (1 - self.y.fraction(y))))

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        """Data coordinates -> final-size canvas coordinates."""
        left, top, right, bottom = self.box
        return left + (right - left) * self.x.fraction(x), top + (bottom - top) * (1 - self.y.fraction(y))

    def draw_axes(self, x_label: str, y_label: str, tick_size: int = 12, label_size: int = 13):
        canvas, (left, top, right, bottom) = self.canvas, self.box
        px = _Canvas.px
        for tick, label in self.x.tick_labels():
            x = left + (right - left) * self.x.fraction(tick)
            canvas.draw.line([(px(x), px(top)), (px(x), px(bottom))], fill=GRID, width=px(1))
            canvas.draw.line([(px(x), px(bottom)), (px(x), px(bottom + 4))], fill=FRAME, width=px(1))
            canvas.text(x, bottom + 7, label, tick_size, MUTED, align="center")
        for tick, label in self.y.tick_labels():
            y = top + (bottom - top) * (1 - self.y.fraction(tick))
            canvas.draw.line([(px(left), px(y)), (px(right), px(y))], fill=GRID, width=px(1))
            canvas.draw.line([(px(left - 4), px(y)), (px(left), px(y))], fill=FRAME, width=px(1))
            canvas.text(left - 7, y, label, tick_size, MUTED, align="right", valign="middle")
        canvas.draw.rectangle([px(left), px(top), px(right), px(bottom)], outline=FRAME, width=px(1))
        tick_height = canvas.line_height(tick_size)
        canvas.text((left + right) / 2, bottom + 7 + tick_height + 8, x_label, label_size, TEXT, align="center")
        widest = max((canvas.text_size(label, tick_size)[0] for _, label in self.y.tick_labels()), default=0)
        canvas.vertical_text(left - 7 - widest - 8 - canvas.line_height(label_size) / 2, (top + bottom) / 2,
                             y_label, label_size)  # fmt: skip

    def finish(self):
        left, top = (_Canvas.px(v) for v in self.box[:2])
        self.canvas.image.paste(self.layer, (left, top), self.layer)


@dataclass
class PlotReport:
    """What a plot function drew: the file, the models plotted (names) and {label: why not} for the rest."""

    path: str
    plotted: list[str]
    not_plotted: dict[str, str]


def _layout(canvas: _Canvas, title: str, subtitle: str, caption_lines: list[str], y_tick_labels: list[str],
            legend_width: float = 0.0) -> tuple[float, float, float, float]:  # fmt: skip
    """Draws title, subtitle and caption; returns the plot box that leaves room for ticks, axis labels, legend."""
    pad = 16
    canvas.text(pad, pad, title, 18, BLACK)
    y = pad + canvas.line_height(18) + 8
    if subtitle:
        for line in canvas.wrap(subtitle, 12, canvas.width - 2 * pad):
            canvas.text(pad, y, line, 12, MUTED)
            y += canvas.line_height(12) + 4
    top = y + 10
    caption_height = len(caption_lines) * (canvas.line_height(11) + 4)
    for i, line in enumerate(caption_lines):
        canvas.text(pad, canvas.height - pad - caption_height + i * (canvas.line_height(11) + 4), line, 11, MUTED)
    bottom = (
        canvas.height
        - pad
        - caption_height
        - (10 if caption_lines else 0)
        - canvas.line_height(12)
        - 7
        - canvas.line_height(13)
        - 14
    )
    widest = max((canvas.text_size(t, 12)[0] for t in y_tick_labels), default=0)
    left = pad + canvas.line_height(13) + 8 + widest + 8
    right = canvas.width - pad - (legend_width + 16 if legend_width else 8)
    return left, top, right, bottom


def _caption_lines(canvas: _Canvas, results: Mapping, not_plotted: Mapping[str, str]) -> list[str]:
    width = canvas.width - 32
    lines = []
    incomplete = [m for m in results["models"] if _incomplete(m)]
    if incomplete:
        text = "incomplete budget (less training than planned): " + "; ".join(
            f"{m['label']} ({m['budget']['train_tokens']:,} of {results['settings']['train_tokens']:,} tokens)"
            for m in incomplete
        )
        lines += canvas.wrap(text, 11, width)
    if not_plotted:
        lines += canvas.wrap("not plotted: " + "; ".join(f"{k} ({v})" for k, v in not_plotted.items()), 11, width)
    return lines


def _fit_text(canvas: _Canvas, text: str, size: int, width: float) -> str:
    """`text`, shortened with "…" until it fits `width` (long labels must not squeeze the plot away)."""
    if canvas.text_size(text, size)[0] <= width:
        return text
    while len(text) > 1 and canvas.text_size(text + "…", size)[0] > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _finite_points(points) -> list[tuple[int, float]]:
    return [(step, loss) for step, loss in points if loss is not None and math.isfinite(loss)]


def _mean_curve(per_seed: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Mean over seeds at the steps every seed recorded (a seed that stopped early ends the mean there)."""
    if len(per_seed) == 1:
        return per_seed[0]
    by_step = [dict(points) for points in per_seed]
    common = set(by_step[0]).intersection(*by_step[1:])
    return [(step, statistics.fmean(d[step] for d in by_step)) for step in sorted(common)]


def plot_loss_curves(results: Mapping, path, *, log_y: bool = False, size: tuple[int, int] = (1000, 600),
                     y_limits: tuple[float, float] | None = None) -> PlotReport:  # fmt: skip
    """Training loss vs. step for every model: each seed thin, the mean over seeds thick (dashed for baselines),
    held-out evaluations as markers. `y_limits` fixes the y range (the data is clipped to it)."""
    validate_results(results)
    series, not_plotted = [], {}
    for model in results["models"]:
        train = [_finite_points(c["train"]) for _, c in sorted(model["curves"].items(), key=lambda kv: int(kv[0]))]
        evals = [_finite_points(c["eval"]) for _, c in sorted(model["curves"].items(), key=lambda kv: int(kv[0]))]
        train, evals = [t for t in train if t], [e for e in evals if e]
        if not train and not evals:
            not_plotted[model["label"]] = "no finite loss recorded"
            continue
        series.append((model, train, _mean_curve(train) if train else [], _mean_curve(evals) if evals else []))
    all_points = [p for _, train, _, evals in series for points in train + [evals] for p in points]
    if log_y and any(loss <= 0 for _, loss in all_points):
        log_y = False  # a zero loss cannot go on a log axis; say so in the subtitle rather than fail
        scale_note = "linear y (a loss <= 0 cannot be shown on a log scale)"
    else:
        scale_note = "log y" if log_y else ""
    steps = [step for step, _ in all_points] or [0, 1]
    x_axis = _Axis(min(0, min(steps)), max(steps) if max(steps) > 0 else 1)
    y_axis = _Axis(*y_limits, log_y) if y_limits else _Axis.fit([loss for _, loss in all_points], log_y)

    canvas = _Canvas(*size)
    seeds = len(results["settings"]["seeds"])
    subtitle = (f"thin: each of {seeds} seeds; thick: mean over seeds (dashed: baselines); markers: held-out loss. "
                if seeds > 1 else "lines: training loss (dashed: baselines); markers: held-out loss. ")  # fmt: skip
    subtitle += f"{results['settings']['train_tokens']:,} training tokens planned per model"
    if scale_note:
        subtitle += f"; {scale_note}"
    legend_text = 12
    legend = [(m, _fit_text(canvas, _display_label(m, PLOT_INCOMPLETE_MARK), legend_text, size[0] * 0.28))
              for m, *_ in series]  # fmt: skip
    legend_width = max((canvas.text_size(text, legend_text)[0] for _, text in legend), default=0) + 64
    box = _layout(canvas, f"{results['title']}: training loss", subtitle,
                  _caption_lines(canvas, results, not_plotted), [label for _, label in y_axis.tick_labels()],
                  legend_width if legend else 0)  # fmt: skip
    plot = _Plot(canvas, box, x_axis, y_axis)
    tokens_per_step = results["settings"]["batch_size"] * results["settings"]["sequence_length"]
    plot.draw_axes(f"training step ({tokens_per_step:,} tokens per step)", "loss (nats per token)")

    px = _Canvas.px
    for model, train, _, _ in series:  # every seed first, under all means
        color, _ = model_style(results, model)
        if seeds > 1:
            for points in train:
                _draw_polyline(plot.draw, [plot.to_layer(*p) for p in points], _tint(color, 0.6), px(1))
    for model, _, mean, _ in series:
        color, _ = model_style(results, model)
        _draw_polyline(plot.draw, [plot.to_layer(*p) for p in mean], color, px(2.5), model["family"] == "baseline")
    for model, _, _, evals in series:
        color, marker = model_style(results, model)
        for point in evals:
            _draw_marker(plot.draw, marker, *plot.to_layer(*point), px(4.5), color)
    if not series:
        left, top, right, bottom = box
        canvas.text((left + right) / 2, (top + bottom) / 2, "no loss curves recorded", 14, MUTED, "center", "middle")
    plot.finish()

    # Legend, right of the plot: line sample with the model's marker, then the label.
    left, top, right, bottom = box
    x0, y = right + 16, top + 4
    row = canvas.line_height(legend_text) + 10
    for model, text in legend:
        color, marker = model_style(results, model)
        middle = y + row / 2
        _draw_polyline(canvas.draw, [(px(x0), px(middle)), (px(x0 + 40), px(middle))], color, px(2.5),
                       model["family"] == "baseline")  # fmt: skip
        _draw_marker(canvas.draw, marker, px(x0 + 20), px(middle), px(4.5), color)
        canvas.text(x0 + 48, middle, text, legend_text, TEXT, valign="middle")
        y += row
    canvas.save(path)
    return PlotReport(str(path), [m["name"] for m, *_ in series], not_plotted)


def plot_quality_vs_throughput(results: Mapping, path, *, y_metric: str = "heldout_perplexity",
                               x_metric: str = "train_tokens_per_second", log_y: bool = False,
                               size: tuple[int, int] = (1000, 640)) -> PlotReport:  # fmt: skip
    """One labelled point per model: x = training tokens/s (log scale), y = held-out perplexity (or `y_metric`, e.g.
    "heldout_loss"), with ± std error bars where there are several seeds. Models lacking either metric are listed
    under the plot as "not plotted"."""
    validate_results(results)
    plotted, not_plotted = quality_points(results, x_metric, y_metric)

    def extent(model, name):
        metric = model["metrics"][name]
        std = metric["std"] or 0.0
        return metric["mean"], std

    xs = [v for m in plotted for mean, std in [extent(m, x_metric)] for v in (mean - std, mean + std)]
    ys = [v for m in plotted for mean, std in [extent(m, y_metric)] for v in (mean - std, mean + std)]
    x_axis = _Axis.fit(xs, log=True, pad=0.08)
    y_axis = _Axis.fit(ys, log=log_y, pad=0.1)

    canvas = _Canvas(*size)
    x_spec, y_spec = metric_spec(x_metric), metric_spec(y_metric)
    better = {True: "higher", False: "lower"}
    subtitle = "one point per model"
    if len(results["settings"]["seeds"]) > 1:
        subtitle += ", mean over seeds with ± 1 std bars"
    if x_spec.higher_is_better is not None and y_spec.higher_is_better is not None:
        corner = ("right" if x_spec.higher_is_better else "left", "top" if y_spec.higher_is_better else "bottom")
        subtitle += (
            f"; better: {corner[1]} {corner[0]} ({better[x_spec.higher_is_better]} {x_spec.label}, "
            f"{better[y_spec.higher_is_better]} {y_spec.label})"
        )
    box = _layout(
        canvas,
        f"{results['title']}: {y_spec.label} vs. {x_spec.label}",
        subtitle,
        _caption_lines(canvas, results, not_plotted),
        [label for _, label in y_axis.tick_labels()],
    )
    plot = _Plot(canvas, box, x_axis, y_axis)
    plot.draw_axes(f"{x_spec.label} (log scale)", f"{y_spec.label}" + (" (log scale)" if log_y else ""))

    px = _Canvas.px
    radius = 6.0
    for model in plotted:  # error bars under every marker
        color, _ = model_style(results, model)
        (x, x_std), (y, y_std) = extent(model, x_metric), extent(model, y_metric)
        if y_std:
            (cx, top), (_, bottom) = plot.to_layer(x, y + y_std), plot.to_layer(x, max(y - y_std, 1e-300))
            plot.draw.line([(cx, top), (cx, bottom)], fill=color, width=px(1.5))
            for end in (top, bottom):
                plot.draw.line([(cx - px(5), end), (cx + px(5), end)], fill=color, width=px(1.5))
        if x_std:
            (left, cy), (right, _) = plot.to_layer(max(x - x_std, x * 1e-3), y), plot.to_layer(x + x_std, y)
            plot.draw.line([(left, cy), (right, cy)], fill=color, width=px(1.5))
            for end in (left, right):
                plot.draw.line([(end, cy - px(5)), (end, cy + px(5))], fill=color, width=px(1.5))
    for model in plotted:
        color, marker = model_style(results, model)
        x, y = model["metrics"][x_metric]["mean"], model["metrics"][y_metric]["mean"]
        _draw_marker(plot.draw, marker, *plot.to_layer(x, y), px(radius), color)
    if not plotted:
        left, top, right, bottom = box
        canvas.text((left + right) / 2, (top + bottom) / 2, "no model has both metrics", 14, MUTED, "center", "middle")
    plot.finish()

    # Labels next to the points, at the first of eight positions that overlaps no other label or marker.
    left, top, right, bottom = box
    centres = [plot.to_canvas(m["metrics"][x_metric]["mean"], m["metrics"][y_metric]["mean"]) for m in plotted]
    taken = [(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]
    for model, (cx, cy) in zip(plotted, centres):  # error bars are obstacles too
        (x, x_std), (y, y_std) = extent(model, x_metric), extent(model, y_metric)
        if x_std:
            x_lo, x_hi = plot.to_canvas(max(x - x_std, x * 1e-3), y)[0], plot.to_canvas(x + x_std, y)[0]
            taken.append((x_lo, cy - 5, x_hi, cy + 5))
        if y_std:
            y_hi, y_lo = plot.to_canvas(x, y + y_std)[1], plot.to_canvas(x, max(y - y_std, 1e-300))[1]
            taken.append((cx - 5, y_hi, cx + 5, y_lo))
    for model, (cx, cy) in zip(plotted, centres):
        text = _display_label(model, PLOT_INCOMPLETE_MARK)
        w, h = canvas.text_size(text, 12)
        gap = radius + 5
        candidates = [(cx + gap, cy - h / 2), (cx - gap - w, cy - h / 2), (cx - w / 2, cy - gap - h),
                      (cx - w / 2, cy + gap), (cx + gap, cy - gap - h), (cx + gap, cy + gap),
                      (cx - gap - w, cy - gap - h), (cx - gap - w, cy + gap)]  # fmt: skip

        def cost(position):
            x0, y0 = position
            rect = (x0, y0, x0 + w, y0 + h)
            outside = rect[0] < left or rect[2] > right or rect[1] < top or rect[3] > bottom
            overlaps = sum(1 for o in taken if rect[0] < o[2] and o[0] < rect[2] and rect[1] < o[3] and o[1] < rect[3])
            return 2 * outside + overlaps

        x0, y0 = min(candidates, key=cost)  # min keeps the earliest of equal costs
        taken.append((x0, y0, x0 + w, y0 + h))
        canvas.text(x0, y0, text, 12, TEXT)
    canvas.save(path)
    return PlotReport(str(path), [m["name"] for m in plotted], not_plotted)


# --------------------------------------------------------------------------------------------------------------
# files


def _strict_json_value(value):
    """Non-finite floats (a diverged curve point) -> null, so results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json_value(v) for v in value]
    return value


def dumps_results(results: Mapping, width: int = 110) -> str:
    """Indented JSON in which lists of numbers (and of [step, loss] pairs) are packed into lines of `width`,
    so long curves stay readable instead of taking four lines per point."""

    def scalar(value):
        return value is None or isinstance(value, (str, int, float, bool))

    def packable(value):
        return isinstance(value, list) and all(scalar(v) or (isinstance(v, list) and all(map(scalar, v)))
                                               for v in value)  # fmt: skip

    def encode(value, indent: int) -> str:
        pad, inner = " " * indent, " " * (indent + 2)
        if isinstance(value, Mapping):
            if not value:
                return "{}"
            items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {encode(v, indent + 2)}"
                     for k, v in value.items()]  # fmt: skip
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list):
            if not value:
                return "[]"
            if packable(value):
                parts = [json.dumps(v, ensure_ascii=False, allow_nan=False) for v in value]
                one_line = "[" + ", ".join(parts) + "]"
                if len(one_line) + indent <= width:
                    return one_line
                lines, current = [], ""
                for part in parts:
                    candidate = f"{current}, {part}" if current else part
                    if current and len(candidate) + len(inner) + 1 > width:
                        lines.append(current + ",")
                        current = part
                    else:
                        current = candidate
                lines.append(current)
                return "[\n" + "\n".join(inner + line for line in lines) + f"\n{pad}]"
            return "[\n" + ",\n".join(inner + encode(v, indent + 2) for v in value) + f"\n{pad}]"
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    return encode(_strict_json_value(results), 0) + "\n"


def load_results(path) -> dict:
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    validate_results(results)
    return results


def write_reports(results: Mapping, out_dir, *, log_y: bool = True) -> dict[str, str]:
    """Validates `results`, then writes results.json, leaderboard.md, loss_curves.png and quality_vs_throughput.png
    into out_dir. Returns {"results", "leaderboard", "loss_curves", "quality_vs_throughput"} -> path."""
    validate_results(results)
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "results": os.path.join(out_dir, "results.json"),
        "leaderboard": os.path.join(out_dir, "leaderboard.md"),
        "loss_curves": os.path.join(out_dir, "loss_curves.png"),
        "quality_vs_throughput": os.path.join(out_dir, "quality_vs_throughput.png"),
    }
    with open(paths["results"], "w", encoding="utf-8") as f:
        f.write(dumps_results(results))
    plot_loss_curves(results, paths["loss_curves"], log_y=log_y)
    y_metric = (
        "heldout_loss_second_half" if ranking_metric(results) == "heldout_loss_second_half" else "heldout_perplexity"
    )
    plot_quality_vs_throughput(results, paths["quality_vs_throughput"], y_metric=y_metric)
    figures = {key: os.path.basename(paths[key]) for key in ("loss_curves", "quality_vs_throughput")}
    with open(paths["leaderboard"], "w", encoding="utf-8") as f:
        f.write(render_markdown(results, figures=figures))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-render the reports of a `slam-hf bench` results.json.")
    parser.add_argument("results", help="results.json written by slam-hf bench")
    parser.add_argument("--output-dir", help="where to write (default: the folder of results.json)")
    parser.add_argument("--linear-y", action="store_true", help="linear instead of log y axis for the loss curves")
    parser.add_argument(
        "--caveat",
        action="append",
        default=[],
        help="add a caveat to the written results.json and report, e.g. that other work shared the machine; repeatable",
    )
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.caveat:
        results["caveats"] = [*results.get("caveats", []), *args.caveat]
    paths = write_reports(results, args.output_dir or os.path.dirname(os.path.abspath(args.results)),
                          log_y=not args.linear_y)  # fmt: skip
    print("\n".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
