"""The Hub path: a saved folder loads with `trust_remote_code=True` where slam_hf cannot be imported.

Every class of every variant (SLAM v1, v2, v3, the latent loop) is saved (with the tokenizer) into its own folder;
ONE clean subprocess (fresh HF_HOME, other cwd, empty PYTHONPATH, `import slam_hf` made to fail) loads them all
through the Auto classes and writes back logits and greedy tokens (with the KV cache, as `generate()` passes it
under the running transformers, and without), which must equal the in-process reference bit for bit; the
models are context-sensitive (slam_common.assert_context_sensitive), so a cache that drops the history fails.
SLAM v3's generation head is loaded through both of its factories (AutoModelForImageTextToText and
AutoModelForSeq2SeqLM) from one folder, with image + prompt inputs. The latent loop generates with its adaptive
exit on (the tester's confidence threshold): the copied code must stop the same tokens early, so the core iterations
it reports (`loop_statistics`) equal the in-process ones, which exit some tokens early and run others deeper.
"""

import json
import os
import re
import textwrap

import pytest
import tomllib
import torch
from hub_helpers import run_offline
from slam_common import assert_context_sensitive, single_threaded_torch
from slam_tester import SlamLoopModelTester, SlamV1ModelTester, SlamV2ModelTester, SlamV3ModelTester
from transformers import AutoModel

import slam_hf
from slam_hf import MODEL_FAMILIES, SlamLoopForCausalLM
from slam_hf.data import load_default_tokenizer

PACKAGE_DIR = os.path.dirname(os.path.abspath(slam_hf.__file__))
TOKENIZER_TEXT = "To be, or not to be, that is the question"
NEW_TOKENS = 6
TESTERS = (SlamV1ModelTester(), SlamV2ModelTester(), SlamV3ModelTester(), SlamLoopModelTester())

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)
pytestmark = pytest.mark.contract  # the remote-code path is part of the fast contract job (README, Compatibility)

AUTO_CLASSES_BY_ROLE = {
    "base_model_class": ("AutoModel",),
    "causal_lm_class": ("AutoModelForCausalLM",),
    "masked_lm_class": ("AutoModelForMaskedLM",),
    "sequence_classification_class": ("AutoModelForSequenceClassification",),
    "conditional_generation_class": ("AutoModelForImageTextToText", "AutoModelForSeq2SeqLM"),
}
GENERATING_ROLES = ("causal_lm_class", "conditional_generation_class")

