"""slam_hf.bench.report: results validation, the Markdown leaderboard and the PNG plots, on synthetic results."""

import copy
import json
import math
import statistics
import subprocess
import sys

import pytest
from PIL import Image, ImageStat

from slam_hf.bench import plots
from slam_hf.bench import report as bench_report
from slam_hf.bench.report import (
    PALETTE,
    plot_loss_curves,
    plot_quality_vs_throughput,
    render_markdown,
    validate_results,
    write_reports,
)

SEEDS = (0, 1)
STEPS = 60


def measured(values):
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "values": values, "n": len(values)}


def curves(final_loss, seed, steps=STEPS, every=20):
    """An exponential decay from ~ln(vocab) to final_loss, with a little seed-dependent wobble."""

    def loss(step):
        return final_loss + (6.2 - final_loss) * math.exp(-step / 12) + 0.04 * math.sin(step * (1.3 + seed))

    train = [[step, loss(step)] for step in range(1, steps + 1)]
    return {"train": train, "eval": [[step, loss(step) + 0.1] for step in range(every, steps + 1, every)]}


def model(name, label, family, loss, tokens_per_second, params, **overrides):
    losses = [loss, loss + 0.02]
    metrics = {
        "total_parameters": measured([params] * 2),
        "active_parameters": measured([params * 0.8] * 2),
        "train_peak_memory_bytes": measured([150e6, 152e6]),
        "inference_peak_memory_bytes": measured([40e6, 41e6]),
        "heldout_loss": measured(losses),
        "heldout_perplexity": measured([math.exp(v) for v in losses]),
        "heldout_top1_accuracy": measured([0.31, 0.315]),
        "train_tokens_per_second": measured([tokens_per_second, tokens_per_second * 1.03]),
        "inference_latency_ms_median": measured([12.5, 12.9]),
        "generation_tokens_per_second": measured([210.0, 205.0]),
        "kv_cache_bytes_per_token": measured([4096, 4096]),
        "cache_fixed_bytes": measured([0, 0]),
        "loss_spikes": measured([0, 1]),
        "loss_curve_roughness": measured([0.011, 0.013]),
    }
    entry = {
        "name": name,
        "label": label,
        "class": f"{label.replace(' ', '')}ForCausalLM",
        "family": family,
        "notes": f"{label} at the shared shape.",
        "budget": {"train_tokens": STEPS * 8 * 64, "steps": STEPS, "complete": True, "reason": None},
        "metrics": metrics,
        "curves": {str(seed): curves(loss, seed) for seed in SEEDS},
    }
    for key, value in overrides.items():
        entry[key] = value
    return entry


