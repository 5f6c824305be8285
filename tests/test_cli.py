"""`slam-hf` command: a 3-step training run writes a Hub-ready folder; generate reads it; bad input fails clearly.

SLAM v1 runs `configs/slam-v1-tiny.yaml`; SLAM v2 runs `configs/slam-v2-tiny.yaml` and the latent loop
`configs/slam-loop-tiny.yaml` (with its exit calibration) for 2 steps on tiny batches.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from slam_common import single_threaded_torch

from slam_hf.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "slam-v1-tiny.yaml"
# What `slam-hf train` writes for a text model, and in addition for SLAM v3 (its remote code and processor).
TEXT_FOLDER_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "configuration_slam.py",
    "modeling_slam.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "training_metrics.json",
)
IMAGE_TEXT_FOLDER_FILES = TEXT_FOLDER_FILES + (
    "slam_mla.py",
    "slam_fusion.py",
    "slam_decoder.py",
    "slam_vision.py",
    "processor_config.json",
    "processing_slam.py",
    "image_processing_slam.py",
)

# Tiny models on a shared 2-core machine: one intra-op thread (OpenMP spin-waiting made steps ~25x slower).
single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("slam-v1-tiny")
    argv = ["train", "--config", str(TINY), "--output-dir", str(out), "--max-steps", "3"]
    assert main(argv + ["--max-train-rows", "48", "--max-eval-rows", "8"]) == 0
    return out


def test_train_writes_hub_folder(trained):
    files = {p.name for p in trained.iterdir()}
    expected = set(TEXT_FOLDER_FILES)
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


def _generated(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_generate_defaults_to_the_folders_generation_config(trained, capsys):
    """train writes the YAML's `generation` section; generate without flags samples with it; --greedy is one flag."""
    saved = json.loads((trained / "generation_config.json").read_text())
    wanted = _tiny_doc()["generation"]
    assert wanted["do_sample"] is True and {key: saved[key] for key in wanted} == wanted
    assert "`do_sample=True`, `temperature=0.8`, `top_k=50`" in (trained / "README.md").read_text()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    base = ["generate", "--model", str(trained), "--input", "To be"]
    printed = _generated(capsys, base + ["--seed", "0"])
    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    ids = tokenizer("To be", return_tensors="pt").input_ids
    set_seed(0)
    with torch.no_grad():
        sampled = model.generate(ids)[0, ids.shape[1] :]  # no arguments: the folder's generation_config
    assert len(sampled) == wanted["max_new_tokens"]
    assert printed.strip() == tokenizer.decode(torch.cat([ids[0], sampled]), skip_special_tokens=True)

    greedy = model.generate(ids, do_sample=False, max_new_tokens=wanted["max_new_tokens"])[0, ids.shape[1] :]
    assert _generated(capsys, base + ["--greedy"]).strip() == tokenizer.decode(
        torch.cat([ids[0], greedy]), skip_special_tokens=True
    )
    # What the default is for: greedy decoding of a barely trained model repeats a few tokens, sampling does not.
    assert len(set(sampled.tolist())) > 2 * len(set(greedy.tolist())), (sampled.tolist(), greedy.tolist())


