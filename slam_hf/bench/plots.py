"""The two PNG plots of a bench report, drawn with matplotlib from a validated results dict.

matplotlib is the `bench` extra (pip install 'slam_hf[bench]'). It is imported only when a plot is drawn, so
validating results and writing the Markdown leaderboard work without it. The figures are drawn on the Agg canvas
directly (no pyplot and its global state) under a fixed style, so the PNGs do not depend on the user's matplotlibrc.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .metrics import display_label, is_incomplete, metric_spec, quality_points
from .schema import validate_results

if TYPE_CHECKING:  # matplotlib is optional: imported where a plot is drawn
    from matplotlib.figure import Figure

_TAB10 = "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf"  # matplotlib's default colors
PALETTE = tuple(tuple(bytes.fromhex(code)) for code in _TAB10.split())  # as RGB bytes, as they land in the PNG
MARKERS = ("o", "s", "^", "D", "v", "h", "*")  # circle, square, triangle, diamond, triangle down, hexagon, star
_MARKER_SCALE = {"*": 1.5}  # matplotlib's star fills less of its size than the other markers
PLOT_INCOMPLETE_MARK = "(incomplete budget)"  # spelled out: a plot has no footnote to explain a dagger
DPI = 100  # `size` arguments are pixels: the figure is size / DPI inches, saved at DPI
TEXT, MUTED, GRID, FRAME = "#212121", "#606060", "#e4e4e4", "#787878"
TITLE_SIZE, SUBTITLE_SIZE, CAPTION_SIZE, LABEL_SIZE = 13, 9, 8.5, 9  # points
_PAD = 16  # pixels between the figure's edge and its text
_STYLE = {
    "font.size": 9,
    "text.color": TEXT,
    "axes.edgecolor": FRAME,
    "axes.labelcolor": TEXT,
    "axes.labelsize": 9.5,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "xtick.color": FRAME,
    "ytick.color": FRAME,
    "xtick.labelcolor": MUTED,
    "ytick.labelcolor": MUTED,
    "legend.frameon": False,
    "legend.fontsize": LABEL_SIZE,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@dataclass
class PlotReport:
    """What a plot function drew: the file, the models plotted (names) and {label: why not} for the rest."""

    path: str
    plotted: list[str]
    not_plotted: dict[str, str]


def model_style(results: Mapping, model: Mapping) -> tuple[tuple[int, int, int], str]:
    """(color as RGB bytes, matplotlib marker) of a model, by its position in results["models"], so both plots
    agree."""
    index = next(i for i, m in enumerate(results["models"]) if m["name"] == model["name"])
    return PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]


def _rgb(color: Sequence[int], tint: float = 0.0) -> tuple[float, ...]:
    """A PALETTE color as matplotlib's 0-1 RGB, blended towards white by `tint` (0 = unchanged)."""
    return tuple((c + (255 - c) * tint) / 255 for c in color)


def _literal(text: str) -> str:
    """`text` shown as written: a pair of "$" in a label would otherwise start matplotlib's math mode."""
    return text.replace("$", r"\$")


# --------------------------------------------------------------------------------------------------------------
# figure, frame and axes


def _style():
    """A context with the plots' fixed style (matplotlib's defaults plus _STYLE)."""
    try:
        import matplotlib.style
    except ImportError as err:
        raise ImportError("the bench plots need matplotlib: pip install 'slam_hf[bench]'") from err
    return matplotlib.style.context(["default", _STYLE])