def make_results():
    slam_v2 = model("slam-v2", "SLAM v2", "slam", 3.10, 21000, 2.4e6)
    slam_v1 = model("slam-v1", "SLAM v1", "slam", 3.30, 9000, 2.3e6)
    # Stopped by the time cap after 40 of 60 steps, and its generation could not be measured.
    reason = "stopped by the 600 s per-model time cap after 40 of 60 steps"
    slam_v1["budget"] = {"train_tokens": 40 * 8 * 64, "steps": 40, "complete": False, "reason": reason}
    slam_v1["metrics"]["generation_tokens_per_second"] = {"not_measured": "generate() unsupported by this head"}
    slam_v1["curves"] = {str(seed): curves(3.30, seed, steps=40) for seed in SEEDS}
    llama = model("llama", "Llama", "baseline", 3.20, 30000, 2.4e6)
    # No training throughput: must be left out of the quality plot and said so.
    gpt2 = model("gpt2", "GPT-2", "baseline", 3.40, 0, 2.5e6)
    gpt2["metrics"]["train_tokens_per_second"] = {"not_measured": "timer unavailable in this synthetic run"}
    return {
        "schema": "slam_hf.bench/1",
        "title": "Synthetic bench",
        "created": "2026-05-09T12:00:00+00:00",
        "command": "slam-hf bench --config configs/bench/smoke.yaml --output-dir runs/bench-smoke",
        "duration_seconds": 754.2,
        "machine": {"description": "CPU: test CPU, 2 logical cores", "device": "cpu", "torch_threads": 2},
        "software": {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0", "slam_hf": "0.1.0"},
        "settings": {
            "shape": {"hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 512, "num_hidden_layers": 2},
            "vocab_size": 512,
            "batch_size": 8,
            "sequence_length": 64,
            "learning_rate": 3e-4,
            "optimizer": "AdamW (torch)",
            "scheduler": "linear, warmup ratio 0.1",
            "seeds": list(SEEDS),
            "train_tokens": STEPS * 8 * 64,
            "epochs": 1.5,
            "eval_tokens": 16384,
            "data": "Shakespeare (synthetic)",
        },
        "models": [slam_v2, slam_v1, llama, gpt2],
    }


@pytest.fixture
def results():
    return make_results()


def _model(results, name):
    return next(m for m in results["models"] if m["name"] == name)


def test_synthetic_results_are_valid(results):
    validate_results(results)


@pytest.mark.parametrize("schema", [None, "slam_hf.bench/0", "bench"])
def test_wrong_or_missing_schema_is_rejected(results, schema):
    if schema is None:
        del results["schema"]
    else:
        results["schema"] = schema
    with pytest.raises(ValueError, match="schema"):
        validate_results(results)


def test_bare_zero_metric_is_rejected(results):
    _model(results, "llama")["metrics"]["generation_tokens_per_second"] = 0
    with pytest.raises(ValueError, match=r"models\[2\] \(llama\)\.metrics\.generation_tokens_per_second.*bare number"):
        validate_results(results)


def test_inconsistent_mean_is_rejected(results):
    _model(results, "slam-v2")["metrics"]["heldout_loss"]["mean"] = 2.5
    with pytest.raises(ValueError, match=r"slam-v2\)\.metrics\.heldout_loss\.mean"):
        validate_results(results)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m["metrics"]["heldout_loss"].update(n=3), r"heldout_loss\.n"),
        (lambda m: m["metrics"]["heldout_loss"].update(std=0.5), r"heldout_loss\.std"),
        (lambda m: m["metrics"]["heldout_loss"]["values"].__setitem__(0, float("nan")), r"heldout_loss\.values\[0\]"),
        (lambda m: m["metrics"].update(heldout_loss={"not_measured": ""}), r"heldout_loss\.not_measured"),
        (lambda m: m["metrics"].update(heldout_loss=None), r"\.metrics\.heldout_loss"),
        (lambda m: m["budget"].update(complete=False), r"budget\.reason"),
        (lambda m: m["budget"].update(train_tokens=100), r"budget\.complete"),
        (lambda m: m["curves"]["0"]["train"].reverse(), r"curves\['0'\]\.train"),
        (lambda m: m.update(family="other"), r"\.family"),
    ],
)
def test_each_broken_field_is_named(results, change, field):
    change(_model(results, "slam-v2"))
    with pytest.raises(ValueError, match=field):
        validate_results(results)


