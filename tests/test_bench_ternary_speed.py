"""benchmarks/bench_ternary.py's suite (slam_hf.bench.suites.ternary_speed) end to end on the tiny preset: the four
implementations of one ternary model (fp32, ternary-int8, transformers' BitLinear, fake-quant) give the same tokens
and logits, their projection weights take exactly 4, 1, 1/4 and 4 bytes a weight (a oneDNN-packed int8 weight
counted as one byte a weight), every speed is a positive number, the memory worker reports a peak, and the files are
written. No timing is asserted. BitLinear runs eager here (`--no-compile-bitlinear`: its torch.compile takes ~20 s)."""

import json
from pathlib import Path

import pytest
import torch
from slam_common import load_script, single_threaded_torch

from slam_hf.bench.suites.ternary_speed import (
    IMPLEMENTATIONS,
    NO_PROJECTIONS,
    REPORT_KEYS,
    TernarySpeedSettings,
    load_implementation,
    memory_worker,
    projection_weights,
    run_memory_worker,
    state_bytes,
    without_projections,
)
from slam_hf.bench.suites.ternary_speed_report import markdown_table
from slam_hf.export import load_ternary
from slam_hf.slam_ternary import Int8TernaryLinear, onednn_int8_linear_available

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)
BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ternary.py"
NEW_TOKENS = 6
TINY_ARGS = ["--preset", "tiny", "--no-compile-bitlinear", "--no-memory", "--new-tokens", str(NEW_TOKENS)]
TINY_ARGS += ["--prefill-length", "32", "--prefill-batches", "1", "2", "--layer-repeats", "1"]
PROJECTIONS_PER_LAYER = 7


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH_SCRIPT)


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    """The command line's --quick path, in-process, on the tiny preset; the model folders kept for the memory tests."""
    root = tmp_path_factory.mktemp("ternary_speed")
    out, work = root / "result", root / "work"
    threads = torch.get_num_threads()
    assert bench.main(["--quick", *TINY_ARGS, "--work-dir", str(work), "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    results = json.loads(out.with_suffix(".json").read_text())
    return results, out, work


def test_report_and_files(run):
    results, out, _ = run
    assert set(REPORT_KEYS) <= set(results)
    assert results["settings"]["preset"] == "tiny" and results["settings"]["repeats"] == 1
    text = out.with_suffix(".txt").read_text()
    assert "| target | measured | result |" in text and "(b) ternary-int8 (load_ternary)" in text
    assert len(results["targets"]) == 2 + 4  # two prefill batches, decode vs fp32, vs BitLinear, memory, identity


def test_ternary_implementations_agree_bit_for_bit(run):
    correctness = run[0]["correctness"]
    others = ["bitlinear", "fake_quant"]
    for key in ("prefill_logits_equal", "decode_logits_equal", "tokens_equal"):
        assert all(correctness[key][name] is True for name in others), (key, correctness[key])
        assert set(correctness[key]) == {"fp32", *others}
    assert correctness["ternary_bit_identical"] is True
    assert correctness["prefill_logits_equal"]["fp32"] is False  # fp32 does not quantise activations
    assert correctness["distinct_new_tokens"] > 1  # a greedy output that is not one repeated token
    assert len(correctness["new_tokens"][0]) == NEW_TOKENS
    target = [t for t in run[0]["targets"] if "bit for bit" in t["target"]]
    assert len(target) == 1 and target[0]["met"] is True


def test_projection_weight_bytes_are_exact(run):
    weights = run[0]["weights"]
    model = run[0]["model"]
    count = model["num_hidden_layers"] * PROJECTIONS_PER_LAYER
    n = weights["fp32"]["weights"]
    expected = {"fp32": (4, "Linear"), "ternary_int8": (1, "Int8TernaryLinear")}
    expected.update({"bitlinear": (0.25, "BitLinear"), "fake_quant": (4, "TernaryLinear")})
    for name, (bytes_per_weight, kind) in expected.items():
        assert weights[name]["modules"] == count and weights[name]["weights"] == n
        assert weights[name]["bytes"] == n * bytes_per_weight and weights[name]["kinds"] == [kind]
    assert n == count // PROJECTIONS_PER_LAYER * (4 * 128 * 128 + 3 * 128 * 512)  # tiny: hidden 128, FFN 512
    assert weights["ternary_int8"]["kernels"] == {"_int_mm": count}  # every tiny layer is below onednn_min_weights
    assert weights["fp32"]["kernels"] == {"Linear": count}
    ratios = run[0]["ratios"]["projection_bytes_vs_fp32"]
    assert ratios["ternary_int8"] == 0.25 and ratios["bitlinear"] == 0.0625 and ratios["fake_quant"] == 1.0
    memory_target = [t for t in run[0]["targets"] if "memory" in t["target"]]
    assert memory_target[0]["measured"] == 0.25 and memory_target[0]["met"] is True


def test_speeds_are_positive_and_decode_counts_steps(run):
    results = run[0]
    names = [*IMPLEMENTATIONS, NO_PROJECTIONS]
    assert set(results["decode"]) == set(names) and set(results["prefill"]) == set(names)
    for name in names:
        for stats in results["prefill"][name].values():
            assert stats["tokens_per_s"] > 0 and stats["tokens_per_s_wall"] > 0
        decode = results["decode"][name]
        assert decode["forwards"] == NEW_TOKENS and decode["decode_steps"] == NEW_TOKENS - 1
        assert decode["decode_tokens_per_s"] > 0 and decode["generate_tokens_per_s"] > 0
    for rows, by_name in results["layer"].items():
        assert set(by_name) == set(IMPLEMENTATIONS)
        assert all(v["layer"] > 0 and len(v) == PROJECTIONS_PER_LAYER + 1 for v in by_name.values())
    assert all(isinstance(t["met"], bool) and t["measured"] is not None for t in results["targets"])
    assert results["ratios"]["int8_vs_fp32"]["decode"] > 0 and results["ratios"]["ceiling_vs_fp32"]["decode"] > 0
    table = markdown_table(results)
    assert "MISSED" in table or "met" in table
    assert f"| {PROJECTIONS_PER_LAYER * results['model']['num_hidden_layers']} _int_mm |" in table


def test_memory_worker_in_process_and_in_a_subprocess(run, tmp_path):
    results, _, work = run
    settings = TernarySpeedSettings(**{**results["settings"], "prefill_batches": (1,), "new_tokens": 2})
    folders = {name: str(work / name) for name in ("master", "export", "fp32")}
    spec = {"implementation": "bitlinear", "folders": folders, "settings": results["settings"] | {"new_tokens": 2}}
    with torch.compiler.set_stance("force_eager"):
        in_process = memory_worker(spec)
    assert in_process["projection_weights"]["bytes_per_weight"] == 0.25
    assert in_process["peak_rss_bytes"] >= in_process["rss_after_load_bytes"] > 0
    worker = run_memory_worker("ternary_int8", folders, settings, tmp_path)
    assert worker["projection_weights"]["bytes_per_weight"] == 1
    assert worker["projection_weights"]["kinds"] == ["Int8TernaryLinear"]
    assert worker["peak_rss_bytes"] >= worker["rss_after_load_bytes"] >= worker["rss_after_imports_bytes"] > 0
    assert worker["state_bytes"] < memory_worker({**spec, "implementation": "fp32"})["state_bytes"]
    table = markdown_table({**results, "memory": {"ternary_int8": worker}})
    assert "Memory: each implementation alone in a fresh process" in table


@pytest.mark.skipif(not onednn_int8_linear_available(), reason="no oneDNN int8 linear in this torch")
def test_packed_weights_are_counted_one_byte_each(run, monkeypatch):
    """(b) with every projection packed for oneDNN: `weight_t` is gone, the packed weight counts in x out bytes."""
    folders = {name: str(run[2] / name) for name in ("export", "fp32")}
    unpacked = load_ternary(folders["export"])
    monkeypatch.setattr(Int8TernaryLinear, "onednn_min_weights", 0)
    packed = load_ternary(folders["export"])
    count = run[0]["model"]["num_hidden_layers"] * PROJECTIONS_PER_LAYER
    weights = projection_weights(packed)
    assert weights["kernels"] == {"oneDNN packed": count}
    assert weights["bytes"] == weights["weights"] == projection_weights(unpacked)["bytes"]
    assert state_bytes(packed) == state_bytes(unpacked)
    assert all(m.weight_t is None for m in packed.modules() if isinstance(m, Int8TernaryLinear))
    assert state_bytes(packed) < state_bytes(load_implementation("fp32", folders))


def test_no_projections_model_still_decodes(run):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run[2] / "fp32")).eval()
    stub = without_projections(model)  # in place
    assert not any(type(m).__name__ == "Linear" and n.endswith("_proj") for n, m in stub.named_modules())
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        out = stub.generate(ids, do_sample=False, max_new_tokens=3, min_new_tokens=3, pad_token_id=0)
    assert out.shape == (1, 6)


def test_quick_defaults_write_nothing(bench):
    quick = bench.parse_args(["--quick"])
    assert quick.out is None and quick.repeats == bench.QUICK["repeats"]
    assert bench.parse_args(["--quick", "--repeats", "3"]).repeats == 3
    full = bench.parse_args([])
    assert full.out == bench.DEFAULT_OUT and full.repeats == TernarySpeedSettings().repeats and full.memory is True
    assert bench.parse_args(["--prefill-batches", "2", "8"]).prefill_batches == [2, 8]
