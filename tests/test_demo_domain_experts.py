"""slam_hf.demos.domain_experts at tiny scale: the one command runs every stage and reports every measurement.

The tiny run trains for seconds, so its numbers say nothing about the targets (the README's numbers come from the
full scale); these tests check structure, finiteness, that the saved files are what was measured (the reloaded
experts reproduce the reported losses) and that the target verdicts follow from the reported numbers.
"""

import json
import math

import pytest
import torch
from slam_common import single_threaded_torch
from transformers import AutoTokenizer

from slam_hf import SlamV1ForCausalLM
from slam_hf.adapters.svf import get_z_vectors
from slam_hf.adapters.transformer2 import SelfAdaptiveModel
from slam_hf.data.domains import DOMAINS, MIXED_DOMAINS, load_domains
from slam_hf.demos.domain_experts import MIXTURE_BOUNDS, SCALE_SETTINGS, main, pair_losses, render_markdown, run

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)
LABELS = [*DOMAINS, "other"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    # --expert-steps overrides the scale's 6 (the README's longer-training run uses it)
    assert main(["--output", str(output), "--scale", "tiny", "--threads", "1", "--expert-steps", "5"]) == 0
    return output, json.loads((output / "results.json").read_text())


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_every_measurement_is_reported(tiny_run):
    output, results = tiny_run
    assert set(results) == {
        "spec",
        "loss_matrix",
        "dispatch",
        "two_pass",
        "arithmetic_exact_match",
        "few_shot",
        "targets",
    }
    assert list(results["loss_matrix"]) == ["base", *DOMAINS]
    for row in results["loss_matrix"].values():
        assert list(row) == list(DOMAINS) and all(finite(v) and v > 0 for v in row.values())
    for strategy in ("classifier", "prompt"):
        entry = results["dispatch"][strategy]
        assert 0 <= entry["accuracy_three_domains"] <= 1 and 0 <= entry["accuracy_with_other"] <= 1
        confusion = entry["confusion"]
        assert list(confusion) == LABELS and all(list(row) == LABELS for row in confusion.values())
        counts = [sum(row.values()) for row in confusion.values()]
        tiny = SCALE_SETTINGS["tiny"]
        assert counts == [tiny.eval_pairs] * 3 + [tiny.other_pairs]
        correct = sum(confusion[label][label] for label in DOMAINS)
        assert entry["accuracy_three_domains"] == round(correct / (3 * tiny.eval_pairs), 4)
    for name in DOMAINS:
        row = results["two_pass"][name]
        assert row["base"] == results["loss_matrix"]["base"][name]
        assert row["own_expert"] == results["loss_matrix"][name][name]
        assert finite(row["two_pass"]) and 0 <= row["dispatched_to_own_expert"] <= 1
    exact = results["arithmetic_exact_match"]
    assert exact["examples"] == SCALE_SETTINGS["tiny"].generate_examples and 0 <= exact["base"] <= 1
    assert all(
        sample["want"] == sum(map(int, sample["prompt"].rstrip(" =").split(" + "))) for sample in exact["samples"]
    )
    assert list(results["few_shot"]) == list(MIXED_DOMAINS)
    for entry in results["few_shot"].values():
        singles = [*DOMAINS, *(f"{d}_fitted_strength" for d in DOMAINS)]
        assert set(entry["loss"]) == {"base", *singles, "uniform_mixture", *MIXTURE_BOUNDS}
        assert all(finite(v) for v in entry["loss"].values()) and finite(entry["classifier_two_pass"])
        for setting, (low, high) in MIXTURE_BOUNDS.items():
            alphas = entry["alphas"][setting]
            assert list(alphas) == list(DOMAINS) and all(low <= a <= high for a in alphas.values())
            assert entry["cem_best_scores"][setting] == sorted(entry["cem_best_scores"][setting])
        assert all(0 <= a <= 2 for a in entry["single_expert_strength"].values())
        assert entry["best_single_expert"] == min(singles, key=lambda d: entry["loss"][d])
    spec = results["spec"]
    assert spec["scale"] == "tiny" and spec["torch_threads"] == 1 and spec["parameters"] > 0
    assert spec["settings"]["expert_steps"] == 5 != SCALE_SETTINGS["tiny"].expert_steps
    assert all(finite(seconds) for seconds in spec["seconds"].values())
    assert {"transformers", "torch", "peft", "python"} <= set(spec["software"])


def test_targets_follow_from_the_numbers(tiny_run):
    _, results = tiny_run
    targets, matrix = results["targets"], results["loss_matrix"]
    assert targets["each_expert_lowers_own_domain_loss"] == {d: matrix[d][d] < matrix["base"][d] for d in DOMAINS}
    assert targets["two_pass_beats_base_on_every_domain"] == {
        d: results["two_pass"][d]["two_pass"] < results["two_pass"][d]["base"] for d in DOMAINS
    }
    for name, entry in results["few_shot"].items():
        best = min(
            loss
            for setting, loss in entry["loss"].items()
            if setting in DOMAINS or setting.endswith("_fitted_strength")
        )
        assert targets["few_shot_mixture_beats_every_single_expert"][name] == (
            entry["loss"]["amplified_mixture"] < best
        )
        assert targets["few_shot_mixture_in_[0,1]_beats_every_single_expert"][name] == (
            entry["loss"]["fitted_mixture"] < best
        )


def test_report_and_json_agree(tiny_run):
    output, results = tiny_run
    report = (output / "report.md").read_text()
    assert report == render_markdown(results)
    assert f"{results['loss_matrix']['base']['verse']:.4f}" in report
    assert f"{results['dispatch']['classifier']['accuracy_three_domains']:.3f}" in report
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## Targets"):
        assert heading in report


def test_saved_experts_reproduce_the_reported_losses(tiny_run):
    """The base model and adapters on disk are the ones measured: reloaded, they give the reported losses."""
    output, results = tiny_run
    tiny = SCALE_SETTINGS["tiny"]
    base = SlamV1ForCausalLM.from_pretrained(output / "base").eval()
    tokenizer = AutoTokenizer.from_pretrained(output / "base")
    adapters = {name: str(output / "adapters" / name) for name in DOMAINS}
    model = SelfAdaptiveModel(
        base, tokenizer, adapters, strategy="classifier", classifier=str(output / "adapters" / "classifier")
    )
    domains = load_domains(tiny.documents, tiny.eval_pairs, seed=0, num_train_pairs=tiny.expert_pairs)
    for setting in ("base", *DOMAINS):
        for name in DOMAINS:
            pairs = domains[name].pairs["held_out"]
            with model.using("other" if setting == "base" else setting):
                losses = pair_losses(model.model, tokenizer, pairs)
            pooled = sum(nll for nll, _ in losses) / sum(count for _, count in losses)
            assert abs(pooled - results["loss_matrix"][setting][name]) < 1.5e-4, (setting, name)
    # the experts were trained: they differ from the start value and from each other
    z = {name: torch.cat(list(get_z_vectors(model.model, name).values())) for name in [*DOMAINS, model.classifier]}
    assert all(not torch.allclose(vector, torch.full_like(vector, 0.1)) for vector in z.values())
    assert not torch.equal(z["verse"], z["code"]) and not torch.equal(z["code"], z["arithmetic"])


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"scale='huge' is not a known scale: use one of \('full', 'tiny'\)"):
        run(tmp_path, scale="huge")
    with pytest.raises(ValueError, match=r"seed=-1 must be an integer >= 0"):
        run(tmp_path, scale="tiny", seed=-1)
    with pytest.raises(ValueError, match=r"num_threads=0 must be an integer >= 1"):
        run(tmp_path, scale="tiny", num_threads=0)
    with pytest.raises(ValueError, match=r"expert_steps=0 must be an integer >= 1"):
        run(tmp_path, scale="tiny", expert_steps=0)
    assert not any(tmp_path.iterdir())  # rejected before anything was written
