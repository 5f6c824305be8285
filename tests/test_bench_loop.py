"""benchmarks/bench_loop.py's suite (slam_hf.bench.suites.loop*) end to end at a tiny size: the bench's data, both
models trained interleaved, every exit curve with calibration, decoding, both cache modes, the targets and tables."""

import json
import math
from pathlib import Path

import pytest
import torch
from slam_common import load_script

from slam_hf.bench.suites.loop import LoopBenchSettings, build_models
from slam_hf.bench.suites.loop_exits import EXIT_CURVES, frontier
from slam_hf.bench.suites.loop_report import REPORT_KEYS, markdown_tables, run_loop_bench, write_results

TINY = LoopBenchSettings(
    steps=3,
    confidence_steps=2,
    vocab_size=512,
    sequence_length=32,
    batch_size=4,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    eval_rows=8,
    calibration_rows=8,
    budgets=(0.005, 0.05, 10.0),
    prompt_tokens=8,
    new_tokens=4,
    decode_repeats=1,
    teacher_forced_rows=4,
    teacher_forced_prefix=8,
    log_every=0,
)
BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loop.py"


@pytest.fixture(scope="module")
def results():
    threads = torch.get_num_threads()
    try:
        return run_loop_bench(TINY, log=lambda text="": None, command="test")
    finally:
        torch.set_num_threads(threads)


def test_report_has_every_key_and_target(results):
    assert set(REPORT_KEYS) <= set(results)
    expected = {
        "loop_below_llama",
        "looping_buys_depth",
        "calibrated_exit_saving",
        "confidence_beats_untrained",
        "improvement_vs_absolute",
    }
    expected |= {"decode_speedup", "batch_equals_alone", "shared_cache_gap"}
    assert set(results["targets"]) == expected
    for name, target in results["targets"].items():
        assert target["met"] in (True, False) or (name == "improvement_vs_absolute" and target["met"] is None)
    json.loads(json.dumps(results, default=str))  # serialisable


def test_same_unique_parameters_and_same_training(results):
    counts, training = results["parameters"], results["training"]
    assert counts["loop_without_confidence"] == counts["llama"]
    assert counts["loop_confidence"] == 2 * TINY.hidden_size + 1  # norm weight + head weight and bias
    assert training["llama"]["steps"] == training["loop"]["steps"] == training["loop_depth1"]["steps"] == TINY.steps
    assert training["loop_depth1"]["depth_counts"] == {"1": TINY.steps}
    assert sum(training["loop"]["depth_counts"].values()) == TINY.steps
    assert {int(d) for d in training["loop"]["depth_counts"]} <= set(range(1, TINY.loop_max_iterations + 1))
    assert training["absolute_head"]["steps"] == TINY.confidence_steps
    assert all(math.isfinite(loss) for _, loss in training["loop"]["loss_curve"])


def test_control_starts_from_the_loop_models_weights():
    data = {"vocab_size": 64, "special_ids": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}
    models = build_models(TINY, data)
    assert models["loop_depth1"].config.loop_max_iterations == 1
    assert models["loop"].config.loop_max_iterations == TINY.loop_max_iterations
    loop, control = models["loop"].state_dict(), models["loop_depth1"].state_dict()
    assert loop.keys() == control.keys() and all(torch.equal(loop[k], control[k]) for k in loop)


def test_curves_and_calibration(results):
    exits, n = results["exits"], TINY.loop_max_iterations
    fixed = exits["curves"]["fixed_depth"]
    assert [p["mean_iterations"] for p in fixed] == list(range(1, n + 1))
    assert exits["full_depth"] == fixed[-1]
    heldout = results["heldout"]
    assert heldout["loop_by_depth"] == [p["loss"] for p in fixed]
    assert heldout["loop_vs_depth1_control"] == pytest.approx(heldout["loop_full_depth"] / heldout["loop_depth1"] - 1)
    assert 0 <= heldout["share_loss_below_2"] <= 1 and 0 <= heldout["mean_absolute_target"] <= 1
    for name, (_, _, grid) in EXIT_CURVES.items():
        points = exits["curves"][name]
        assert grid is None or [p["threshold"] for p in points] == list(grid)
        assert all(1 <= p["mean_iterations"] <= n and math.isfinite(p["loss"]) for p in points)
    for name, by_budget in exits["frontiers"].items():  # a larger budget admits more points: never more iterations
        iterations = [by_budget[str(b)]["mean_iterations"] for b in TINY.budgets]
        assert iterations == sorted(iterations, reverse=True), name
        for budget in TINY.budgets:
            assert by_budget[str(budget)]["loss"] <= exits["full_depth"]["loss"] * (1 + budget)
    for calibration in exits["calibrations"].values():
        scored = calibration["heldout"]
        assert calibration["heldout_loss_increase"] == pytest.approx(scored["loss"] / exits["full_depth"]["loss"] - 1)
        assert calibration["heldout_iteration_saving"] == pytest.approx(1 - scored["mean_iterations"] / n)