def test_markdown_leaderboard(results):
    text = render_markdown(results)
    table = [line for line in text.splitlines() if line.startswith("| **") and "family" not in line]
    rows = [line for line in table if line.split("|")[2].strip() in ("SLAM", "baseline")]
    # One row per model, sorted by held-out loss, the incomplete one marked.
    assert [row.split("|")[1].strip() for row in rows] == ["**SLAM v2**", "**Llama**", "**SLAM v1** †", "**GPT-2**"]
    assert "**3.110 ± 0.014**" in rows[0]  # held-out loss, mean ± sample std over the two seeds
    assert "n/m [1]" in rows[2] and "n/m [2]" in rows[3]  # numbered in table order, the reasons listed below
    assert "- **[1]** generate() unsupported by this head (SLAM v1: `generation_tokens_per_second`)" in text
    assert "- **[2]** timer unavailable in this synthetic run (GPT-2: `train_tokens_per_second`)" in text
    assert "**† Incomplete budget" in text
    assert "> - **SLAM v1**: 20,480 tokens (66.7%), 40 steps: stopped by the 600 s per-model time cap" in text
    assert "**2.40M / 1.92M**" not in text  # sizes are never "best"
    assert "2.40M / 1.92M" in rows[0]
    assert "**30,450 ± 636**" in text  # best training throughput in bold
    assert results["command"] in text and "2 torch threads" in text and "12 min 34 s" in text
    assert "### " not in text and "## Metric definitions" in text and "(`loss_curve_roughness`;" in text
    for entry in results["models"]:
        assert entry["notes"] in text


def test_settings_beyond_the_schema_are_listed(results):
    results["settings"].update(budget={"epochs": 1}, max_train_seconds=None)
    results["machine"]["platform"] = "Linux-test"
    text = render_markdown(results)
    assert "| **`budget`** | epochs 1 |" in text and "| **`max_train_seconds`** | none |" in text
    assert "platform: Linux-test" in text


def test_unknown_metrics_are_rendered_generically(results):
    for entry in results["models"]:
        entry["metrics"]["compile_seconds"] = measured([3.25, 3.75])
    text = render_markdown(results)
    assert "compile seconds" in text and "3.50 ± 0.35" in text
    assert "(`compile_seconds`; number; no better direction)" in text


def _color_pixels(image, color, tolerance=12):
    colors = image.getcolors(image.width * image.height)
    return sum(count for count, rgb in colors if max(abs(a - b) for a, b in zip(rgb, color)) <= tolerance)


def test_write_reports(results, tmp_path):
    paths = write_reports(results, tmp_path)
    assert set(paths) == {"results", "leaderboard", "loss_curves", "quality_vs_throughput"}
    with open(paths["results"], encoding="utf-8") as f:
        assert json.load(f) == results
    leaderboard = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    assert "![Training loss per step](loss_curves.png)" in leaderboard
    assert "Not plotted: GPT-2 (train_tokens_per_second not measured: timer unavailable" in leaderboard
    for key, size in (("loss_curves", (1000, 600)), ("quality_vs_throughput", (1000, 640))):
        with Image.open(paths[key]) as image:
            assert image.format == "PNG" and image.size == size
            image = image.convert("RGB")
            assert ImageStat.Stat(image.convert("L")).stddev[0] > 5  # not blank (a blank image has 0)
            plotted = range(4) if key == "loss_curves" else (0, 1, 2)
            for index in plotted:
                assert _color_pixels(image, PALETTE[index]) > 40, (key, results["models"][index]["name"])


def test_quality_plot_lists_models_without_both_metrics(results, tmp_path):
    report = plot_quality_vs_throughput(results, tmp_path / "quality.png")
    assert report.plotted == ["slam-v2", "slam-v1", "llama"]
    assert list(report.not_plotted) == ["GPT-2"]
    assert "timer unavailable" in report.not_plotted["GPT-2"]
    with Image.open(report.path) as image:
        assert _color_pixels(image.convert("RGB"), PALETTE[3]) == 0  # GPT-2's color appears nowhere


def test_loss_plot_with_diverged_seed_and_linear_axis(results, tmp_path):
    curve = _model(results, "llama")["curves"]["1"]["train"]
    curve[-1][1] = float("nan")  # the step where a run diverged
    report = plot_loss_curves(results, tmp_path / "loss.png", log_y=False, size=(640, 400))
    assert report.plotted == [m["name"] for m in results["models"]] and not report.not_plotted
    with Image.open(report.path) as image:
        assert image.size == (640, 400)
    # The diverged point is left out: that seed's line stops a step early, and so does the mean over seeds.
    figure, _, _ = plots.loss_curves_figure(results)
    llama_lines = _lines_of(figure.axes[0], PALETTE[2]) + _lines_of(figure.axes[0], PALETTE[2], tint=0.6)
    assert sorted(max(line.get_xdata()) for line in llama_lines) == [STEPS - 1, STEPS - 1, STEPS, STEPS]
    # results.json stays strict JSON: the NaN is stored as null, which validates.
    stored = json.loads(bench_report.dumps_results(results))
    assert stored["models"][2]["curves"]["1"]["train"][-1] == [STEPS, None]
    validate_results(stored)


