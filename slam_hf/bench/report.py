"""Reports of `slam-hf bench`: a Markdown leaderboard and two PNG plots, written next to results.json.

`slam_hf.bench.runner` measures; this module only reads what it measured. Everything here works from the results dict
alone (or a `results.json` written by `write_reports`), so a run can be re-rendered without re-running it:

    python -m slam_hf.bench.report outputs/bench/results.json --output-dir outputs/bench

The results schema and its checks are in `slam_hf.bench.schema`, what each metric means and how it reads in
`slam_hf.bench.metrics`, the plots in `slam_hf.bench.plots` (matplotlib, the `bench` extra: only drawing the PNGs
needs it). Their public names are importable from here too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .metrics import (
    INCOMPLETE_MARK,
    METRICS,
    MetricSpec,
    Unit,
    display_label,
    format_measured,
    is_incomplete,
    is_measured,
    metric_spec,
    quality_points,
    ranking_metric,
    sorted_models,
)
from .plots import MARKERS, PALETTE, PlotReport, model_style, plot_loss_curves, plot_quality_vs_throughput
from .schema import SCHEMA, SETTINGS_KEYS, dumps_results, load_results, validate_metric, validate_results

__all__ = [  # this module's names, and the ones it re-exports from before they had modules of their own
    "render_markdown",
    "write_reports",
    "main",
    "SCHEMA",
    "dumps_results",
    "load_results",
    "validate_metric",
    "validate_results",
    "INCOMPLETE_MARK",
    "METRICS",
    "MetricSpec",
    "Unit",
    "format_measured",
    "is_measured",
    "metric_spec",
    "quality_points",
    "ranking_metric",
    "sorted_models",
    "MARKERS",
    "PALETTE",
    "PlotReport",
    "model_style",
    "plot_loss_curves",
    "plot_quality_vs_throughput",
]


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
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    return str(value)


def _family(model: Mapping) -> str:
    return "SLAM" if model["family"] == "slam" else "baseline"


# --------------------------------------------------------------------------------------------------------------
# the header: what ran, where, with what, and how to run it again


def _shape_text(settings: Mapping) -> str:
    shape = dict(settings["shape"])
    text = (
        f"{shape.pop('num_hidden_layers')} layers, hidden {shape.pop('hidden_size')}, "
        f"{shape.pop('num_attention_heads')} heads, intermediate {shape.pop('intermediate_size')}"
    )
    if shape:
        text += "; " + ", ".join(f"{k} {_plain(v)}" for k, v in shape.items())
    return f"{text}; vocabulary {settings['vocab_size']:,}"


def _machine_text(machine: Mapping) -> str:
    text = f"{machine['description']} (device `{machine['device']}`, {machine['torch_threads']} torch threads)"
    extra = {k: v for k, v in machine.items() if k not in ("description", "device", "torch_threads")}
    if extra:
        text += "; " + "; ".join(f"{k}: {_plain(v)}" for k, v in extra.items())
    return text


def _budget_text(settings: Mapping, models: Sequence[Mapping]) -> str:
    text = (
        f"{settings['train_tokens']:,} training tokens per model and seed "
        f"({settings['batch_size']} × {settings['sequence_length']} tokens per step, {settings['epochs']:.2f} epochs)"
    )
    incomplete = [m for m in models if is_incomplete(m)]
    if incomplete:
        text += f"; **{len(incomplete)} of {len(models)} models got less** "
        text += f"(marked {INCOMPLETE_MARK}, see below the leaderboard)"
    return text


def _header(results: Mapping) -> list[str]:
    settings = results["settings"]
    optimizer = (
        f"{settings['optimizer']}; learning rate {settings['learning_rate']:g}; schedule {settings['scheduler']}"
    )
    rows = [
        ("Machine", _machine_text(results["machine"])),
        ("Software", ", ".join(f"{k} {v}" for k, v in results["software"].items())),
        ("Model shape", _shape_text(settings)),
        ("Budget", _budget_text(settings, results["models"])),
        ("Optimizer", optimizer),
        ("Seeds", ", ".join(str(s) for s in settings["seeds"])),
        ("Data", f"{settings['data']}; held-out evaluation on {settings['eval_tokens']:,} tokens"),
    ]
    beyond_schema = [(f"`{k}`", _plain(v)) for k, v in settings.items() if k not in SETTINGS_KEYS]
    rows += beyond_schema + [("Run", f"{results['created']}, took {_duration(results['duration_seconds'])}")]
    out = [f"# {results['title']}", "", "| | |", "|---|---|"]
    out += [f"| **{_md(k)}** | {_md(v)} |" for k, v in rows] + [""]
    if results.get("caveats"):
        out += ["**Caveats:**", ""] + [f"- {_md(caveat)}" for caveat in results["caveats"]] + [""]
    if results["command"]:
        out += ["Reproduce with:", "", "```bash", results["command"], "```", ""]
    return out


# --------------------------------------------------------------------------------------------------------------
# the leaderboard


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
            uses = []
            for label, names in self.uses[reason].items():
                every = len(names) == metric_counts.get(label) and len(names) > 1
                uses.append(f"{label}: every metric" if every else f"{label}: " + ", ".join(f"`{n}`" for n in names))
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


def _table(results: Mapping, columns: list[_Column], footnotes: _Footnotes) -> list[str]:
    best = {name: _best_means(results, name) for column in columns for name in column.metrics}
    out = ["| model | family | " + " | ".join(_md(c.header) + _arrow(c) for c in columns) + " |"]
    out.append("|---|---|" + "|".join("--:" for _ in columns) + "|")
    for model in sorted_models(results):
        label = f"**{_md(model['label'])}**" + (f" {INCOMPLETE_MARK}" if is_incomplete(model) else "")
        cells = [label, _family(model)] + [_md(_cell(model, column, footnotes, best)) for column in columns]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def _how_to_read(results: Mapping) -> list[str]:
    seeds = len(results["settings"]["seeds"])
    if seeds > 1:
        spread = (
            f"Values are the mean ± sample standard deviation over {seeds} seeds (± left out where it is zero or "
            "there is one value)."
        )
    else:
        spread = "One seed, so no spread is shown: differences may be noise."
    return [
        f"Sorted by {metric_spec(ranking_metric(results)).label}. {spread} ↓ lower is better, ↑ higher is better; "
        "**bold**: best in its column. n/m: not measured, for the reason in the numbered note; —: not reported.",
        "",
    ]


def _incomplete_budgets(results: Mapping) -> list[str]:
    planned = results["settings"]["train_tokens"]
    incomplete = [m for m in sorted_models(results) if is_incomplete(m)]
    if not incomplete:
        return []
    out = [
        f"> **{INCOMPLETE_MARK} Incomplete budget: these models trained on less than the planned {planned:,} tokens, "
        "so their quality numbers are not comparable with the others'.**"
    ]
    for model in incomplete:
        budget = model["budget"]
        share = budget["train_tokens"] / planned
        out.append(
            f"> - **{_md(model['label'])}**: {budget['train_tokens']:,} tokens ({share:.1%}), "
            f"{budget['steps']:,} steps: {_md(budget['reason'])}"
        )
    return out + [""]


def _leaderboard(results: Mapping, columns: list[_Column]) -> list[str]:
    footnotes = _Footnotes()
    out = ["## Leaderboard", ""] + _table(results, columns, footnotes)
    out += _how_to_read(results) + _incomplete_budgets(results)
    if footnotes.numbers:
        counts = {m["label"]: len(m["metrics"]) for m in results["models"]}
        out += ["Not measured:", ""] + footnotes.lines(counts) + [""]
    return out


# --------------------------------------------------------------------------------------------------------------
# figures, models and metric definitions


def _figures(results: Mapping, figures: Mapping[str, str]) -> list[str]:
    out = []
    if figures.get("loss_curves"):
        out += ["## Training curves", "", f"![Training loss per step]({figures['loss_curves']})", ""]
        out += [
            "Thin lines: each seed; thick lines: the mean over seeds (dashed for baselines); markers: held-out "
            "loss at evaluation steps.",
            "",
        ]
    if figures.get("quality_vs_throughput"):
        out += ["## Quality vs. training throughput", ""]
        out += [f"![Held-out perplexity vs. training tokens/s]({figures['quality_vs_throughput']})", ""]
        _, not_plotted = quality_points(results)
        if not_plotted:
            out += ["Not plotted: " + "; ".join(f"{_md(k)} ({_md(v)})" for k, v in not_plotted.items()) + ".", ""]
    return out


def _model_line(model: Mapping, planned_tokens: int) -> str:
    budget = model["budget"]
    line = f"- **{_md(display_label(model))}** (`{model['name']}`, `{model['class']}`, {_family(model)})"
    if model["notes"].strip():
        line += f": {model['notes'].strip()}"
    if budget["complete"]:
        return line + f" Trained {budget['train_tokens']:,} tokens in {budget['steps']:,} steps."
    return line + (
        f" **Incomplete budget: {budget['train_tokens']:,} of {planned_tokens:,} tokens, "
        f"{budget['steps']:,} steps: {budget['reason'].rstrip('.')}.**"
    )


def _definitions(results: Mapping, columns: list[_Column]) -> list[str]:
    """Every metric the models carry, in the table's order."""
    direction = {True: "higher is better", False: "lower is better", None: "no better direction"}
    out = ["## Metric definitions", ""]
    for name in (name for column in columns for name in column.metrics):
        if any(name in m["metrics"] for m in results["models"]):
            spec = metric_spec(name)
            out.append(
                f"- **{spec.label}** (`{name}`; {spec.unit.words}; {direction[spec.higher_is_better]}): "
                f"{spec.definition}"
            )
    return out + [""]