def test_generate_without_cache_prints_the_same_text(trained, capsys):
    """--no-cache changes nothing, greedy or seeded sampling, on a model whose next token depends on the context
    (so a cache that dropped the history would show)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    ids = tokenizer("To be, or not to be", return_tensors="pt").input_ids
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % model.config.vocab_size
    with torch.no_grad():
        last, last_changed = model(ids).logits[0, -1], model(changed).logits[0, -1]
    assert (last - last_changed).abs().max() > 1e-3  # an early token moves the last logits

    base = ["generate", "--model", str(trained), "--input", "To be, or not to be", "--max-new-tokens", "12"]
    for flags in (
        ["--greedy"],
        ["--seed", "3"],
        ["--do-sample", "--temperature", "1.5", "--top-p", "0.9", "--seed", "5"],
    ):
        cached = _generated(capsys, base + flags)
        assert _generated(capsys, base + flags + ["--no-cache"]) == cached, flags
        assert len(cached.strip()) > len("To be, or not to be"), flags


def test_generate_flag_conflicts(trained, trained_v3, capsys):
    base = ["generate", "--model", str(trained), "--input", "To be"]
    with pytest.raises(SystemExit) as exc:
        main(base + ["--greedy", "--top-k", "5"])
    assert exc.value.code == 2 and "--greedy does not sample; drop --top-k" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--greedy", "--do-sample"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # SLAM v3 decodes greedily by default
        main(["generate", "--model", str(trained_v3), "--input", "what number is shown?", "--temperature", "2"])
    assert exc.value.code == 2 and "decodes greedily; add --do-sample" in capsys.readouterr().err


@pytest.mark.parametrize("fixture_name", ["trained", "trained_v2", "trained_v3", "trained_loop"])
def test_saved_files_are_readable_like_every_other_file(fixture_name, request):
    """model.safetensors gets the mode config.json gets (safetensors >= 0.8 alone would leave it 0o600)."""
    folder = request.getfixturevalue(fixture_name)
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~umask
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_tiny_configs_run_on_one_thread():
    """The README states the set-up timings with one torch thread: every tiny config sets it."""
    from slam_hf.training.run_config import load_run_config

    for name in ("slam-v1-tiny", "slam-v2-tiny", "slam-v3-tiny", "slam-loop-tiny"):
        assert load_run_config(REPO / "configs" / f"{name}.yaml")["torch_threads"] == 1, name
    assert "`torch_threads: 1`" in (REPO / "README.md").read_text()


def test_generation_section_errors(tmp_path, capsys):
    for generation, fragment in (
        ({"eos_token_id": 5}, "`generation.eos_token_id` cannot be set in the YAML: it comes from the tokenizer"),
        ({"do_sample": False, "temperature": 0.8}, "invalid `generation` section"),
    ):
        doc = _tiny_doc()
        doc["generation"] = generation
        with pytest.raises(SystemExit) as exc:
            main(["train", "--config", _write(tmp_path, doc), "--output-dir", str(tmp_path / "out")])
        assert exc.value.code == 2
        assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
        ("generation", "temprature", ["`generation.temprature`", "`temperature`"]),
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


# --------------------------------------------------------------------------------------------------------------
# SLAM v2: the same command, with the MoA balancing loss trained with but not scored

TINY_V2 = REPO / "configs" / "slam-v2-tiny.yaml"


@pytest.fixture(scope="module")
def trained_v2(tmp_path_factory):
    out = tmp_path_factory.mktemp("slam-v2-tiny")
    doc = yaml.safe_load(TINY_V2.read_text())
    doc["training"].update(logging_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4)
    config = out / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    argv = ["train", "--config", str(config), "--output-dir", str(out / "model"), "--max-steps", "2"]
    assert main(argv + ["--max-train-rows", "8", "--max-eval-rows", "4"]) == 0
    return out / "model"


def test_v2_train_writes_hub_folder_and_card(trained_v2):
    config = json.loads((trained_v2 / "config.json").read_text())
    assert config["model_type"] == "slam_v2"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_slam.SlamV2Config",
        "AutoModel": "modeling_slam.SlamV2Model",
        "AutoModelForCausalLM": "modeling_slam.SlamV2ForCausalLM",
    }
    assert (config["ef_segment_length"], config["moa_num_experts"], config["moa_top_k"]) == (32, 8, 2)
    assert (trained_v2 / "slam_moa.py").is_file()

    metrics = json.loads((trained_v2 / "training_metrics.json").read_text())
    assert metrics["variant"] == "slam_v2" and metrics["train_steps"] == 2
    assert metrics["router_aux_loss_coef"] == 0.01
    logged = [e for e in metrics["log_history"] if "loss" in e]
    assert len(logged) == 2 and all(0.9 < e["aux_loss"] < 2.0 for e in logged), logged  # 1 = balanced
    assert metrics["train_aux_loss_last_logged"] == logged[-1]["aux_loss"]
    assert metrics["val_perplexity_before"] > 1000

    text = (trained_v2 / "README.md").read_text()
    assert "{{" not in text and "[More Information Needed]" not in text
    assert "(`slam_v2`)" in text and "mixture of attention experts" in text and "(s + c) mod 4" in text
    assert "| num_hidden_layers | 6 (full → fusion_0 → fusion_1 → fusion_2 → fusion_3 → moa) |" in text
    assert "| moa_num_experts / moa_top_k | 8 / 2 |" in text
    assert "ef_segment_length (non-overlapping) | 32 |" in text and "/ overlap" not in text
    assert "MoA load-balancing loss, first → last logged" in text
    assert "held-out loss and perplexity\ndo not" in text
    assert "`slam_v2` is not in PEFT's table" in text
    for name in ("`experts.<i>.q_proj`", "`experts.<i>.o_proj`", "shared `k_proj`, `v_proj`", "`router`"):
        assert name in text, name
    assert '["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]' in text
    assert ModelCard.load(trained_v2 / "README.md").data.model_name == "slam-v2-tiny"


def test_v2_evaluation_scores_the_lm_loss_alone():
    """`slam-hf train` reports perplexity from the LM loss: the balancing term is switched off while evaluating."""
    import torch

    from slam_hf import SlamV2Config, SlamV2ForCausalLM
    from slam_hf.training.trainer import lm_loss_only

    config = SlamV2Config(
        vocab_size=64,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=32,
        ef_cycles=1,
        ef_segment_length=4,
        max_position_embeddings=32,
        moa_num_experts=4,
        moa_top_k=2,
        router_aux_loss_coef=0.5,
    )
    model = SlamV2ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        full = model(input_ids=ids, labels=ids)
        with lm_loss_only(model):
            lm_only = model(input_ids=ids, labels=ids).loss
    lm = torch.nn.functional.cross_entropy(full.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(lm_only, lm)
    torch.testing.assert_close(full.loss, lm + 0.5 * full.aux_loss)
    assert model.config.router_aux_loss_coef == 0.5  # restored


def test_v2_generate_and_load_without_slam_hf(trained_v2, capsys, tmp_path):
    capsys.readouterr()
    assert main(["generate", "--model", str(trained_v2), "--input", "To be", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("To be") and len(printed[-1]) > len("To be")

    # The folder loads where slam_hf cannot be imported, and greedy generation matches the in-process model.
    script = (
        "import sys, json\n"
        "sys.modules['slam_hf'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "folder = sys.argv[1]\n"
        "tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)\n"
        "model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)\n"
        "ids = tokenizer('To be', return_tensors='pt').input_ids\n"
        "out = model.generate(ids, max_new_tokens=5, do_sample=False)\n"
        "print(json.dumps([type(model).__name__, type(model).__module__, out[0].tolist()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(trained_v2)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, module, tokens = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "SlamV2ForCausalLM" and not module.startswith("slam_hf"), module

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained_v2)
    model = AutoModelForCausalLM.from_pretrained(trained_v2)
    ids = tokenizer("To be", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=5, do_sample=False)[0].tolist() == tokens


# --------------------------------------------------------------------------------------------------------------
# SLAM v3: image + text -> text on MNIST digit tiles; the folder holds the processor too

TINY_V3 = REPO / "configs" / "slam-v3-tiny.yaml"
V3_STEPS = 3


@pytest.fixture(scope="module")
def trained_v3(tmp_path_factory):
    out = tmp_path_factory.mktemp("slam-v3-tiny")
    doc = yaml.safe_load(TINY_V3.read_text())
    doc["training"].update(logging_steps=1, per_device_train_batch_size=8, per_device_eval_batch_size=16)
    config = out / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    argv = ["train", "--config", str(config), "--output-dir", str(out / "model"), "--max-steps", str(V3_STEPS)]
    assert main(argv + ["--max-train-rows", "32", "--max-eval-rows", "16"]) == 0
    return out / "model"


def test_v3_yaml_is_valid():
    from slam_hf.training.run_config import load_run_config

    run = load_run_config(TINY_V3)
    assert run["variant"] == "slam_v3" and run["torch_threads"] == 1
    assert run["data"] == dict(num_digits=2, train_rows=8000, eval_rows=500, test_rows=500, max_shift=2, seed=0)
    assert run["model"]["vision_config"]["patch_size"] == 14


def test_v3_train_writes_hub_folder_and_card(trained_v3):
    files = {p.name for p in trained_v3.iterdir()}
    expected = set(IMAGE_TEXT_FOLDER_FILES)
    assert expected <= files, expected - files
    assert not {"pytorch_model.bin", "training_args.bin"} & files
    assert not any(name.startswith("checkpoint-") for name in files)

    config = json.loads((trained_v3 / "config.json").read_text())
    assert config["model_type"] == "slam_v3" and config["is_encoder_decoder"] is True
    assert config["auto_map"] == {
        "AutoConfig": "configuration_slam.SlamV3Config",
        "AutoModel": "modeling_slam.SlamV3Model",
        "AutoModelForImageTextToText": "modeling_slam.SlamV3ForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_slam.SlamV3ForConditionalGeneration",
    }
    assert config["vocab_size"] == 278 and config["image_token_id"] == 5 and config["decoder_start_token_id"] == 1
    assert config["vision_config"]["patch_size"] == 14
    processor_config = json.loads((trained_v3 / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_slam.SlamProcessor"
    generation = json.loads((trained_v3 / "generation_config.json").read_text())
    assert (generation["decoder_start_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    assert (generation["do_sample"], generation["max_new_tokens"]) == (False, 8)  # the YAML's `generation`

    metrics = json.loads((trained_v3 / "training_metrics.json").read_text())
    assert metrics["variant"] == "slam_v3" and metrics["task"] == "image-text-to-text"
    assert metrics["train_steps"] == V3_STEPS and metrics["train_samples"] == V3_STEPS * 8
    assert (metrics["train_rows"], metrics["val_rows"], metrics["test_rows"]) == (32, 16, 16)
    assert metrics["chance_exact_match"] == pytest.approx(0.01)
    assert 0.0 <= metrics["test_exact_match"] <= 1.0 and 0.0 <= metrics["test_digit_accuracy"] <= 1.0
    assert metrics["image_size"] == [28, 56] and metrics["patch_grid"] == [2, 4]
    assert metrics["tokens_per_sample"] == 8 + 5 + 3  # 8 patches + 5 prompt tokens; 2 digits + eos
    assert metrics["val_loss_before"] > 4.5  # ~ln(278) = 5.63 at initialisation
    assert metrics["decoder_cache_bytes_per_token"] == (32 + 16) * 4  # (kv_lora_rank + rope key) x float32, 1 layer
    assert metrics["decoder_cache_bytes_per_token_without_mla"] == 4 * (32 + 16 + 32) * 4
    assert metrics["torch_threads"] == 1  # from the YAML
    assert len([e for e in metrics["log_history"] if "loss" in e]) == V3_STEPS

    text = (trained_v3 / "README.md").read_text()
    assert "{{" not in text and "[More Information Needed]" not in text
    assert "# slam-v3-tiny" in text and "(`slam_v3`)" in text
    assert f"**{metrics['test_exact_match']:.2%}**" in text and "| chance exact match | 1.00% |" in text
    assert f"{metrics['parameters']:,}" in text and "trust_remote_code=True" in text
    assert "AutoModelForImageTextToText" in text and "AutoProcessor" in text and "--image digits.png" in text
    assert "| vision patch grid | 2 × 4 = 8 patches (28 × 56 pixel tiles) |" in text
    assert "| decoder cache bytes / token (float32, all layers) | 192 (latent 32 + RoPE key 16 per layer" in text
    assert "text, image, shared, cross_modal: 1 layer(s) each" in text
    assert "| layers | paths_0 → fusion → mla_decoder_0 |" in text
    for name in ("`q_proj`", "`kv_b_proj`", "`o_proj`", "`kv_a_proj_with_mqa`"):
        assert name in text, name
    assert r'target_modules=r"model\.decoder\.layers\.\d+\.(self_attn|cross_attn)\.(q_proj|kv_b_proj|o_proj)"' in text

    card = ModelCard.load(trained_v3 / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "transformers"
    assert {"slam", "custom_code"} <= set(card.data.tags) and card.data.model_name == "slam-v3-tiny"
    (result,) = card.data.eval_results
    assert result.metric_type == "exact_match" and result.metric_value == round(metrics["test_exact_match"], 4)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    """A held-out two-digit tile saved as a PNG, and its answer."""
    from slam_hf.data import load_digit_tiles

    row = load_digit_tiles(num_digits=2, sizes={"test": 1}, seed=0)["test"][0]
    path = tmp_path_factory.mktemp("images") / "digits.png"
    row["image"].save(path)
    return path, row["answer"]


def test_v3_generate_with_image(trained_v3, digit_png, capsys):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path, _ = digit_png
    capsys.readouterr()
    argv = ["generate", "--model", str(trained_v3), "--image", str(path), "--input", "what number is shown?"]
    assert main(argv + ["--max-new-tokens", "4"]) == 0
    answer = _last_line(capsys.readouterr().out)  # after 3 steps of training: any string, maybe empty
    assert isinstance(answer, str) and "what number" not in answer  # the answer alone, not the prompt

    # The same answer as the processor + model loaded in-process (the tile's placeholder goes first, as in training).
    processor = AutoProcessor.from_pretrained(trained_v3)
    model = AutoModelForImageTextToText.from_pretrained(trained_v3).eval()
    inputs = processor(images=Image.open(path), text="<image>what number is shown?", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert answer == processor.decode(output[0], skip_special_tokens=True)

    # Without flags: the folder's generation_config (greedy, at most 8 new tokens).
    argv = ["generate", "--model", str(trained_v3), "--image", str(path), "--input", "what number is shown?"]
    default = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert _last_line(_generated(capsys, argv)) == processor.decode(default[0], skip_special_tokens=True)

    # A placeholder written into the prompt is used as is.
    capsys.readouterr()
    main(argv[:-1] + ["<image>what number is shown?", "--max-new-tokens", "4"])
    assert _last_line(capsys.readouterr().out) == answer


def _last_line(printed: str) -> str:
    """The last printed line, which may be empty (print() of an empty answer)."""
    assert printed.endswith("\n"), printed
    return printed[:-1].rsplit("\n", 1)[-1]


def test_v3_generate_text_only(trained_v3, capsys):
    capsys.readouterr()
    argv = ["generate", "--model", str(trained_v3), "--input", "what number is shown?", "--max-new-tokens", "3"]
    assert main(argv) == 0
    assert "what number" not in _last_line(capsys.readouterr().out)


def test_generate_image_errors(trained, trained_v3, digit_png, tmp_path, capsys):
    path, _ = digit_png
    with pytest.raises(SystemExit) as exc:  # a text-only model
        main(["generate", "--model", str(trained), "--image", str(path), "--input", "what number is shown?"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--image needs an image-text model (slam_v3)" in err and "text-only `slam_v1` model" in err

    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(trained_v3), "--image", str(tmp_path / "none.png"), "--input", "x"])
    assert exc.value.code == 2 and "image file not found" in capsys.readouterr().err

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(trained_v3), "--image", str(not_an_image), "--input", "x"])
    assert exc.value.code == 2 and "cannot read image" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(trained_v3), "--input", "<image>what number is shown?"])
    assert exc.value.code == 2 and "no --image was given" in capsys.readouterr().err


def test_v3_folder_loads_without_slam_hf(trained_v3, digit_png, tmp_path):
    """AutoProcessor + AutoModelForImageTextToText with trust_remote_code=True where slam_hf cannot be imported."""
    path, _ = digit_png
    script = (
        "import sys, json\n"
        "sys.modules['slam_hf'] = None\n"
        "from PIL import Image\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "folder, image = sys.argv[1], sys.argv[2]\n"
        "processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)\n"
        "inputs = processor(images=Image.open(image), text='<image>what number is shown?', return_tensors='pt')\n"
        "out = model.generate(**inputs, max_new_tokens=4, do_sample=False)\n"
        "print(json.dumps([type(model).__module__, type(processor).__module__, out[0].tolist()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", script, str(trained_v3), str(path)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    model_module, processor_module, tokens = json.loads(result.stdout.strip().splitlines()[-1])
    assert not model_module.startswith("slam_hf") and not processor_module.startswith("slam_hf")

    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(trained_v3)
    model = AutoModelForImageTextToText.from_pretrained(trained_v3).eval()
    inputs = processor(images=Image.open(path), text="<image>what number is shown?", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=4, do_sample=False)[0].tolist() == tokens


@pytest.mark.parametrize(
    "where, value, fragments",
    [
        (("model", "vision_config", "patch_sise"), 14, ["`model.vision_config.patch_sise`", "`patch_size`"]),
        (("data", "block_size"), 128, ["unknown key `data.block_size`", "num_digits", "train_rows"]),
        (("data", "num_digits"), [3, 2], ["`data.num_digits`", "1 <= min <= max"]),
        (("data", "max_shift"), -1, ["`data.max_shift` must be an integer >= 0"]),
        (("data", "train_rows"), 0, ["`data.train_rows` must be a positive integer"]),
        (("torch_threads",), 0, ["`torch_threads` must be a positive integer or null"]),
        (("model", "vision_config"), "vit", ["`model.vision_config` must be a mapping"]),
    ],
)
def test_v3_yaml_errors_name_the_key(tmp_path, capsys, where, value, fragments):
    doc = yaml.safe_load(TINY_V3.read_text())
    node = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", _write(tmp_path, doc), "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_v3_patch_size_must_divide_the_tiles(tmp_path, capsys):
    doc = yaml.safe_load(TINY_V3.read_text())
    doc["model"]["vision_config"]["patch_size"] = 16
    doc["data"].update(train_rows=4, eval_rows=2, test_rows=2)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", _write(tmp_path, doc), "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "`model.vision_config.patch_size` (16) must divide the 28 × 56 pixel tiles" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------
# The latent loop (slam_loop): the same command, the exit threshold calibrated on the held-out rows before saving

TINY_LOOP = REPO / "configs" / "slam-loop-tiny.yaml"
LOOP_BUDGET = 0.01  # --exit-loss-budget, over the YAML's 0.005


def _loop_doc():
    return yaml.safe_load(TINY_LOOP.read_text())


@pytest.fixture(scope="module")
def trained_loop(tmp_path_factory):
    out = tmp_path_factory.mktemp("slam-loop-tiny")
    doc = _loop_doc()
    doc["training"].update(logging_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4)
    config = out / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    argv = ["train", "--config", str(config), "--output-dir", str(out / "model"), "--max-steps", "2"]
    argv += ["--max-train-rows", "8", "--max-eval-rows", "4", "--exit-loss-budget", str(LOOP_BUDGET)]
    assert main(argv) == 0
    return out / "model"


def test_loop_yaml_is_the_tiny_preset():
    from slam_hf.presets import load_preset
    from slam_hf.training.run_config import load_run_config

    run = load_run_config(TINY_LOOP)
    assert run["variant"] == "slam_loop" and run["torch_threads"] == 1
    assert run["exit_calibration"] == dict(enabled=True, criterion="confidence", loss_budget=0.005)
    preset = load_preset("slam_loop", "tiny").to_dict()
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "mlp_type"):
        assert run["model"][key] == preset[key], key
    for key in ("prelude_layers", "core_layers", "coda_layers", "loop_max_iterations"):
        assert run["model"][key] == preset[key], key


def test_loop_train_calibrates_the_exit_and_records_it(trained_loop):
    config = json.loads((trained_loop / "config.json").read_text())
    assert config["model_type"] == "slam_loop"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_slam.SlamLoopConfig",
        "AutoModel": "modeling_slam.SlamLoopModel",
        "AutoModelForCausalLM": "modeling_slam.SlamLoopForCausalLM",
    }
    assert (trained_loop / "slam_loop.py").is_file() and (trained_loop / "slam_loop_training.py").is_file()

    metrics = json.loads((trained_loop / "training_metrics.json").read_text())
    assert metrics["variant"] == "slam_loop" and metrics["train_steps"] == 2
    calibration = metrics["exit_calibration"]
    assert calibration["criterion"] == "confidence" and calibration["loss_budget"] == LOOP_BUDGET
    # the saved config applies what the calibration chose
    assert config["loop_exit_criterion"] == "confidence"
    assert config["loop_exit_threshold"] == calibration["threshold"]
    # full depth is what the run scored as held-out loss (one batch of the same 4 rows)
    assert math.isclose(calibration["full_depth_loss"], metrics["val_loss_after"], rel_tol=1e-4)
    assert calibration["chosen_loss"] <= calibration["full_depth_loss"] * (1 + LOOP_BUDGET) + 1e-9
    assert 1 <= calibration["mean_iterations"] <= calibration["max_iterations"] == 4
    assert math.isclose(calibration["compute_saved"], 1 - calibration["mean_iterations"] / 4)
    assert calibration["tokens"] == 4 * 127 and len(calibration["curve"]) > 3
    # the confidence head's loss is trained with (logged every step) but never scored
    logged = [e for e in metrics["log_history"] if "loss" in e]
    assert len(logged) == 2 and all(e["confidence_loss"] > 0 for e in logged), logged
    assert metrics["loop_confidence_loss_weight"] == 1.0
    assert metrics["train_confidence_loss_last_logged"] == logged[-1]["confidence_loss"]

    text = (trained_loop / "README.md").read_text()
    assert "{{" not in text and "[More Information Needed]" not in text
    assert "(`slam_loop`)" in text and "shared by every iteration" in text
    assert "| prelude / core / coda layers | 1 / 2 / 1 (the core's 2 layers are shared) |" in text
    assert "| loop_max_iterations | 4 (10 layer applications at full depth) |" in text
    assert "| loop_cache | per_iteration: 10 cache layers (1 + 4 × 2 + 1) |" in text
    assert "## Adaptive depth: the calibrated exit" in text and "+1 % of the full-depth loss" in text
    assert f"| full depth | {calibration['full_depth_loss']:.4f} |" in text
    assert f"**{calibration['mean_iterations']:.2f}**" in text
    assert "confidence-head loss, first → last logged" in text and "`model.loop_statistics`" in text
    assert ModelCard.load(trained_loop / "README.md").data.model_name == "slam-loop-tiny"


def test_loop_generate_reports_the_iterations_it_used(trained_loop, capsys):
    """stdout holds the text alone; stderr says the mean core iterations per new token, as loop_statistics does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    capsys.readouterr()
    argv = ["generate", "--model", str(trained_loop), "--input", "To be", "--max-new-tokens", "6", "--greedy"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("To be") and len(printed[0]) > len("To be")
    line = next(line for line in captured.err.splitlines() if "latent loop:" in line)

    tokenizer = AutoTokenizer.from_pretrained(trained_loop)
    model = AutoModelForCausalLM.from_pretrained(trained_loop).eval()
    ids = tokenizer("To be", return_tensors="pt").input_ids
    with torch.no_grad():
        model.generate(ids, do_sample=False, max_new_tokens=6)
    stats = model.loop_statistics
    assert stats["new_tokens"] == 5  # the last new token is never fed back
    assert f"{stats['new_mean_iterations']:.2f} of 4 core iterations per new token" in line, line
    assert "exit confidence: a token stops once sigmoid(confidence head) ≥" in line, line


@pytest.mark.parametrize(
    "where, value, fragments",
    [
        (("exit_calibration", "criterion"), "kl", ["`exit_calibration.criterion` must be one of", "cached decoding"]),
        (("exit_calibration", "criterion"), "none", ["no threshold to calibrate", "`exit_calibration.enabled: false`"]),
        (("exit_calibration", "loss_budget"), -0.1, ["`exit_calibration.loss_budget` must be a relative loss"]),
        (("exit_calibration", "enabled"), "yes", ["`exit_calibration.enabled` must be true or false"]),
        (("exit_calibration", "budget"), 0.1, ["`exit_calibration.budget`", "`loss_budget`"]),
        (("model", "loop_exit_criterion"), "hidden_change", ["`model.loop_exit_criterion` (hidden_change) and"]),
        (("model", "loop_confidence_loss_weight"), 0.0, ["needs a trained confidence head"]),
    ],
)
def test_loop_yaml_errors_name_the_key(tmp_path, capsys, where, value, fragments):
    doc = _loop_doc()
    doc[where[0]][where[1]] = value
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", _write(tmp_path, doc), "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_exit_calibration_is_for_the_loop_only(tmp_path, capsys):
    doc = _tiny_doc()
    doc["exit_calibration"] = {"loss_budget": 0.01}
    with pytest.raises(SystemExit):
        main(["train", "--config", _write(tmp_path, doc), "--output-dir", str(tmp_path / "out")])
    assert "`exit_calibration` applies to the latent-loop model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--config", str(TINY), "--output-dir", str(tmp_path / "out"), "--exit-loss-budget", "0.01"])
    assert "--exit-loss-budget applies to slam_loop runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(TINY_LOOP), "--exit-loss-budget", "-1"])
    assert exc.value.code == 2 and "expected a number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fixture_name", ["trained", "trained_v2", "trained_v3", "trained_loop"])
def test_trained_folders_are_push_ready(fixture_name, request):
    """`slam-hf train` writes everything `slam-hf push` checks: nothing to add, the card has the issue's sections."""
    from slam_hf.hub import TESTED_TRANSFORMERS, check_folder

    folder = request.getfixturevalue(fixture_name)
    report = check_folder(folder)
    assert report.written == []  # checksums.json (save_pretrained) and README.md (the run's card) are there
    assert "checksums.json" in report.files and "training_metrics.json" in report.files
    text = (folder / "README.md").read_text()
    assert "## Interpretation choices" in text and "## Compatibility" in text
    assert f"transformers {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}" in text


def test_tested_transformers_range_matches_ci_pins():
    from slam_hf.hub import TESTED_TRANSFORMERS

    root = Path(__file__).resolve().parent.parent
    assert f"transformers=={TESTED_TRANSFORMERS[0]}" in (root / ".ci" / "oldest.txt").read_text()
    # the README's Compatibility table names the same two versions the model cards render
    assert (
        f"| {TESTED_TRANSFORMERS[0]} and {TESTED_TRANSFORMERS[1]} (newest at the last green CI) |"
        in (root / "README.md").read_text()
    )
