"""`slam-hf bench` end to end at the smoke shape (configs/bench/smoke.yaml), plus its config errors.

The smoke run trains every model for a few steps in worker subprocesses and checks what the issue asks of the
benchmark: every metric of every model is measured (a real number, never a zero standing in for "not measured"),
the numbers are consistent with each other, and the JSON, Markdown and PNG reports are written.
"""

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from slam_hf.bench.runner import MEASURED, load_bench_config, loss_stability, planned_steps
from slam_hf.cli import main

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "bench" / "smoke.yaml"
PUBLISHED = REPO / "configs" / "bench" / "published.yaml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-smoke")
    assert main(["bench", "--config", str(SMOKE), "--output-dir", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_run_measures_every_metric_of_every_model(smoke_run):
    out, results = smoke_run
    config = load_bench_config(SMOKE)
    assert [m["name"] for m in results["models"]] == config["models"]
    for model in results["models"]:
        name = model["name"]
        assert model["budget"]["complete"], (name, model["budget"])
        assert model["budget"]["steps"] == config["budget"]["steps"]
        metrics = model["metrics"]
        assert set(MEASURED) <= set(metrics), name
        for metric in MEASURED:
            entry = metrics[metric]
            assert "not_measured" not in entry, (name, metric, entry)
            assert entry["n"] == len(config["seeds"]) and all(math.isfinite(v) for v in entry["values"]), (name, metric)
        # Consistency between metrics.
        assert 0 < metrics["active_parameters"]["mean"] <= metrics["total_parameters"]["mean"], name
        assert math.isclose(
            metrics["heldout_perplexity"]["mean"], math.exp(metrics["heldout_loss"]["mean"]), rel_tol=1e-9
        )
        assert 0 <= metrics["heldout_top1_accuracy"]["mean"] <= 1
        assert metrics["heldout_loss"]["mean"] < math.log(results["settings"]["vocab_size"]) + 1, name
        for positive in (
            "train_peak_memory_bytes",
            "inference_peak_memory_bytes",
            "train_tokens_per_second",
            "inference_latency_ms_median",
            "generation_tokens_per_second",
            "kv_cache_bytes_per_token",
        ):
            assert metrics[positive]["mean"] > 0, (name, positive)
        curve = model["curves"]["0"]
        assert len(curve["train"]) == config["budget"]["steps"]
        assert curve["eval"][-1][0] == config["budget"]["steps"]
    rows = {m["name"]: m for m in results["models"]}
    # MoE models activate only part of their weights per token; the dense baseline all of them.
    assert rows["llama"]["metrics"]["active_parameters"]["mean"] == rows["llama"]["metrics"]["total_parameters"]["mean"]
    for moe in ("mixtral", "deepseek_v3", "hunyuan_moe", "slam_v2"):
        assert rows[moe]["metrics"]["active_parameters"]["mean"] < rows[moe]["metrics"]["total_parameters"]["mean"], moe
    # The latent loop holds Llama's weights (its shared core counted once; its idle exit head not active) but runs
    # its core twice: 2L - 2 = 6 cache layers per token to Llama's 4.
    loop, llama = rows["slam_loop"]["metrics"], rows["llama"]["metrics"]
    assert loop["active_parameters"]["mean"] == llama["total_parameters"]["mean"] < loop["total_parameters"]["mean"]
    assert loop["kv_cache_bytes_per_token"]["mean"] == 1.5 * llama["kv_cache_bytes_per_token"]["mean"]
    assert (
        "2L - 2" in rows["slam_loop"]["notes"] and "equal parameters, not equal compute" in rows["slam_loop"]["notes"]
    )


def test_smoke_run_writes_reports(smoke_run):
    out, results = smoke_run
    assert results["schema"] == "slam_hf.bench/1"
    assert results["software"]["transformers"] and results["machine"]["description"]
    text = (out / "leaderboard.md").read_text()
    for model in results["models"]:
        assert model["label"] in text
    assert results["command"] in text
    for name in ("loss_curves.png", "quality_vs_throughput.png"):
        with Image.open(out / name) as image:
            assert image.width > 300 and image.height > 200


def test_stability_metrics():
    smooth = [5.0 - 0.01 * i for i in range(40)]
    spiky = list(smooth)
    spiky[25] = 9.0
    assert loss_stability(smooth)["loss_spikes"] == 0
    assert loss_stability(spiky)["loss_spikes"] == 1
    assert loss_stability(spiky)["loss_curve_roughness"] > 10 * loss_stability(smooth)["loss_curve_roughness"]


def test_published_config_is_the_published_shape():
    config = load_bench_config(PUBLISHED)
    shape = config["shape"]
    assert (
        shape["hidden_size"],
        shape["num_attention_heads"],
        shape["intermediate_size"],
        shape["num_hidden_layers"],
    ) == (512, 16, 2048, 6)
    assert (config["vocab_size"], config["batch_size"], config["sequence_length"]) == (10000, 8, 128)
    assert config["learning_rate"] == 5e-5 and config["budget"] == {"epochs": 5}
    assert planned_steps(config, {"train_rows": 1000}) == 5 * 1000 // 8


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"colour": 1}, "unknown key(s) colour"),
        ({"models": ["gpt5"]}, "`models` must list some of"),
        ({"budget": {"epochs": 1, "steps": 3}}, "`budget` must be exactly one of"),
        ({"seeds": []}, "`seeds` must be a non-empty list"),
        ({"batch_size": 0}, "`batch_size` must be positive"),
        ({"compile": ["llama"], "models": ["slam_v1"]}, "`compile` names models not benchmarked"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, change, fragment):
    doc = yaml.safe_load(SMOKE.read_text())
    doc.update(change)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--config", str(path), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_resume_reuses_finished_runs_and_only_those(tmp_path, capsys):
    """--resume reports a finished (model, seed) from its worker results and runs only what is missing; a changed
    setting makes the old results unusable."""
    from slam_hf.bench.runner import _finished_result

    out = tmp_path / "bench"
    base = ["bench", "--config", str(SMOKE), "--output-dir", str(out), "--models", "slam_v1", "--steps", "2"]
    assert main([*base, "--seeds", "0"]) == 0
    first = json.loads((out / "results.json").read_text())
    work = out / "work"
    seed0_out = work / "slam_v1-seed0-train.out.json"
    stamp = seed0_out.stat().st_mtime_ns
    capsys.readouterr()

    assert main([*base, "--seeds", "0,1", "--resume"]) == 0
    log = capsys.readouterr().out
    assert "slam_v1-seed0: reusing the finished train and inference results" in log
    assert "slam_v1-seed1 train:" in log and "slam_v1-seed0 train:" not in log
    assert seed0_out.stat().st_mtime_ns == stamp
    second = json.loads((out / "results.json").read_text())
    assert "caveats" not in first
    assert second["caveats"][0].startswith("1 of 2 (model, seed) runs were reused")
    (row1,), (row2,) = first["models"], second["models"]
    assert row2["curves"]["0"] == row1["curves"]["0"]
    loss = row2["metrics"]["heldout_loss"]
    assert loss["n"] == 2 and loss["values"][0] == row1["metrics"]["heldout_loss"]["values"][0]

    spec = json.loads((work / "slam_v1-seed0-train.spec.json").read_text())
    assert _finished_result("train", spec, work, "slam_v1-seed0") is not None
    assert _finished_result("train", {**spec, "steps": 3}, work, "slam_v1-seed0") is None
    assert (
        _finished_result("train", {**spec, "software": {**spec["software"], "torch": "0"}}, work, "slam_v1-seed0")
        is None
    )