def render_markdown(results: Mapping, *, figures: Mapping[str, str] | None = None) -> str:
    """The leaderboard page. `figures` maps "loss_curves" / "quality_vs_throughput" to image paths (relative to
    where the Markdown is written) to embed; `write_reports` passes the PNGs it draws."""
    validate_results(results)
    columns = _columns(results)
    planned = results["settings"]["train_tokens"]
    out = _header(results) + _leaderboard(results, columns) + _figures(results, figures or {})
    out += ["## Models", ""] + [_model_line(model, planned) for model in sorted_models(results)] + [""]
    return "\n".join(out + _definitions(results, columns))


# --------------------------------------------------------------------------------------------------------------
# files


def write_reports(results: Mapping, out_dir, *, log_y: bool = True) -> dict[str, str]:
    """Validates `results`, then writes results.json, leaderboard.md, loss_curves.png and quality_vs_throughput.png
    into out_dir. Returns {"results", "leaderboard", "loss_curves", "quality_vs_throughput"} -> path."""
    validate_results(results)
    os.makedirs(out_dir, exist_ok=True)
    names = {
        "results": "results.json",
        "leaderboard": "leaderboard.md",
        "loss_curves": "loss_curves.png",
        "quality_vs_throughput": "quality_vs_throughput.png",
    }
    paths = {key: os.path.join(out_dir, name) for key, name in names.items()}
    with open(paths["results"], "w", encoding="utf-8") as f:
        f.write(dumps_results(results))
    plot_loss_curves(results, paths["loss_curves"], log_y=log_y)
    # The quality axis follows the ranking: the 2nd-half loss where that ranks the models, else perplexity.
    ranked_by_second_half = ranking_metric(results) == "heldout_loss_second_half"
    y_metric = "heldout_loss_second_half" if ranked_by_second_half else "heldout_perplexity"
    plot_quality_vs_throughput(results, paths["quality_vs_throughput"], y_metric=y_metric)
    figures = {key: names[key] for key in ("loss_curves", "quality_vs_throughput")}
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
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.results))
    paths = write_reports(results, out_dir, log_y=not args.linear_y)
    print("\n".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
