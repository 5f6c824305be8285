"""benchmarks/bench_ternary_quality.py's suite (slam_hf.bench.suites.ternary_quality) end to end at a tiny size: the
bench's data, the four models (SLAM v1 and Llama, fp32 and BitNet b1.58 ternary) trained interleaved, held-out
losses, the extra learning rate, the table and the files."""

import json
import math
from pathlib import Path

import pytest
import torch
from slam_common import load_script
from torch import nn
from torch.nn import functional as F

from slam_hf.bench.suites.ternary_quality import (
    PROJECTIONS,
    REPORT_KEYS,
    TernaryQualitySettings,
    build_models,
    markdown_table,
    ternarize,
    write_results,
)
from slam_hf.slam_ternary import TernaryLinear

TINY = TernaryQualitySettings(
    steps=3,
    vocab_size=512,
    sequence_length=32,
    batch_size=4,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    eval_rows=8,
    extra_learning_rate=3e-3,
    log_every=0,
)
NAMES = ("slam_v1", "slam_v1_ternary", "llama", "llama_ternary")
BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ternary_quality.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The command line's --quick path, in-process, at TINY's size, writing its files to a temporary folder."""
    out = tmp_path_factory.mktemp("run") / "ternary"
    argv = ["--quick", "--out", str(out), "--log-every", "0"]
    for name in ("steps", "vocab_size", "sequence_length", "batch_size", "hidden_size", "num_heads"):
        argv += ["--" + name.replace("_", "-"), str(getattr(TINY, name))]
    argv += ["--intermediate-size", str(TINY.intermediate_size), "--eval-rows", str(TINY.eval_rows)]
    threads = torch.get_num_threads()
    try:
        assert load_script(BENCH_SCRIPT).main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert "| Llama ternary (b1.58) | " in out.with_suffix(".txt").read_text()
    return json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def models():
    """The four models as the run builds them (they need only the vocabulary size and special ids, not the rows)."""
    data = {"vocab_size": TINY.vocab_size, "special_ids": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}
    return build_models(TINY, data)


def test_four_finite_losses_and_report(results):
    assert set(REPORT_KEYS) <= set(results)
    assert set(results["heldout"]) == set(NAMES)
    for name in NAMES:
        assert math.isfinite(results["heldout"][name])
        assert results["training"][name]["steps"] == TINY.steps
        assert all(math.isfinite(loss) for _, loss in results["training"][name]["loss_curve"])
    for arch in ("slam_v1", "llama"):
        gap = results["comparison"][arch]["ternary_vs_fp_loss_gap"]
        assert gap == pytest.approx(results["heldout"][f"{arch}_ternary"] / results["heldout"][arch] - 1)
        assert results["comparison"][arch]["ternary_vs_fp_step_time_ratio"] > 0
    assert results["extra"]["learning_rate"] == 3e-3  # the extra: all four again at another lr
    assert set(results["extra"]["heldout"]) == set(NAMES)
    assert all(math.isfinite(loss) for loss in results["extra"]["heldout"].values())
    assert results["extra"]["heldout"] != results["heldout"]
    json.loads(json.dumps(results, default=str))  # serialisable


def test_equal_parameters_and_initial_weights(results):
    counts = results["parameters"]["counts"]
    assert results["parameters"]["check"]["max_abs"] <= TINY.param_tolerance
    assert counts["slam_v1_ternary"] == counts["slam_v1"] and counts["llama_ternary"] == counts["llama"]
    assert abs(counts["slam_v1"] / counts["llama"] - 1) <= TINY.param_tolerance
    assert results["ternary"]["initial_weights_equal_fp32"] == {"slam_v1": True, "llama": True}


def test_ternary_models_contain_ternary_projections(results, models):
    for name, model in models.items():
        ternary = [n for n, m in model.named_modules() if isinstance(m, TernaryLinear)]
        projections = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJECTIONS]
        if name.endswith("_ternary"):
            assert sorted(ternary) == sorted(projections) and len(ternary) == 7 * TINY.num_layers
            # embeddings and the LM head stay full precision
            assert type(model.get_output_embeddings()) is nn.Linear
            assert not isinstance(model.get_input_embeddings(), TernaryLinear)
        else:
            assert ternary == []
    for name in ("slam_v1_ternary", "llama_ternary"):
        census = results["ternary"]["after_training"][name]
        assert census["effective_weights_ternary"] and census["stray_ternary"] == []
        assert census["ternary_linear"] == census["projections"] == 7 * TINY.num_layers
        shares = census["weight_shares"]
        assert sum(shares.values()) == pytest.approx(1.0) and 0 < shares["0"] < 1


def test_ternary_forward_uses_ternary_weights_and_int8_activations(models):
    """Every ternary projection computes x_q / s_x @ (gamma W_q)^T with W_q in {-1, 0, 1} and x_q integers in
    [-128, 127], written out here independently of slam_ternary."""
    x = torch.randn(3, 5, 64)
    for name in ("slam_v1_ternary", "llama_ternary"):
        for module in (m for m in models[name].modules() if isinstance(m, TernaryLinear)):
            w = module.weight.detach()
            gamma = w.abs().mean().clamp(min=1e-5)
            w_q = (w / gamma).round().clamp(-1, 1)
            assert set(w_q.unique().tolist()) <= {-1.0, 0.0, 1.0}
            inputs = x[..., : module.in_features]
            scale = 127 / inputs.abs().amax(-1, keepdim=True).clamp(min=1e-5)
            x_q = (inputs * scale).round().clamp(-128, 127)
            expected = F.linear(x_q / scale, w_q * gamma, module.bias)
            with torch.no_grad():
                torch.testing.assert_close(module(inputs), expected, rtol=1e-5, atol=1e-5)
                assert not torch.allclose(module(inputs), F.linear(inputs, w, module.bias), atol=1e-4)


def test_ternarize_copies_weights_and_keeps_gradients_flowing():
    linear = nn.Sequential()
    linear.q_proj = nn.Linear(8, 4, bias=True)
    linear.lm_head = nn.Linear(4, 4)
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    ternarize(linear)
    assert isinstance(linear.q_proj, TernaryLinear) and type(linear.lm_head) is nn.Linear
    assert all(torch.equal(before[k], v) for k, v in linear.state_dict().items())
    linear.q_proj(torch.randn(2, 8)).sum().backward()
    assert linear.q_proj.weight.grad is not None and linear.q_proj.weight.grad.abs().sum() > 0


def test_table_and_files(results, tmp_path):
    table = markdown_table(results)
    for label in (
        "SLAM v1 fp32",
        "SLAM v1 ternary",
        "Llama fp32",
        "Llama ternary",
        "extra, lr 0.003 (not the protocol's)",
    ):
        assert label in table
    paths = write_results(results, ["log line"], tmp_path / "out")
    assert [p.suffix for p in paths] == [".json", ".txt"]
    assert json.loads(paths[0].read_text())["heldout"] == results["heldout"]
    assert paths[1].read_text().startswith("log line")


def test_quick_defaults_write_nothing():
    bench = load_script(BENCH_SCRIPT)
    quick = bench.parse_args(["--quick"])
    assert quick.out is None and quick.steps == bench.QUICK["steps"]
    assert bench.parse_args(["--quick", "--steps", "7"]).steps == 7
    assert bench.parse_args([]).out == bench.DEFAULT_OUT and bench.parse_args([]).steps == 300