def test_inputs_are_not_modified(results, tmp_path):
    before = copy.deepcopy(results)
    write_reports(results, tmp_path)
    assert results == before


def test_caveats_are_validated_rendered_and_added_on_re_render(results, tmp_path):
    from slam_hf.bench.report import main as report_main

    bad = copy.deepcopy(results)
    bad["caveats"] = ["ok", ""]
    with pytest.raises(ValueError, match="caveats"):
        validate_results(bad)
    source = tmp_path / "run"
    write_reports(results, source)
    assert "Caveats" not in (source / "leaderboard.md").read_text(encoding="utf-8")
    out = tmp_path / "annotated"
    note = "Throughput columns were measured while other work shared the CPU."
    assert report_main([str(source / "results.json"), "--output-dir", str(out), "--caveat", note]) == 0
    annotated = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert annotated["caveats"] == [note] and annotated["models"] == results["models"]
    assert f"- {note}" in (out / "leaderboard.md").read_text(encoding="utf-8")


def _lines_of(ax, color, tint=0.0):
    """The lines drawn in `color` (a PALETTE entry; `tint`: blended towards white as for single seeds)."""
    rgb = pytest.approx([(c + (255 - c) * tint) / 255 for c in color])
    return [line for line in ax.get_lines() if list(line.get_color()) == rgb]


def test_loss_figure_draws_seeds_means_and_evaluations_in_each_models_style(results):
    figure, plotted, not_plotted = plots.loss_curves_figure(results, log_y=True)
    ax = figure.axes[0]
    assert plotted == ["slam-v2", "slam-v1", "llama", "gpt2"] and not not_plotted
    assert ax.get_yscale() == "log"
    for index, entry in enumerate(results["models"]):
        assert plots.model_style(results, entry) == (PALETTE[index], plots.MARKERS[index])
        (mean,) = [line for line in _lines_of(ax, PALETTE[index]) if line.get_linestyle() != "None"]
        (evals,) = [line for line in _lines_of(ax, PALETTE[index]) if line.get_linestyle() == "None"]
        assert len(_lines_of(ax, PALETTE[index], tint=0.6)) == len(SEEDS)  # one thin line per seed
        assert mean.get_linestyle() == ("--" if entry["family"] == "baseline" else "-")
        # The thick line is the mean over seeds, step by step; the markers the mean held-out loss.
        per_seed = [dict(entry["curves"][str(seed)]["train"]) for seed in SEEDS]
        steps, losses = mean.get_data()
        assert list(steps) == sorted(per_seed[0])
        assert list(losses) == pytest.approx([statistics.fmean(curve[step] for curve in per_seed) for step in steps])
        eval_points = [point for seed in SEEDS for point in entry["curves"][str(seed)]["eval"]]
        assert evals.get_marker() == plots.MARKERS[index]
        assert list(evals.get_xdata()) == sorted({step for step, _ in eval_points})
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["SLAM v2", "SLAM v1 (incomplete budget)", "Llama", "GPT-2"]
    title, subtitle, caption = (text.get_text() for text in figure.texts)
    assert title == "Synthetic bench: training loss"
    assert subtitle.startswith("thin: each of 2 seeds; thick: mean over seeds") and subtitle.endswith("; log y")
    assert caption == "incomplete budget (less training than planned): SLAM v1 (20,480 of 30,720 tokens)"
    assert ax.get_xlabel() == "training step (512 tokens per step)" and ax.get_ylabel() == "loss (nats per token)"


