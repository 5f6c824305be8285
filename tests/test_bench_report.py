"""slam_hf.bench.report: results validation, the Markdown leaderboard and the PNG plots, on synthetic results."""

import copy
import json
import math
import statistics

import pytest
from PIL import Image, ImageStat

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
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values, "n": len(values)}  # fmt: skip


def curves(final_loss, seed, steps=STEPS, every=20):
    """An exponential decay from ~ln(vocab) to final_loss, with a little seed-dependent wobble."""

    def loss(step):
        return final_loss + (6.2 - final_loss) * math.exp(-step / 12) + 0.04 * math.sin(step * (1.3 + seed))

    return {"train": [[step, loss(step)] for step in range(1, steps + 1)],
            "eval": [[step, loss(step) + 0.1] for step in range(every, steps + 1, every)]}  # fmt: skip


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
        "name": name, "label": label, "class": f"{label.replace(' ', '')}ForCausalLM", "family": family,
        "notes": f"{label} at the shared shape.",
        "budget": {"train_tokens": STEPS * 8 * 64, "steps": STEPS, "complete": True, "reason": None},
        "metrics": metrics,
        "curves": {str(seed): curves(loss, seed) for seed in SEEDS},
    }  # fmt: skip
    for key, value in overrides.items():
        entry[key] = value
    return entry


def make_results():
    slam_v2 = model("slam-v2", "SLAM v2", "slam", 3.10, 21000, 2.4e6)
    slam_v1 = model("slam-v1", "SLAM v1", "slam", 3.30, 9000, 2.3e6)
    # Stopped by the time cap after 40 of 60 steps, and its generation could not be measured.
    slam_v1["budget"] = {"train_tokens": 40 * 8 * 64, "steps": 40, "complete": False,
                         "reason": "stopped by the 600 s per-model time cap after 40 of 60 steps"}  # fmt: skip
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
        },  # fmt: skip
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
    return sum(count for count, rgb in image.getcolors(image.width * image.height)
               if max(abs(a - b) for a, b in zip(rgb, color)) <= tolerance)  # fmt: skip


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