def _new_figure(size: tuple[int, int]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> None:
    with _style():
        figure.savefig(path, format="png", dpi=DPI, pil_kwargs={"optimize": True})


def _text_size(renderer, text: str, size: float) -> tuple[float, float]:
    """(width, height) in pixels of one line of `text` at `size` points."""
    from matplotlib.font_manager import FontProperties

    width, height, _ = renderer.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width, height


def _wrap(renderer, text: str, size: float, width: float) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and _text_size(renderer, candidate, size)[0] > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + ([current] if current else [])


def _fit(renderer, text: str, size: float, width: float) -> str:
    """`text`, shortened with "…" until it fits `width` (a long label must not squeeze the plot away)."""
    if _text_size(renderer, text, size)[0] <= width:
        return text
    while len(text) > 1 and _text_size(renderer, text + "…", size)[0] > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _fit_lines(renderer, text: str, size: float, width: float, max_lines: int = 2) -> str:
    """`text` wrapped to `width` in at most `max_lines` lines, the last shortened with "…" where it is longer."""
    lines = _wrap(renderer, text, size, width)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
    return "\n".join(_fit(renderer, line, size, width) for line in lines)


def _frame(figure, title: str, subtitle: str, captions: Sequence[str]) -> None:
    """Title and subtitle at the top, captions at the bottom, all left-aligned and wrapped to the figure's width;
    the constrained layout fits the axes, their labels and any legend in between."""
    renderer = figure.canvas.get_renderer()
    width, height = figure.bbox.width, figure.bbox.height

    def put(y: float, text: str, size: float, color: str, valign: str):
        artist = figure.text(_PAD / width, y / height, _literal(text), fontsize=size, color=color, va=valign)
        return artist.get_window_extent(renderer)

    def wrapped(paragraphs: Sequence[str], size: float) -> str:
        return "\n".join(line for text in paragraphs for line in _wrap(renderer, text, size, width - 2 * _PAD))

    top = put(height - _PAD, wrapped([title], TITLE_SIZE), TITLE_SIZE, "black", "top").y0 - 6
    if subtitle:
        top = put(top, wrapped([subtitle], SUBTITLE_SIZE), SUBTITLE_SIZE, MUTED, "top").y0 - 8
    bottom = _PAD
    if captions:
        bottom = put(_PAD, wrapped(captions, CAPTION_SIZE), CAPTION_SIZE, MUTED, "bottom").y1 + 8
    figure.get_layout_engine().set(rect=(0, bottom / height, 1, (top - bottom) / height))


def _captions(results: Mapping, not_plotted: Mapping[str, str]) -> list[str]:
    captions = []
    incomplete = [m for m in results["models"] if is_incomplete(m)]
    if incomplete:
        planned = results["settings"]["train_tokens"]
        budgets = [f"{m['label']} ({m['budget']['train_tokens']:,} of {planned:,} tokens)" for m in incomplete]
        captions.append("incomplete budget (less training than planned): " + "; ".join(budgets))
    if not_plotted:
        captions.append("not plotted: " + "; ".join(f"{k} ({v})" for k, v in not_plotted.items()))
    return captions


def _short_number(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _readable_log_axis(axis, low: float, high: float) -> None:
    """Ticks a log axis at round numbers labelled 2k, 5k, ... (not 2×10³): evenly spaced values within one decade,
    1-2-5 in each decade up to three decades, powers of ten beyond."""
    from matplotlib import ticker

    decades = math.log10(high / low)
    if decades < 1:
        locator = ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
    else:
        locator = ticker.LogLocator(subs=(1.0, 2.0, 5.0) if decades < 3 else (1.0,))
    axis.set_major_locator(locator)
    axis.set_minor_locator(ticker.NullLocator())
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: _short_number(value)))


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color=MUTED)


# --------------------------------------------------------------------------------------------------------------
# loss curves


@dataclass
class _Losses:
    """What the loss plot draws of one model."""

    model: Mapping
    seeds: list[list[tuple[int, float]]]  # the training loss of each seed
    mean: list[tuple[int, float]]  # the training loss, mean over seeds
    evals: list[tuple[int, float]]  # the held-out loss, mean over seeds


def _finite_points(points) -> list[tuple[int, float]]:
    return [(step, loss) for step, loss in points if loss is not None and math.isfinite(loss)]