def test_a_loss_of_zero_keeps_the_loss_axis_linear_and_says_why(results):
    _model(results, "llama")["curves"]["0"]["train"][10][1] = 0.0
    figure, _, _ = plots.loss_curves_figure(results, log_y=True)
    assert figure.axes[0].get_yscale() == "linear"
    subtitle = figure.texts[1].get_text().replace("\n", " ")  # wrapped to the figure's width
    assert subtitle.endswith("; linear y (a loss <= 0 cannot be shown on a log scale)")


def test_quality_figure_marks_bars_and_labels_each_model(results):
    figure, plotted, not_plotted = plots.quality_figure(results)
    ax = figure.axes[0]
    assert plotted == ["slam-v2", "slam-v1", "llama"] and list(not_plotted) == ["GPT-2"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert len(ax.containers) == len(plotted)
    x_bars = []
    for container, name in zip(ax.containers, plotted):
        entry = _model(results, name)
        x, y = entry["metrics"]["train_tokens_per_second"], entry["metrics"]["heldout_perplexity"]
        point, _, (x_bar, y_bar) = container.lines
        assert point.get_marker() == plots.model_style(results, entry)[1]
        assert (point.get_xdata()[0], point.get_ydata()[0]) == (x["mean"], y["mean"])
        (x_low, _), (x_high, _) = x_bar.get_segments()[0]
        (_, y_low), (_, y_high) = y_bar.get_segments()[0]
        assert (x_low, x_high) == pytest.approx((x["mean"] - x["std"], x["mean"] + x["std"]))  # ± 1 std
        x_bars.append((x_low, x_high))
        assert (y_low, y_high) == pytest.approx((y["mean"] - y["std"], y["mean"] + y["std"]))
    lowest = min(low for low, _ in x_bars)
    assert lowest / 2 < ax.get_xlim()[0] < lowest  # the x axis spans the error bars, plus a margin
    labels = {text.get_text(): text.get_window_extent() for text in ax.texts}
    assert set(labels) == {"SLAM v2", "SLAM v1 (incomplete budget)", "Llama"}
    boxes = list(labels.values())
    for i, box in enumerate(boxes):  # every label readable: inside the figure and clear of the others
        assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1 and figure.bbox.y0 <= box.y0 <= figure.bbox.y1
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])
    assert ax.get_xlabel() == "train tokens/s (log scale)" and ax.get_ylabel() == "perplexity"
    assert "better: bottom right (higher train tokens/s, lower perplexity)" in figure.texts[1].get_text()


def test_labels_with_dollar_signs_are_not_math(results, tmp_path):
    from matplotlib.cbook import is_math_text

    _model(results, "slam-v2")["label"] = "SLAM $v2$"
    figure, _, _ = plots.quality_figure(results)
    (label,) = [text for text in figure.axes[0].texts if "v2" in text.get_text()]
    assert label.get_text() == r"SLAM \$v2\$" and not is_math_text(label.get_text())  # shown as typed
    plots.plot_loss_curves(results, tmp_path / "loss.png")  # renders


def test_markdown_works_without_matplotlib_and_the_plots_say_how_to_install_it(results, monkeypatch, tmp_path):
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # what `import` sees where matplotlib is not installed
    assert "## Leaderboard" in render_markdown(results)
    for plot in (plot_loss_curves, plot_quality_vs_throughput):
        with pytest.raises(ImportError, match=r"pip install 'slam_hf\[bench\]'"):
            plot(results, tmp_path / "plot.png")


def test_importing_the_reports_needs_no_matplotlib():
    code = "import sys; sys.modules['matplotlib'] = None; import slam_hf.bench.report, slam_hf.bench.plots"
    subprocess.run([sys.executable, "-c", code], check=True)
