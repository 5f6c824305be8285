"""The BitNet deployment folder (slam_hf.export): stock transformers loads it through its own BitNet quantizer.

Every variant is built with ternary projections and SubLN (the ternary harness's context-sensitive testers), exported
with `export_ternary`, and loaded in ONE clean subprocess (empty PYTHONPATH, `import slam_hf` made to fail, offline)
with `from_pretrained(..., trust_remote_code=True)`: its projections must be transformers' `BitLinear` (everything
else full precision), its logits must equal the in-process fake-quant model's bit for bit (the three implementations
share one order of float operations, slam_ternary's docstring), and its greedy tokens too. In process, `load_ternary`
gives `Int8TernaryLinear` layers with the same logits, and the packed projections take 1/16 of their float32 bytes.
"""

import json
import textwrap

import pytest
import torch
from hub_helpers import run_offline
from safetensors import safe_open
from slam_common import assert_context_sensitive, single_threaded_torch
from slam_tester import SlamLoopModelTester, SlamV1ModelTester, SlamV2ModelTester, SlamV3ModelTester
from test_modeling_ternary import ternary_tester

from slam_hf import SlamV1Config, SlamV1ForCausalLM
from slam_hf.export import export_ternary, load_ternary
from slam_hf.slam_ternary import Int8TernaryLinear, TernaryLinear

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)
BASES = (SlamV1ModelTester, SlamV2ModelTester, SlamV3ModelTester, SlamLoopModelTester)
TESTERS = [ternary_tester(base)() for base in BASES]
PACKABLE = dict(intermediate_size=40)  # the testers' 37 is not a whole number of packed bytes (4 rows each)
GENERATE = dict(do_sample=False, max_new_tokens=5, min_new_tokens=5, pad_token_id=0)

LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["slam_hf"] = None  # `import slam_hf` raises ImportError even if it is installed
    import json
    import torch
    import transformers

    spec = json.load(open(sys.argv[1]))
    inputs = torch.load(spec["inputs"])
    report, tensors = {}, {}
    for key, entry in spec["models"].items():
        auto_class = getattr(transformers, entry["auto_class"])
        model = auto_class.from_pretrained(entry["folder"], trust_remote_code=True).eval()
        kinds = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) or type(module).__name__ == "BitLinear":
                kinds[name] = type(module).__name__
        with torch.no_grad():
            logits = model(**inputs[key]["forward"]).logits
            generated = model.generate(**inputs[key]["generate"], **spec["generate_kwargs"])
        tensors[key] = {"logits": logits, "generated": generated}
        report[key] = {"kinds": kinds, "quantizer": type(model.hf_quantizer).__name__}
    report["slam_hf_modules"] = [m for m, v in sys.modules.items() if m.startswith("slam_hf") and v is not None]
    torch.save(tensors, spec["tensors_out"])
    json.dump(report, open(spec["report_out"], "w"))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{variant: (folder, model, tester, inputs, generated in-process)} and the clean process's (report, tensors)."""
    root = tmp_path_factory.mktemp("ternary_export")
    models, inputs, spec = {}, {}, {}
    for tester in TESTERS:
        key = tester.config_class.__name__
        torch.manual_seed(0)
        model = tester.generative_class(tester.get_config(**PACKABLE)).eval()
        folder = root / key
        export_ternary(model, folder)
        inputs[key] = {"forward": tester.model_inputs(), "generate": tester.generation_inputs()}
        with torch.no_grad():
            generated = model.generate(**inputs[key]["generate"], **GENERATE)
        assert_context_sensitive(model, inputs[key]["generate"], generated, tester, key)
        models[key] = (folder, model, tester, generated)
        auto_class = "AutoModelForImageTextToText" if "V3" in key else "AutoModelForCausalLM"
        spec[key] = {"folder": str(folder), "auto_class": auto_class}
    torch.save(inputs, root / "inputs.pt")
    paths = {"inputs": str(root / "inputs.pt"), "tensors_out": str(root / "out.pt"), "report_out": str(root / "r.json")}
    (root / "spec.json").write_text(json.dumps({"models": spec, "generate_kwargs": GENERATE, **paths}))
    (root / "loader.py").write_text(LOADER)
    (root / "cwd").mkdir()
    run_offline([root / "loader.py", root / "spec.json"], root / "hf_home", cwd=root / "cwd", timeout=600)
    report = json.loads((root / "r.json").read_text())
    return models, inputs, report, torch.load(root / "out.pt")


