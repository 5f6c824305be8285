"""The results of `slam-hf bench`: their schema, its checks, and results.json in and out.

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

import datetime
import json
import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

SCHEMA = "slam_hf.bench/1"
FAMILIES = ("slam", "baseline")
DEVICES = ("cpu", "cuda")


def _fail(path: str, problem: str):
    raise ValueError(f"bench results: {path} {problem}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_dict(value) -> bool:
    return isinstance(value, Mapping)


def _require(container: Mapping, key: str, path: str, check: Callable[[Any], bool], expected: str):
    full = f"{path}.{key}" if path else key
    if key not in container:
        _fail(full, f"is missing (expected {expected})")
    value = container[key]
    if not check(value):
        _fail(full, f"is {value!r}, expected {expected}")
    return value


def _close(a: float, b: float, scale: float) -> bool:
    # Values may have been rounded when stored; a relative tolerance plus one relative to the values' magnitude
    # (for means near zero) accepts that and still catches a mean that belongs to other values.
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6 * scale + 1e-12)


# (check, what is expected) per key
_POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive integer")
_TEXT = (_nonempty_str, "a non-empty string")
_SETTINGS = {
    "vocab_size": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "sequence_length": _POSITIVE_INT,
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "optimizer": _TEXT,
    "scheduler": _TEXT,
    "seeds": (
        lambda v: isinstance(v, list) and v and all(_is_int(s) for s in v) and len(set(v)) == len(v),
        "a non-empty list of distinct integers",
    ),
    "train_tokens": _POSITIVE_INT,
    "epochs": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "eval_tokens": _POSITIVE_INT,
    "data": _TEXT,
}
SETTINGS_KEYS = ("shape", *_SETTINGS)  # the settings the schema names; a report lists any others as they come
_SHAPE_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
_METRIC_FORMS = "{'mean', 'std', 'values', 'n'} or {'not_measured': reason}"


def _validate_not_measured(metric: Mapping, path: str) -> None:
    if set(metric) != {"not_measured"}:
        _fail(path, f"mixes 'not_measured' with {sorted(set(metric) - {'not_measured'})}")
    if not _nonempty_str(metric["not_measured"]):
        _fail(f"{path}.not_measured", "must be the reason, a non-empty string")


def _validate_values(values, n, path: str) -> None:
    if not isinstance(values, list) or not values:
        _fail(f"{path}.values", f"is {values!r}, expected a non-empty list with one number per seed")
    for i, value in enumerate(values):
        if not _is_number(value):
            _fail(f"{path}.values[{i}]", f"is {value!r}, expected a number")
        if not math.isfinite(value):
            _fail(f"{path}.values[{i}]", f"is {value!r}: not a measurement; report {{'not_measured': reason}}")
    if not _is_int(n) or n != len(values):
        _fail(f"{path}.n", f"is {n!r} but there are {len(values)} values")


def validate_metric(metric, path: str) -> None:
    """Checks one METRIC (module docstring); raises ValueError naming `path` and what is wrong."""
    if _is_number(metric):
        problem = f"is the bare number {metric!r}: a metric is {_METRIC_FORMS}, and a 0 never stands in for"
        _fail(path, problem + " 'not measured'")
    if not _is_dict(metric):
        _fail(path, f"is {metric!r}, expected {_METRIC_FORMS}")
    if "not_measured" in metric:
        _validate_not_measured(metric, path)
        return
    missing = [key for key in ("mean", "std", "values", "n") if key not in metric]
    if missing:
        _fail(path, f"lacks {missing}: a measured metric has 'mean', 'std', 'values' and 'n'")
    values, n, mean, std = metric["values"], metric["n"], metric["mean"], metric["std"]
    _validate_values(values, n, path)
    scale = max(abs(v) for v in values)
    if not _is_number(mean) or not math.isfinite(mean):
        _fail(f"{path}.mean", f"is {mean!r}, expected a finite number")
    if not _close(mean, statistics.fmean(values), scale):
        _fail(f"{path}.mean", f"is {mean!r} but the mean of values {values} is {statistics.fmean(values)!r}")
    if std is None:
        return
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


def _validate_run(results: Mapping) -> None:
    """The keys that describe the run: title, time, command, caveats, machine and software."""
    _require(results, "title", "", *_TEXT)
    created = _require(results, "created", "", lambda v: isinstance(v, str), "an ISO-8601 time string")
    try:
        datetime.datetime.fromisoformat(created)
    except ValueError:
        _fail("created", f"is {created!r}, expected an ISO-8601 time string")
    _require(results, "command", "", lambda v: isinstance(v, str), "a string (the command that reproduces the run)")
    _require(results, "duration_seconds", "", lambda v: _is_number(v) and v >= 0, "a non-negative number")
    if "caveats" in results:
        expected = "a list of non-empty strings (what a reader must know about how the run went)"
        _require(results, "caveats", "", lambda v: isinstance(v, list) and all(map(_nonempty_str, v)), expected)
    machine = _require(results, "machine", "", _is_dict, "a dict")
    _require(machine, "description", "machine", *_TEXT)
    _require(machine, "device", "machine", lambda v: v in DEVICES, f"one of {DEVICES}")
    _require(machine, "torch_threads", "machine", *_POSITIVE_INT)
    software = _require(results, "software", "", _is_dict, "a dict")
    for key in ("python", "torch", "transformers", "slam_hf"):
        _require(software, key, "software", _nonempty_str, "a version string")


def _validate_settings(results: Mapping) -> Mapping:
    settings = _require(results, "settings", "", _is_dict, "a dict")
    shape = _require(settings, "shape", "settings", _is_dict, "a dict")
    for key in _SHAPE_KEYS:
        _require(shape, key, "settings.shape", *_POSITIVE_INT)
    for key, (check, expected) in _SETTINGS.items():
        _require(settings, key, "settings", check, expected)
    return settings


def _validate_budget(budget: Mapping, path: str, settings: Mapping) -> None:
    tokens = _require(budget, "train_tokens", path, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _require(budget, "steps", path, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    complete = _require(budget, "complete", path, lambda v: isinstance(v, bool), "true or false")
    _require(budget, "reason", path, lambda v: v is None or isinstance(v, str), "a string or null")
    if not complete and not _nonempty_str(budget["reason"]):
        _fail(f"{path}.reason", "must say why the model got less than the planned budget")
    planned, one_step = settings["train_tokens"], settings["batch_size"] * settings["sequence_length"]
    if complete and tokens < planned - one_step:
        _fail(f"{path}.complete", f"is true but the model trained {tokens:,} of the planned {planned:,} tokens")


def _validate_curves(curves: Mapping, path: str) -> None:
    for seed, curve in curves.items():
        curve_path = f"{path}.curves[{seed!r}]"
        if not isinstance(seed, str) or not seed.lstrip("-").isdigit():
            _fail(curve_path, "is keyed by something that is not a seed (an integer as a string)")
        if not _is_dict(curve):
            _fail(curve_path, "is not a dict with 'train' and 'eval'")
        for kind in ("train", "eval"):
            if kind not in curve:
                _fail(f"{curve_path}.{kind}", "is missing (an empty list if nothing was recorded)")
            _validate_curve(curve[kind], f"{curve_path}.{kind}")


def _validate_model(model, index: int, settings: Mapping, names: set[str]) -> None:
    path = f"models[{index}]"
    if not _is_dict(model):
        _fail(path, f"is {type(model).__name__}, expected a dict")
    name = _require(model, "name", path, *_TEXT)
    if name in names:
        _fail(f"{path}.name", f"{name!r} appears twice")
    names.add(name)
    path = f"models[{index}] ({name})"
    _require(model, "label", path, *_TEXT)
    _require(model, "class", path, *_TEXT)
    _require(model, "family", path, lambda v: v in FAMILIES, f"one of {FAMILIES}")
    _require(model, "notes", path, lambda v: isinstance(v, str), "a string")
    _validate_budget(_require(model, "budget", path, _is_dict, "a dict"), f"{path}.budget", settings)
    metrics = _require(model, "metrics", path, _is_dict, "a dict of metric name -> METRIC")
    for metric_name, metric in metrics.items():
        validate_metric(metric, f"{path}.metrics.{metric_name}")
    _validate_curves(_require(model, "curves", path, _is_dict, "a dict of seed -> curves"), path)


def validate_results(results) -> None:
    """Raises ValueError naming the first field (in document order) that breaks the schema in the module docstring."""
    if not _is_dict(results):
        _fail("<results>", f"is {type(results).__name__}, expected a dict")
    if results.get("schema") != SCHEMA:
        _fail("schema", f"is {results.get('schema')!r}, expected {SCHEMA!r}")
    _validate_run(results)
    settings = _validate_settings(results)
    models = _require(results, "models", "", lambda v: isinstance(v, list) and v, "a non-empty list")
    names: set[str] = set()
    for index, model in enumerate(models):
        _validate_model(model, index, settings, names)


# --------------------------------------------------------------------------------------------------------------
# results.json


def _strict_json_value(value):
    """Non-finite floats (a diverged curve point) -> null, so results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json_value(v) for v in value]
    return value


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _packable(value) -> bool:
    """A list of scalars or of lists of scalars (a curve of [step, loss] pairs), packed into lines."""
    return isinstance(value, list) and all(
        _is_scalar(v) or (isinstance(v, list) and all(map(_is_scalar, v))) for v in value
    )


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _packed(parts: list[str], indent: int, width: int) -> str:
    """JSON items in as few lines of `width` as they fit."""
    pad, inner = " " * indent, " " * (indent + 2)
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


def _encode(value, indent: int, width: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{inner}{_dump(str(k))}: {_encode(v, indent + 2, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        if _packable(value):
            return _packed([_dump(v) for v in value], indent, width)
        return "[\n" + ",\n".join(inner + _encode(v, indent + 2, width) for v in value) + f"\n{pad}]"
    return _dump(value)


def dumps_results(results: Mapping, width: int = 110) -> str:
    """Indented JSON in which lists of numbers (and of [step, loss] pairs) are packed into lines of `width`,
    so long curves stay readable instead of taking four lines per point."""
    return _encode(_strict_json_value(results), 0, width) + "\n"


def load_results(path) -> dict:
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    validate_results(results)
    return results