def _mean_curve(per_seed: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Mean over seeds at the steps every seed recorded (a seed that stopped early ends the mean there)."""
    if not per_seed:
        return []
    if len(per_seed) == 1:
        return per_seed[0]
    by_step = [dict(points) for points in per_seed]
    common = set(by_step[0]).intersection(*by_step[1:])
    return [(step, statistics.fmean(d[step] for d in by_step)) for step in sorted(common)]


def _loss_series(results: Mapping) -> tuple[list[_Losses], dict[str, str]]:
    series, not_plotted = [], {}
    for model in results["models"]:
        curves = [curve for _, curve in sorted(model["curves"].items(), key=lambda kv: int(kv[0]))]
        train = [points for points in (_finite_points(c["train"]) for c in curves) if points]
        evals = [points for points in (_finite_points(c["eval"]) for c in curves) if points]
        if not train and not evals:
            not_plotted[model["label"]] = "no finite loss recorded"
        else:
            series.append(_Losses(model, train, _mean_curve(train), _mean_curve(evals)))
    return series, not_plotted


def _loss_subtitle(results: Mapping, scale_note: str) -> str:
    seeds = len(results["settings"]["seeds"])
    if seeds > 1:
        subtitle = f"thin: each of {seeds} seeds; thick: mean over seeds (dashed: baselines); markers: held-out loss. "
    else:
        subtitle = "lines: training loss (dashed: baselines); markers: held-out loss. "
    subtitle += f"{results['settings']['train_tokens']:,} training tokens planned per model"
    return subtitle + (f"; {scale_note}" if scale_note else "")


def _loss_line_style(results: Mapping, model: Mapping) -> dict:
    color, marker = model_style(results, model)
    return dict(
        color=_rgb(color),
        linewidth=2.2,
        linestyle="--" if model["family"] == "baseline" else "-",
        marker=marker,
        markersize=7 * _MARKER_SCALE.get(marker, 1.0),
        markeredgecolor="white",
        markeredgewidth=1,
    )


def _draw_losses(ax, results: Mapping, series: list[_Losses]) -> None:
    several_seeds = len(results["settings"]["seeds"]) > 1
    for losses in series:  # every seed first, under all means
        color, _ = model_style(results, losses.model)
        for points in losses.seeds if several_seeds else []:
            ax.plot(*zip(*points), color=_rgb(color, tint=0.6), linewidth=0.8, zorder=1)
    for losses in series:
        style = _loss_line_style(results, losses.model)
        if len(losses.mean) > 1:
            ax.plot(*zip(*losses.mean), **{**style, "marker": None}, zorder=2)
        if losses.evals:
            ax.plot(*zip(*losses.evals), **{**style, "linestyle": "none"}, zorder=3)


def _loss_legend(figure, ax, results: Mapping, series: list[_Losses]) -> None:
    """Right of the plot: the model's line with its marker, then its label."""
    from matplotlib.lines import Line2D

    if not series:
        return
    renderer = figure.canvas.get_renderer()
    handles = [Line2D([], [], **_loss_line_style(results, losses.model)) for losses in series]
    labels = [display_label(losses.model, PLOT_INCOMPLETE_MARK) for losses in series]
    labels = [_literal(_fit_lines(renderer, label, LABEL_SIZE, figure.bbox.width * 0.25)) for label in labels]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, handlelength=3.5)


def _loss_axes(ax, results: Mapping, series: list[_Losses], log_y: bool, y_limits: tuple[float, float] | None):
    steps = [step for losses in series for curve in [*losses.seeds, losses.evals] for step, _ in curve] or [0, 1]
    ax.set_xlim(min(0, min(steps)), max(steps) if max(steps) > 0 else 1)
    if log_y:
        ax.set_yscale("log")
    if y_limits:
        ax.set_ylim(*y_limits)
    if log_y:
        _readable_log_axis(ax.yaxis, *ax.get_ylim())
    tokens_per_step = results["settings"]["batch_size"] * results["settings"]["sequence_length"]
    ax.set_xlabel(f"training step ({tokens_per_step:,} tokens per step)")
    ax.set_ylabel("loss (nats per token)")
    if not series:
        _no_data(ax, "no loss curves recorded")


def loss_curves_figure(
    results: Mapping,
    *,
    log_y: bool = False,
    size: tuple[int, int] = (1000, 600),
    y_limits: tuple[float, float] | None = None,
) -> tuple[Figure, list[str], dict[str, str]]:
    """The loss plot as a matplotlib Figure (see `plot_loss_curves`), the names of the models it shows and
    {label: why not} for the others."""
    validate_results(results)
    series, not_plotted = _loss_series(results)
    losses = [loss for s in series for curve in [*s.seeds, s.evals] for _, loss in curve]
    scale_note = "log y" if log_y else ""
    if log_y and any(loss <= 0 for loss in losses):
        log_y = False  # a zero loss cannot go on a log axis; say so in the subtitle rather than fail
        scale_note = "linear y (a loss <= 0 cannot be shown on a log scale)"
    with _style():
        figure = _new_figure(size)
        ax = figure.add_subplot()
        title = f"{results['title']}: training loss"
        _frame(figure, title, _loss_subtitle(results, scale_note), _captions(results, not_plotted))
        _draw_losses(ax, results, series)
        _loss_axes(ax, results, series, log_y, y_limits)
        _loss_legend(figure, ax, results, series)
    return figure, [s.model["name"] for s in series], not_plotted