# Runs in the clean interpreter. Compares nothing itself: it reports, and the test asserts.
LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["slam_hf"] = None  # `import slam_hf` raises ImportError even if it is installed
    try:
        import slam_hf
    except ImportError:
        pass
    else:
        raise SystemExit("slam_hf is importable in the clean process")

    import json
    import torch
    import transformers

    spec = json.load(open(sys.argv[1]))
    inputs = torch.load(spec["inputs"])  # {variant: {"forward": {...}, "generate": {...}}}
    report, tensors = {}, {}
    for entry in spec["models"]:
        key = entry["key"]
        auto_class = getattr(transformers, entry["auto_class"])
        model = auto_class.from_pretrained(entry["folder"], trust_remote_code=True).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(entry["folder"], trust_remote_code=True)
        module = sys.modules[type(model).__module__]
        variant_inputs = inputs[entry["inputs"]]
        with torch.no_grad():
            outputs = model(**variant_inputs["forward"])
        tensors[key] = {
            "output": outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state,
        }
        try:  # the copied code refuses an argument it would not use, as the installed package does
            model(**variant_inputs["forward"], not_an_argument=1)
            unknown_kwarg_error = None
        except TypeError as error:
            unknown_kwarg_error = str(error)
        loop_statistics = {}  # the latent loop: the core iterations each generate() spent
        if entry["generate"]:
            for use_cache in (True, False):
                tensors[key][f"generated_cache={use_cache}"] = model.generate(
                    **variant_inputs["generate"], use_cache=use_cache, **spec["generate_kwargs"]
                )
                loop_statistics[f"cache={use_cache}"] = getattr(model, "loop_statistics", None)
        report[key] = {
            "class": type(model).__name__,
            "module_file": module.__file__,
            "config_class": type(model.config).__name__,
            "tied": model.get_output_embeddings() is not None
            and model.get_output_embeddings().weight is model.get_input_embeddings().weight,
            "token_ids": tokenizer(spec["text"])["input_ids"],
            "unknown_kwarg_error": unknown_kwarg_error,
            "loop_statistics": loop_statistics,
        }
    loaded = [name for name, module in sys.modules.items() if name.startswith("slam_hf") and module is not None]
    report["slam_hf_modules"] = sorted(loaded)
    torch.save(tensors, spec["tensors_out"])
    json.dump(report, open(spec["report_out"], "w"))
    """
)


def relative_import_closure(entry_file):
    """Modules that `from .x import y` pulls in, recursively: the files save_pretrained must copy."""
    pattern = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.MULTILINE)
    found, todo = set(), [entry_file]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        with open(os.path.join(PACKAGE_DIR, name)) as source:
            todo.extend(f"{module}.py" for module in pattern.findall(source.read()))
    return found


# The Hub remote-code set: the entry files transformers loads and every sibling they import. Flat by necessity
# (transformers copies an entry file and its single-dot imports into one folder); everything else in slam_hf lives
# in subpackages or in these three package-only modules, which the remote code must never import.
ENTRY_FILES = ("configuration_slam.py", "modeling_slam.py", "processing_slam.py", "image_processing_slam.py")
PACKAGE_ONLY_FLAT_FILES = {"__init__.py", "cli.py", "hub.py", "presets.py"}
SUBPACKAGE_IMPORT = re.compile(
    r"^\s*(from\s+\.\.|from\s+\.\w+\.|from\s+\.\s+import|(from|import)\s+slam_hf\b)", re.MULTILINE
)


def test_remote_code_set_is_exactly_the_flat_modules():
    closure = set().union(*(relative_import_closure(entry) for entry in ENTRY_FILES))
    flat = {name for name in os.listdir(PACKAGE_DIR) if name.endswith(".py")} - PACKAGE_ONLY_FLAT_FILES
    assert closure == flat, (
        f"not reached from the entry files: {sorted(flat - closure)}; missing: {sorted(closure - flat)}"
    )
    for name in sorted(closure):
        with open(os.path.join(PACKAGE_DIR, name)) as source:
            found = SUBPACKAGE_IMPORT.search(source.read())
        assert found is None, f"{name} imports outside the flat remote-code set: {found.group(0).strip()!r}"
    subpackages = {
        name for name in os.listdir(PACKAGE_DIR) if os.path.isfile(os.path.join(PACKAGE_DIR, name, "__init__.py"))
    }
    assert subpackages == {"adapters", "bench", "data", "demos", "export", "training"}
    # and the wheel ships every one of them (setuptools lists packages explicitly: a new one is easy to forget)
    with open(os.path.join(os.path.dirname(PACKAGE_DIR), "pyproject.toml"), "rb") as project:
        packaged = set(tomllib.load(project)["tool"]["setuptools"]["packages"])
    assert {f"slam_hf.{name}" for name in subpackages} <= packaged


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    """Every class of every variant saved with the tokenizer; returns (root, inputs, generate kwargs,
    {key: reference}), one key per (folder, Auto class). The variants share the vocabulary (one tokenizer);
    each variant has its own inputs (SLAM v3: prompt with image placeholders + pixel_values, answer tokens)."""
    assert len({tester.vocab_size for tester in TESTERS}) == 1
    root = tmp_path_factory.mktemp("remote")
    tokenizer = load_default_tokenizer()
    generate_kwargs = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)

    saved, inputs = {}, {}
    torch.manual_seed(0)
    for tester in TESTERS:
        variant = tester.config_class.__name__
        forward_inputs = tester.model_inputs()
        inputs[variant] = {"forward": forward_inputs, "generate": tester.generation_inputs()}
        for role, auto_classes in AUTO_CLASSES_BY_ROLE.items():
            model_class = getattr(tester, role)
            if model_class is None:
                continue
            torch.manual_seed(0)
            model = model_class(tester.get_config()).eval()
            folder = str(root / model_class.__name__)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            with torch.no_grad():
                expected = tester.logits_of(model, **forward_inputs)
            generated, loop_statistics = None, {}
            if role in GENERATING_ROLES:
                generated = model.generate(**inputs[variant]["generate"], use_cache=False, **generate_kwargs)
                assert_context_sensitive(model, inputs[variant]["generate"], generated, tester, model_class.__name__)
            if role in GENERATING_ROLES and isinstance(model, SlamLoopForCausalLM):
                loop_statistics["cache=False"] = model.loop_statistics
                cached = model.generate(**inputs[variant]["generate"], use_cache=True, **generate_kwargs)
                assert torch.equal(cached, generated), "the loop's cached greedy tokens differ in-process"
                loop_statistics["cache=True"] = model.loop_statistics
            for auto_class in auto_classes:
                saved[f"{folder}::{auto_class}"] = dict(
                    folder=folder,
                    model_class=model_class,
                    auto_class=auto_class,
                    auto_classes=auto_classes,
                    inputs=variant,
                    output=expected,
                    generated=generated,
                    tied=model_class in tester.lm_classes,
                    loop_statistics=loop_statistics,
                )
    return root, inputs, generate_kwargs, saved


@pytest.fixture(scope="module")
def remote_run(saved_folders):
    """Load every saved folder in ONE clean subprocess; returns (saved, report, tensors, HF_HOME)."""
    root, inputs, generate_kwargs, saved = saved_folders
    entries = [
        dict(
            key=key,
            folder=info["folder"],
            auto_class=info["auto_class"],
            inputs=info["inputs"],
            generate=info["generated"] is not None,
        )
        for key, info in saved.items()
    ]
    spec = dict(
        models=entries,
        inputs=str(root / "inputs.pt"),
        text=TOKENIZER_TEXT,
        generate_kwargs=generate_kwargs,
        tensors_out=str(root / "tensors.pt"),
        report_out=str(root / "report.json"),
    )
    torch.save(inputs, spec["inputs"])
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "loader.py").write_text(LOADER)
    elsewhere = root / "cwd"
    elsewhere.mkdir()
    run_offline([root / "loader.py", root / "spec.json"], root / "hf_home", cwd=elsewhere, timeout=300)
    report = json.loads((root / "report.json").read_text())
    tensors = torch.load(root / "tensors.pt")
    return saved, report, tensors, str(root / "hf_home")


def test_saved_folders_hold_the_remote_code():
    expected_files = relative_import_closure("modeling_slam.py") | relative_import_closure("configuration_slam.py")
    # The files the modeling code needs today; the closure above keeps the test right when modules are added.
    assert {
        "configuration_slam.py",
        "modeling_slam.py",
        "slam_layers.py",
        "slam_attention.py",
        "slam_blocks.py",
        "slam_windows.py",
        "slam_compat.py",
        "slam_grouped.py",
        "slam_moa.py",
        "slam_fusion.py",  # SLAM v3
        "slam_decoder.py",
        "slam_mla.py",
        "slam_vision.py",
        "slam_loop.py",  # the latent loop
        "slam_loop_training.py",
    } <= expected_files
    assert "__init__.py" not in expected_files and "data.py" not in expected_files


def test_copied_files_and_auto_map(saved_folders):
    saved = saved_folders[3]
    expected_files = relative_import_closure("modeling_slam.py") | relative_import_closure("configuration_slam.py")
    for info in saved.values():
        folder = info["folder"]
        copied = {name for name in os.listdir(folder) if name.endswith(".py")}
        assert copied == expected_files, f"{info['model_class'].__name__}: {sorted(copied)}"
        for name in copied:  # verbatim copies of the package sources
            with open(os.path.join(folder, name)) as a, open(os.path.join(PACKAGE_DIR, name)) as b:
                assert a.read() == b.read(), name
        assert "model.safetensors" in os.listdir(folder)
        assert "tokenizer.json" in os.listdir(folder)

        config = json.load(open(os.path.join(folder, "config.json")))
        config_class = info["model_class"].config_class.__name__
        # Every factory of the class is named (SLAM v3's head: AutoModelForImageTextToText and AutoModelForSeq2SeqLM),
        # and AutoModel names the trunk, so a head checkpoint also loads as the bare model.
        trunk = next(heads[AutoModel] for cfg, heads in MODEL_FAMILIES if cfg is info["model_class"].config_class)
        assert config["auto_map"] == {
            "AutoConfig": f"configuration_slam.{config_class}",
            "AutoModel": f"modeling_slam.{trunk.__name__}",
            **{auto_class: f"modeling_slam.{info['model_class'].__name__}" for auto_class in info["auto_classes"]},
        }
        assert config["architectures"] == [info["model_class"].__name__]


def test_remote_code_loads_every_class_without_slam_hf(remote_run):
    saved, report, tensors, hf_home = remote_run
    assert report["slam_hf_modules"] == []
    expected_classes = {getattr(t, role) for t in TESTERS for role in AUTO_CLASSES_BY_ROLE} - {None}
    assert {info["model_class"] for info in saved.values()} == expected_classes
    # SLAM v1 and v2: base model and three heads each; v3 and the latent loop: base model and head
    assert len(expected_classes) == 12
    assert len(saved) == 13  # v3's head is loaded through two Auto classes
    expected_token_ids = load_default_tokenizer()(TOKENIZER_TEXT)["input_ids"]
    for key, info in saved.items():
        name = f"{info['model_class'].__name__} via {info['auto_class']}"
        loaded = report[key]
        assert loaded["class"] == info["model_class"].__name__
        assert loaded["config_class"] == info["model_class"].config_class.__name__
        # The class came from the copied files under the clean HF_HOME, not from the repository.
        assert loaded["module_file"].startswith(os.path.join(hf_home, "modules", "transformers_modules")), loaded
        assert torch.equal(tensors[key]["output"], info["output"]), f"{name}: outputs differ after remote load"
        assert loaded["token_ids"] == expected_token_ids
        assert "not_an_argument" in (loaded["unknown_kwarg_error"] or ""), f"{name}: an unknown argument was accepted"
        if info["tied"]:
            assert loaded["tied"], f"{name}: lm_head is not tied to the embeddings after remote load"
        if info["generated"] is not None:
            for use_cache in (True, False):
                remote = tensors[key][f"generated_cache={use_cache}"]
                assert torch.equal(remote, info["generated"]), f"{name}: greedy tokens differ (use_cache={use_cache})"


def test_remote_loop_exits_tokens_early_as_in_process(remote_run):
    """The latent loop's adaptive exit runs from the copied code: in-process, greedy decoding with the cache spends
    between 1 and the maximum core iterations per new token on average (some tokens stop early, some run deeper), and
    the clean process, whose tokens equal the in-process ones (above), spends exactly as many, cached and uncached."""
    saved, report, _, _ = remote_run
    (key,) = [key for key, info in saved.items() if info["model_class"] is SlamLoopForCausalLM]
    expected = saved[key]["loop_statistics"]
    cached = expected["cache=True"]
    assert cached["new_tokens"] > 0 and 1 < cached["new_mean_iterations"] < cached["max_iterations"], cached
    assert expected["cache=False"]["prompt_mean_iterations"] < cached["max_iterations"], expected
    assert report[key]["loop_statistics"] == expected
