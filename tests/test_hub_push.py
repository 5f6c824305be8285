"""`slam-hf push` and checkpoint integrity against the local Hub (tests/hub_server.py).

Covers: a folder saved by plain save_pretrained is checked, completed (checksums.json, a model card) and pushed;
it loads by repo id in a fresh process without slam_hf, with identical logits and tokens; pushing to a branch;
the folder checks (unknown variant, missing auto_map entry, missing code file, missing tokenizer, corrupted or
truncated weights, missing/unexpected keys, bad repo id) fail before anything is uploaded, naming the file or key;
and the load-time checks of the remote code itself (model_type mismatch, incomplete auto_map, a corrupted weight
file on the Hub) fail loudly in a fresh process.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file
from slam_common import single_threaded_torch

import slam_hf
from slam_hf.cli import main
from slam_hf.data import load_default_tokenizer
from slam_hf.hub import FolderError, check_folder

USER = "slam-tester"
PROMPT = "To be, or not to be"
# One thread here and in the fresh processes (OMP_NUM_THREADS=1): the same kernels, so logits match bit for bit.
single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


@pytest.fixture(scope="module")
def tokenizer():
    return load_default_tokenizer()


def tiny_v1(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = slam_hf.SlamV1Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        ef_segment_length=8,
        ef_segment_overlap=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return slam_hf.SlamV1ForCausalLM(config).eval()


def saved_folder(path, tokenizer, seed=0):
    model = tiny_v1(tokenizer, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@torch.no_grad()
def logits_of(model, tokenizer):
    return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def push(folder, repo, *extra):
    return main(["push", "--model", str(folder), "--repo", repo, *extra])


# Runs in a clean interpreter with an empty HF_HOME: slam_hf must not be importable, everything comes from the Hub.
FRESH_LOADER = textwrap.dedent(
    """
    import json, sys, traceback
    sys.modules["slam_hf"] = None
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    repo_id, revision, out_path = sys.argv[1:4]
    result = {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, trust_remote_code=True).eval()
        trunk = AutoModel.from_pretrained(repo_id, revision=revision, trust_remote_code=True).eval()
        inputs = tokenizer("To be, or not to be", return_tensors="pt")
        with torch.no_grad():
            result["logits"] = model(**inputs).logits
            result["hidden"] = trunk(**inputs).last_hidden_state
        result["ids"] = inputs["input_ids"]
        result["modules"] = [type(model).__module__, type(trunk).__module__]
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {err}"
    torch.save(result, out_path)
    """
)


def load_in_fresh_process(hub, tmp_path, repo_id, revision="main"):
    script = tmp_path / "fresh_load.py"
    script.write_text(FRESH_LOADER)
    env = dict(hub.env)
    env.update(PYTHONPATH="", HF_HOME=str(tmp_path / "fresh_home"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "fresh_out.pt"
    done = subprocess.run(
        [sys.executable, str(script), repo_id, revision, str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out)


def test_push_completes_checks_uploads_and_loads_in_fresh_process(hub_server, tmp_path, tokenizer, capsys):
    folder = tmp_path / "model"
    model = saved_folder(folder, tokenizer)
    (folder / "checksums.json").unlink()  # as if saved by another tool: push writes it
    (folder / "checkpoint-5").mkdir()  # Trainer leftovers are not uploaded
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x" * 100)

    assert push(folder, f"{USER}/slam-v1-pushed") == 0
    printed = capsys.readouterr().out
    assert "added checksums.json, README.md" in printed and "verified against the Hub's checksums" in printed

    api = HfApi(endpoint=hub_server.url, token="hf_dummy_local_test_token")
    files = set(api.list_repo_files(f"{USER}/slam-v1-pushed"))
    assert {
        "config.json",
        "model.safetensors",
        "checksums.json",
        "README.md",
        "tokenizer.json",
        "modeling_slam.py",
        "slam_checkpoint.py",
        "configuration_slam.py",
    } <= files
    assert not any(name.startswith("checkpoint-") for name in files)

    # The card: metadata the Hub reads, plus the sections the issue asks for.
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"slam", "custom_code", "slam_v1"} <= set(card.data.tags)
    for needle in (
        "trust_remote_code=True",
        f'repo = "{USER}/slam-v1-pushed"',
        "## Interpretation choices",
        "transformers 5.10.1 to",
        '"q_proj"',
        "None recorded",
        "## Limitations",
        "ef_segment_length",
    ):
        assert needle in card.text, needle

    fresh = load_in_fresh_process(hub_server, tmp_path, f"{USER}/slam-v1-pushed")
    assert "error" not in fresh, fresh.get("error")
    assert all("transformers_modules" in module for module in fresh["modules"])
    expected_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert torch.equal(fresh["ids"], expected_ids)
    torch.testing.assert_close(fresh["logits"], logits_of(model, tokenizer), rtol=0, atol=0)
    with torch.no_grad():
        hidden = model.model(input_ids=expected_ids).last_hidden_state
    torch.testing.assert_close(fresh["hidden"], hidden, rtol=0, atol=0)


def test_push_to_branch_keeps_main(hub_server, tmp_path, tokenizer):
    repo = f"{USER}/slam-v1-branches"
    first, second = tmp_path / "first", tmp_path / "second"
    saved_folder(first, tokenizer, seed=0)
    second_model = saved_folder(second, tokenizer, seed=1)
    assert push(first, repo) == 0
    api = HfApi(endpoint=hub_server.url, token="hf_dummy_local_test_token")
    main_sha = api.model_info(repo).sha
    assert push(second, repo, "--revision", "retrained", "--commit-message", "seed 1") == 0
    assert api.model_info(repo).sha == main_sha  # main untouched
    assert api.model_info(repo, revision="retrained").sha != main_sha
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(repo, revision="retrained").eval()
    torch.testing.assert_close(logits_of(loaded, tokenizer), logits_of(second_model, tokenizer), rtol=0, atol=0)


def test_dry_run_uploads_nothing(hub_server, tmp_path, tokenizer):
    folder = tmp_path / "model"
    saved_folder(folder, tokenizer)
    assert push(folder, f"{USER}/never-created", "--dry-run") == 0
    assert not any("/api/repos/create" in path for _, path in hub_server.request_log)
    assert (folder / "README.md").is_file()


def _break_unknown_variant(folder):
    edit_json(folder / "config.json", lambda c: c.update(model_type="slam_v9"))


def _break_future_variant(folder):
    def change(config):
        config.update(model_type="slam_v9")
        config["auto_map"]["AutoConfig"] = "configuration_slam.SlamV9Config"

    edit_json(folder / "config.json", change)


def _break_auto_map(folder):
    edit_json(folder / "config.json", lambda c: c["auto_map"].pop("AutoModel"))


def _break_code(folder):
    (folder / "slam_layers.py").unlink()


def _break_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


def _corrupt_weights(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-20] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _truncate_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _swap_keys(folder):
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.bias_typo"] = weights.pop("model.norm.bias")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "checksums.json").unlink()  # hand-edited: no save-time record


@pytest.mark.parametrize(
    "break_folder, message",
    [
        (_break_unknown_variant, "model_type 'slam_v9', which is not a SLAM variant"),
        (_break_auto_map, "auto_map lacks AutoModel"),
        (_break_code, "slam_layers"),
        (_break_tokenizer, "has no tokenizer"),
        (_corrupt_weights, "content is corrupted"),
        (_truncate_weights, "it is truncated"),
        (_swap_keys, "model.norm.bias"),
    ],
    ids=["unknown-variant", "auto-map", "code-file", "tokenizer", "corrupted", "truncated", "keys"],
)
def test_push_refuses_broken_folders_before_uploading(hub_server, tmp_path, tokenizer, capsys, break_folder, message):
    folder = tmp_path / "model"
    saved_folder(folder, tokenizer)
    break_folder(folder)
    with pytest.raises(SystemExit) as exit_info:
        push(folder, f"{USER}/broken")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "slam-hf push: error:" in error
    assert not any("/api/repos/create" in path for _, path in hub_server.request_log)


def test_push_rejects_bad_repo_id(tmp_path, tokenizer):
    folder = tmp_path / "model"
    saved_folder(folder, tokenizer)
    with pytest.raises(FolderError, match="ORG/NAME"):
        from slam_hf.hub import push_folder

        push_folder(folder, "a/b/c", dry_run=True)


def test_check_folder_of_image_text_model_needs_processor_and_renders_its_card(tmp_path):
    from slam_hf.image_processing_slam import SlamImageProcessor
    from slam_hf.processing_slam import SlamProcessor, train_bpe_tokenizer

    text_tokenizer = train_bpe_tokenizer(["what number is shown?", "0 1 2 3 4 5 6 7 8 9"], vocab_size=120)
    processor = SlamProcessor(SlamImageProcessor(size={"height": 28, "width": 28}, patch_size=14), text_tokenizer)
    config = slam_hf.SlamV3Config(
        vocab_size=len(text_tokenizer),
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        image_token_id=processor.image_token_id,
        vision_config=dict(
            patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        ),
    )
    folder = tmp_path / "v3"
    slam_hf.SlamV3ForConditionalGeneration(config).save_pretrained(folder)
    with pytest.raises(FolderError, match="no processor"):
        check_folder(folder)
    processor.save_pretrained(folder)
    report = check_folder(folder, f"{USER}/slam-v3-card")
    assert report.architecture == "SlamV3ForConditionalGeneration" and "README.md" in report.written
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForSeq2SeqLM"} <= set(auto_map)
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text"
    for needle in (
        "AutoProcessor.from_pretrained(repo, trust_remote_code=True)",
        "Multi-head Latent Attention",
        "(q_proj|kv_b_proj|o_proj)",
        "## Interpretation choices",
    ):
        assert needle in card.text, needle


def test_check_folder_of_loop_model_renders_its_architecture_and_exit(tmp_path, tokenizer):
    """A latent-loop folder without a card gets one that describes prelude / core / coda, the iterations, the exit
    (criterion and threshold) and the cache mode, and reports a recorded exit calibration."""
    torch.manual_seed(0)
    config = slam_hf.SlamLoopConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        prelude_layers=1,
        core_layers=2,
        coda_layers=1,
        loop_max_iterations=3,
        loop_exit_threshold=0.9,
        loop_cache="shared",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path / "loop"
    slam_hf.SlamLoopForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    calibration = dict(
        criterion="confidence",
        threshold=0.9,
        loss_budget=0.005,
        full_depth_loss=4.25,
        chosen_loss=4.26,
        mean_iterations=2.125,
        max_iterations=3,
    )
    (folder / "training_metrics.json").write_text(json.dumps({"val_loss_after": 4.25, "exit_calibration": calibration}))
    report = check_folder(folder, f"{USER}/slam-loop-card")
    assert report.architecture == "SlamLoopForCausalLM" and "README.md" in report.written
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-generation" and "slam_loop" in card.data.tags
    for needle in (
        "AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)",
        "| prelude / core / coda layers | 1 / 2 / 1 (the core's 2 layers are shared) |",
        "| loop_max_iterations | 3 (8 layer applications at full depth) |",
        "| exit (loop_exit_criterion / loop_exit_threshold) | confidence: a token stops once sigmoid(confidence "
        "head) ≥ 0.9 |",
        "| loop_cache | shared: 4 cache layers, each token's last core K/V (read at every iteration: approximate) |",
        "`model.loop_statistics`",
        "Exit calibration (`exit_calibration`): confidence threshold 0.9",
        "2.12 of 3 core iterations per token",
        "| val_loss_after | 4.25 |",
        "model\\.core\\.\\d+",
        "## Interpretation choices",
    ):
        assert needle in card.text, needle


# --------------------------------------------------------------------------------------------------------------
# Load-time checks of the remote code, in a fresh process (no slam_hf): what a Hub user sees.


def _upload(api, repo_id, folder):
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder)).oid


@pytest.mark.parametrize(
    "break_folder, message",
    [
        (_break_unknown_variant, "config.json has model_type 'slam_v9', but it is being read by SlamV1Config"),
        (_break_future_variant, "configuration_slam.py defines no SlamV9Config"),
        (_break_auto_map, "config.json's auto_map lacks AutoModel"),
        (_corrupt_weights, "model.safetensors of slam-tester/broken-remote"),
    ],
    ids=["unknown-variant", "future-variant", "auto-map", "corrupted"],
)
def test_remote_code_refuses_broken_repos(hub_server, tmp_path, tokenizer, break_folder, message):
    folder = tmp_path / "model"
    saved_folder(folder, tokenizer)
    break_folder(folder)
    api = HfApi(endpoint=hub_server.url, token="hf_dummy_local_test_token")
    _upload(api, f"{USER}/broken-remote", folder)  # straight upload: push would refuse these folders
    fresh = load_in_fresh_process(hub_server, tmp_path, f"{USER}/broken-remote")
    assert message in fresh.get("error", ""), fresh


def test_bytes_corrupted_in_transit_are_caught_by_the_manifest(hub_server, tmp_path, tokenizer):
    """huggingface_hub checks a download's size, not its content: a same-size corrupted download is refused by the
    checksums.json check, and a forced re-download (fault gone) loads the exact model."""
    from transformers import AutoModelForCausalLM

    repo = f"{USER}/slam-v1-transit"
    folder = tmp_path / "model"
    model = saved_folder(folder, tokenizer)
    assert push(folder, repo) == 0
    hub_server.faults[(repo, "model.safetensors")] = ("corrupt", 1)
    with pytest.raises(
        OSError, match=r"model.safetensors of slam-tester/slam-v1-transit has sha256.*content is corrupted"
    ):
        AutoModelForCausalLM.from_pretrained(repo)
    loaded = AutoModelForCausalLM.from_pretrained(repo, force_download=True).eval()
    torch.testing.assert_close(logits_of(loaded, tokenizer), logits_of(model, tokenizer), rtol=0, atol=0)