def plot_loss_curves(
    results: Mapping,
    path,
    *,
    log_y: bool = False,
    size: tuple[int, int] = (1000, 600),
    y_limits: tuple[float, float] | None = None,
) -> PlotReport:
    """Training loss vs. step for every model: each seed thin, the mean over seeds thick (dashed for baselines),
    held-out evaluations as markers. `y_limits` fixes the y range (the data is clipped to it). `size` in pixels."""
    figure, plotted, not_plotted = loss_curves_figure(results, log_y=log_y, size=size, y_limits=y_limits)
    _save(figure, path)
    return PlotReport(str(path), plotted, not_plotted)


# --------------------------------------------------------------------------------------------------------------
# quality vs. throughput


@dataclass
class _Point:
    """One model on the quality plot: the means and the ends of the ± 1 std bars."""

    model: Mapping
    x: float
    y: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]


def _point(model: Mapping, x_metric: str, y_metric: str, log_y: bool) -> _Point:
    def spread(name: str, log: bool) -> tuple[float, tuple[float, float]]:
        mean, std = model["metrics"][name]["mean"], model["metrics"][name]["std"] or 0.0
        low = max(mean - std, mean * 1e-3) if log else mean - std  # a bar on a log axis ends above 0
        return mean, (low, mean + std)

    (x, x_range), (y, y_range) = spread(x_metric, True), spread(y_metric, log_y)
    return _Point(model, x, y, x_range, y_range)


def _quality_subtitle(results: Mapping, x_metric: str, y_metric: str) -> str:
    x_spec, y_spec = metric_spec(x_metric), metric_spec(y_metric)
    subtitle = "one point per model"
    if len(results["settings"]["seeds"]) > 1:
        subtitle += ", mean over seeds with ± 1 std bars"
    if x_spec.higher_is_better is None or y_spec.higher_is_better is None:
        return subtitle
    better = {True: "higher", False: "lower"}
    corner = f"{'top' if y_spec.higher_is_better else 'bottom'} {'right' if x_spec.higher_is_better else 'left'}"
    return subtitle + (
        f"; better: {corner} ({better[x_spec.higher_is_better]} {x_spec.label}, "
        f"{better[y_spec.higher_is_better]} {y_spec.label})"
    )


_MARKER_RADIUS = 6.0  # pixels


def _draw_points(ax, results: Mapping, points: list[_Point]) -> None:
    for point in points:
        color, marker = model_style(results, point.model)
        (x_low, x_high), (y_low, y_high) = point.x_range, point.y_range
        ax.errorbar(
            [point.x],
            [point.y],
            xerr=[[point.x - x_low], [x_high - point.x]] if x_high > point.x else None,
            yerr=[[point.y - y_low], [y_high - point.y]] if y_high > point.y else None,
            fmt=marker,
            color=_rgb(color),
            markersize=2 * _MARKER_RADIUS * 72 / DPI * _MARKER_SCALE.get(marker, 1.0),
            markeredgecolor="white",
            markeredgewidth=1.2,
            elinewidth=1.5,
            capsize=5,
            capthick=1.5,
        )