@pytest.mark.parametrize("tester", TESTERS, ids=lambda t: t.config_class.__name__)
def test_stock_transformers_loads_the_export_with_equal_logits_and_tokens(exported, tester):
    models, inputs, report, tensors = exported
    key = tester.config_class.__name__
    _, model, _, generated = models[key]
    assert report["slam_hf_modules"] == []
    assert report[key]["quantizer"] == "BitNetHfQuantizer"
    ternary = {name for name, module in model.named_modules() if isinstance(module, TernaryLinear)}
    kinds = report[key]["kinds"]
    assert {name for name, kind in kinds.items() if kind == "BitLinear"} == ternary
    assert all(kind == "Linear" for name, kind in kinds.items() if name not in ternary)
    with torch.no_grad():
        expected = model(**inputs[key]["forward"]).logits
    assert torch.equal(tensors[key]["logits"], expected), (tensors[key]["logits"] - expected).abs().max()
    assert torch.equal(tensors[key]["generated"], generated)


@pytest.mark.parametrize("tester", TESTERS, ids=lambda t: t.config_class.__name__)
def test_load_ternary_runs_int8_layers_with_equal_logits(exported, tester):
    models, inputs, _, _ = exported
    key = tester.config_class.__name__
    folder, model, _, generated = models[key]
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    fast = load_ternary(folder, AutoModelForImageTextToText if "V3" in key else AutoModelForCausalLM)
    layers = [m for m in fast.modules() if isinstance(m, Int8TernaryLinear)]
    assert len(layers) == sum(isinstance(m, TernaryLinear) for m in model.modules())
    assert all(layer.int8_weight().dtype == torch.int8 for layer in layers)
    with torch.no_grad():
        assert torch.equal(fast(**inputs[key]["forward"]).logits, model(**inputs[key]["forward"]).logits)
        assert torch.equal(fast.generate(**inputs[key]["generate"], **GENERATE), generated)


def test_packed_projections_take_a_sixteenth_of_float32(exported):
    models, _, _, _ = exported
    folder, model, _, _ = models["SlamV1Config"]
    ternary = {name for name, module in model.named_modules() if isinstance(module, TernaryLinear)}
    packed = full = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        for name in ternary:
            tensor = weights.get_tensor(f"{name}.weight")
            assert tensor.dtype == torch.uint8
            packed += tensor.numel() * tensor.element_size()
            full += model.get_submodule(name).weight.numel() * 4
            assert weights.get_tensor(f"{name}.weight_scale").shape == (1,)
    assert packed * 16 == full


def test_export_refuses_what_it_cannot_write(tmp_path):
    config = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="no ternary projection"):
        export_ternary(SlamV1ForCausalLM(SlamV1Config(**config)), tmp_path / "a")
    odd = SlamV1ForCausalLM(SlamV1Config(**{**config, "intermediate_size": 66}, ternary_linear=True))
    with pytest.raises(ValueError, match=r"up_proj: .*multiple of 4, got 66"):
        export_ternary(odd, tmp_path / "b")


def test_cli_export_then_generate(tmp_path, capsys):
    """`slam-hf export --ternary` on a saved folder, then `slam-hf generate` on the export (int8 layers)."""
    from slam_hf.cli import main
    from slam_hf.data import load_default_tokenizer

    torch.manual_seed(0)
    config = dict(vocab_size=load_default_tokenizer().vocab_size, hidden_size=32, num_attention_heads=4)
    model = SlamV1ForCausalLM(SlamV1Config(**config, intermediate_size=64, ternary_linear=True)).eval()
    model.save_pretrained(tmp_path / "trained")
    load_default_tokenizer().save_pretrained(tmp_path / "trained")
    main(["export", "--ternary", "--model", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "bitnet")])
    saved = json.loads((tmp_path / "bitnet" / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "bitnet"
    assert "lm_head" in saved["quantization_config"]["modules_to_not_convert"]
    assert (tmp_path / "bitnet" / "tokenizer.json").is_file()
    capsys.readouterr()
    main(["generate", "--model", str(tmp_path / "bitnet"), "--input", "To be", "--greedy", "--max-new-tokens", "4"])
    printed = capsys.readouterr().out.strip()
    tokenizer = load_default_tokenizer()
    prompt = tokenizer("To be", return_tensors="pt")
    expected = model.generate(**prompt, do_sample=False, max_new_tokens=4, min_new_tokens=4, pad_token_id=0)
    assert printed == tokenizer.decode(expected[0], skip_special_tokens=True)


def test_cli_export_refuses_a_full_precision_model(tmp_path):
    from slam_hf.cli import main

    config = SlamV1Config(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    SlamV1ForCausalLM(config).save_pretrained(tmp_path / "fp")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ternary", "--model", str(tmp_path / "fp"), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