def test_frontier_picks_fewest_iterations_within_budget():
    points = [
        {"threshold": 0.9, "loss": 2.0, "mean_iterations": 3.0},
        {"threshold": 0.5, "loss": 2.02, "mean_iterations": 1.5},
        {"threshold": None, "loss": 2.0, "mean_iterations": 4.0},
    ]
    result = frontier(points, 2.0, (0.0, 0.005, 0.02))
    assert [result[b]["mean_iterations"] for b in ("0.0", "0.005", "0.02")] == [3.0, 3.0, 1.5]


def test_decode_and_cache_modes(results):
    decode, cache, n = results["decode"], results["cache"], TINY.loop_max_iterations
    for name in ("loop_adaptive", "loop_full_depth", "llama"):
        assert decode[name]["tokens_per_second"] > 0 and len(decode[name]["seconds"]) == TINY.decode_repeats
    assert decode["loop_full_depth"]["loop_statistics"]["new_mean_iterations"] == n
    assert 1 <= decode["loop_adaptive"]["loop_statistics"]["new_mean_iterations"] <= n
    assert decode["loop_adaptive"]["loop_statistics"]["new_tokens"] == TINY.batch_size * (TINY.new_tokens - 1)
    equivalence = results["batch_equivalence"]
    assert equivalence["rows"] == TINY.batch_size and len(equivalence["first_differing_new_token"]) == TINY.batch_size
    # fp32 K and V of every cache layer: per_iteration P + N * C + D layers, shared P + C + D, Llama L
    layer_bytes = 2 * TINY.hidden_size * 4
    assert cache["bytes_per_token"] == {
        "per_iteration": (1 + n * 2 + 1) * layer_bytes,
        "shared": 4 * layer_bytes,
        "llama": TINY.llama_layers * layer_bytes,
    }
    per_iteration, shared = cache["teacher_forced"]["per_iteration"], cache["teacher_forced"]["shared"]
    for name in ("full_depth", "adaptive"):
        assert per_iteration[name]["loss"] == pytest.approx(per_iteration[name]["parallel_loss"], abs=1e-4)
        assert shared[name]["parallel_loss"] == pytest.approx(per_iteration[name]["parallel_loss"], abs=1e-5)
        assert cache["shared_loss_gap"][name] == pytest.approx(shared[name]["loss"] / per_iteration[name]["loss"] - 1)
    assert per_iteration["full_depth"]["mean_iterations"] == n


def test_tables_and_files(results, tmp_path):
    text = markdown_tables(results)
    for target in results["targets"].values():
        assert target["target"] in text
    assert text.count("| +") >= len(TINY.budgets)
    paths = write_results(results, ["log line"], tmp_path / "loop")
    assert sorted(p.suffix for p in paths) == [".json", ".txt"]
    assert json.loads(paths[0].read_text())["targets"].keys() == results["targets"].keys()
    assert paths[1].read_text().startswith("log line\n")


def test_command_line_options():
    script = load_script(BENCH_SCRIPT)
    quick = script.parse_args(["--quick", "--steps", "7"])
    assert quick.steps == 7 and quick.confidence_steps == script.QUICK["confidence_steps"] and quick.out is None
    full = script.parse_args(["--budgets", "0.01", "0.02"])
    assert full.steps == LoopBenchSettings().steps and full.budgets == [0.01, 0.02] and full.out == script.DEFAULT_OUT
