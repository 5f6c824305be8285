"""`slam-hf` command: a 3-step training run writes a Hub-ready folder; generate reads it; bad input fails clearly."""

import json
import math
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from slam_hf.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "slam-v1-tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("slam-v1-tiny")
    argv = ["train", "--config", str(TINY), "--output-dir", str(out), "--max-steps", "3"]
    assert main(argv + ["--max-train-rows", "48", "--max-eval-rows", "8"]) == 0
    return out


def test_train_writes_hub_folder(trained):
    files = {p.name for p in trained.iterdir()}
    expected = {
        "model.safetensors", "config.json", "generation_config.json", "configuration_slam.py", "modeling_slam.py",
        "tokenizer.json", "tokenizer_config.json", "README.md", "training_metrics.json",
    }  # fmt: skip
    assert expected <= files
    assert not {"pytorch_model.bin", "training_args.bin"} & files
    assert not any(name.startswith("checkpoint-") for name in files)

    config = json.loads((trained / "config.json").read_text())
    assert config["model_type"] == "slam_v1"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_slam.SlamV1Config",
        "AutoModel": "modeling_slam.SlamV1Model",
        "AutoModelForCausalLM": "modeling_slam.SlamV1ForCausalLM",
    }
    # Every sibling the remote code imports was copied flat next to the weights.
    for module in ("modeling_slam", "configuration_slam"):
        for line in (trained / f"{module}.py").read_text().splitlines():
            if line.startswith("from .") and " import " in line:
                assert (trained / f"{line.split()[1][1:]}.py").is_file(), line


def test_metrics_and_model_card(trained):
    metrics = json.loads((trained / "training_metrics.json").read_text())
    assert metrics["train_steps"] == 3
    assert metrics["parameters"] > 0
    doc = _tiny_doc()
    batch, block = doc["training"]["per_device_train_batch_size"], doc["data"]["block_size"]
    assert metrics["train_tokens"] == 3 * batch * block  # steps x rows x tokens per row
    assert math.isclose(metrics["val_perplexity_after"], math.exp(metrics["val_loss_after"]))
    assert metrics["val_perplexity_before"] > 1000  # uniform over 8192 tokens at init is ~8192

    text = (trained / "README.md").read_text()
    assert f"{metrics['val_perplexity_after']:.2f}" in text
    assert f"{metrics['val_perplexity_before']:.2f}" in text
    assert f"{metrics['parameters']:,}" in text
    assert "trust_remote_code=True" in text
    assert '["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]' in text  # gelu MLP: no gate_proj
    assert "{{" not in text and "[More Information Needed]" not in text

    card = ModelCard.load(trained / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"slam", "custom_code"} <= set(card.data.tags)
    assert card.data.model_name == "slam-v1-tiny"
    (result,) = card.data.eval_results
    assert result.metric_type == "perplexity"
    assert result.metric_value == round(metrics["val_perplexity_after"], 2)
    assert text.splitlines()[0] == "---"
    assert "# slam-v1-tiny" in text  # model_name reaches the template body


def test_generate_continues_prompt(trained, capsys):
    capsys.readouterr()
    assert main(["generate", "--model", str(trained), "--input", "To be", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("To be")
    assert len(printed[-1]) > len("To be")


def test_generate_sampling_is_seeded(trained, capsys):
    argv = ["generate", "--model", str(trained), "--input", "To be", "--max-new-tokens", "8", "--do-sample"]
    argv += ["--temperature", "1.5", "--top-k", "100", "--seed", "3"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    assert capsys.readouterr().out == first


def _write(tmp_path, doc):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _tiny_doc():
    return yaml.safe_load(TINY.read_text())


@pytest.mark.parametrize(
    "section, key, fragments",
    [
        ("model", "hiden_size", ["`model.hiden_size`", "did you mean `hidden_size`"]),
        ("data", "blok_size", ["`data.blok_size`", "`block_size`"]),
        ("training", "learning_rat", ["`training.learning_rat`", "`learning_rate`"]),
        (None, "trainer", ["unknown key `trainer`", "`training`"]),
    ],
)
def test_unknown_yaml_key_is_named(tmp_path, capsys, section, key, fragments):
    doc = _tiny_doc()
    (doc if section is None else doc[section])[key] = 1
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", _write(tmp_path, doc), "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "out").exists()


def test_reserved_and_invalid_values(tmp_path, capsys):
    doc = _tiny_doc()
    doc["training"]["output_dir"] = "elsewhere"
    with pytest.raises(SystemExit):
        main(["train", "--config", _write(tmp_path, doc)])
    assert "`training.output_dir` cannot be set" in capsys.readouterr().err

    doc = _tiny_doc()
    doc["model"]["variant"] = "slam_v9"
    with pytest.raises(SystemExit):
        main(["train", "--config", _write(tmp_path, doc)])
    assert "`model.variant` must be one of slam_v1" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2
    assert "config file not found" in capsys.readouterr().err


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "generate" in out
    for argv in ([], ["train"], ["generate", "--model", "x"], ["train", "--config", "c.yaml", "--max-steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