def _obstacles(ax, points: list[_Point]) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (x0, y0, x1, y1) of the markers and error bars, which no label may cover."""
    boxes = []
    for point in points:
        cx, cy = ax.transData.transform((point.x, point.y))
        r = _MARKER_RADIUS
        boxes.append((cx - r, cy - r, cx + r, cy + r))
        (left, _), (right, _) = ax.transData.transform([(point.x_range[0], point.y), (point.x_range[1], point.y)])
        (_, low), (_, high) = ax.transData.transform([(point.x, point.y_range[0]), (point.x, point.y_range[1])])
        boxes += [(left, cy - 5, right, cy + 5), (cx - 5, low, cx + 5, high)]
    return boxes


def _label_position(centre, text_size, area, taken) -> tuple[tuple[float, float], int]:
    """The lower-left corner of a label next to the marker at `centre`, and its cost: the first of eight positions
    around it that stays inside `area` and overlaps nothing `taken` (cost 0), else the one with the fewest
    overlaps (2 for leaving the area, 1 per box overlapped)."""
    (cx, cy), (w, h), gap = centre, text_size, _MARKER_RADIUS + 5
    right, left, above, below = cx + gap, cx - gap - w, cy + gap, cy - gap - h
    candidates = [(right, cy - h / 2), (left, cy - h / 2), (cx - w / 2, above), (cx - w / 2, below)]
    candidates += [(right, above), (right, below), (left, above), (left, below)]

    def cost(corner):
        x0, y0, x1, y1 = corner[0], corner[1], corner[0] + w, corner[1] + h
        outside = x0 < area.x0 or x1 > area.x1 or y0 < area.y0 or y1 > area.y1
        overlaps = sum(1 for o in taken if x0 < o[2] and o[0] < x1 and y0 < o[3] and o[1] < y1)
        return 2 * outside + overlaps

    best = min(candidates, key=cost)  # min keeps the earliest of equal costs
    return best, cost(best)


def _label_points(figure, ax, points: list[_Point]) -> None:
    """Labels next to the points. Placing them needs the final pixel positions, so the layout is done (and frozen)
    first."""
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()
    taken, area = _obstacles(ax, points), ax.get_window_extent(renderer)
    for point in points:
        centre = ax.transData.transform((point.x, point.y))
        placed = []  # (cost, text, size, corner): the whole label, then the model's name alone where that fits better
        for text in dict.fromkeys([_label_text(point.model), _label_text(point.model, short=True)]):
            size = _text_size(renderer, text, LABEL_SIZE)
            corner, cost = _label_position(centre, size, area, taken)
            placed.append((cost, text, size, corner))
        _, text, (w, h), (x0, y0) = min(placed, key=lambda p: p[0])
        taken.append((x0, y0, x0 + w, y0 + h))
        offset = (x0 - centre[0], y0 - centre[1])
        ax.annotate(_literal(text), (point.x, point.y), xytext=offset, textcoords="offset pixels", va="bottom")


def _label_text(model: Mapping, short: bool = False) -> str:
    """The model's label on the quality plot; `short`: without the description in parentheses, e.g. "Llama" for
    "Llama (standard transformer)"."""
    label = model["label"].split(" (")[0] if short else model["label"]
    return label + (f" {PLOT_INCOMPLETE_MARK}" if is_incomplete(model) else "")


def quality_figure(
    results: Mapping,
    *,
    y_metric: str = "heldout_perplexity",
    x_metric: str = "train_tokens_per_second",
    log_y: bool = False,
    size: tuple[int, int] = (1000, 640),
) -> tuple[Figure, list[str], dict[str, str]]:
    """The quality plot as a matplotlib Figure (see `plot_quality_vs_throughput`), the names of the models it shows
    and {label: why not} for the others."""
    validate_results(results)
    models, not_plotted = quality_points(results, x_metric, y_metric)
    points = [_point(model, x_metric, y_metric, log_y) for model in models]
    x_label, y_label = metric_spec(x_metric).label, metric_spec(y_metric).label
    with _style():
        figure = _new_figure(size)
        ax = figure.add_subplot()
        title = f"{results['title']}: {y_label} vs. {x_label}"
        _frame(figure, title, _quality_subtitle(results, x_metric, y_metric), _captions(results, not_plotted))
        ax.set_xscale("log")
        ax.set_yscale("log" if log_y else "linear")
        _draw_points(ax, results, points)
        ax.relim()  # from the markers and the bars' caps: matplotlib 3.8 leaves a log axis' error bar limits too wide
        ax.margins(x=0.08, y=0.1)
        ax.set_xlabel(f"{x_label} (log scale)")
        ax.set_ylabel(y_label + (" (log scale)" if log_y else ""))
        _readable_log_axis(ax.xaxis, *ax.get_xlim())
        if log_y:
            _readable_log_axis(ax.yaxis, *ax.get_ylim())
        if not points:
            _no_data(ax, "no model has both metrics")
        _label_points(figure, ax, points)
    return figure, [point.model["name"] for point in points], not_plotted


def plot_quality_vs_throughput(
    results: Mapping,
    path,
    *,
    y_metric: str = "heldout_perplexity",
    x_metric: str = "train_tokens_per_second",
    log_y: bool = False,
    size: tuple[int, int] = (1000, 640),
) -> PlotReport:
    """One labelled point per model: x = training tokens/s (log scale), y = held-out perplexity (or `y_metric`, e.g.
    "heldout_loss"), with ± std error bars where there are several seeds. Models lacking either metric are listed
    under the plot as "not plotted". `size` in pixels."""
    kwargs = dict(y_metric=y_metric, x_metric=x_metric, log_y=log_y, size=size)
    figure, plotted, not_plotted = quality_figure(results, **kwargs)
    _save(figure, path)
    return PlotReport(str(path), plotted, not_plotted)
