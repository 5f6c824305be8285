"""Damaged folders fail by name: config.json and the processor files are in checksums.json next to the weights.

Covers: what save_pretrained, the processor and the image processor record (one manifest per folder, merged in
either save order, stale entries dropped); a missing or edited config.json refused by the SLAM class, the Auto class
and the remote code (fresh process without slam_hf), each naming config.json and the way out; `config=` skipping
the config check and re-signing by re-saving; a damaged manifest (not JSON, wrong structure) refused as an OSError
naming checksums.json; folders without a manifest (other tools) or with a weights-only one (older slam_hf) keeping
their behaviour; `slam-hf push` refusing an edited config.json. The latent loop's exit threshold lives in config.json
alone (a calibrated threshold is a config field, not a weight): an edited one is refused like any other edit, and a
threshold changed in-process and re-saved loads.
"""

import json
import textwrap

import pytest
import torch
from hub_helpers import run_offline
from slam_common import single_threaded_torch
from slam_tester import SlamLoopModelTester
from transformers import AutoConfig, AutoModelForCausalLM

import slam_hf
from slam_hf.hub import FolderError, check_folder
from slam_hf.image_processing_slam import SlamImageProcessor
from slam_hf.processing_slam import SlamProcessor, train_bpe_tokenizer
from slam_hf.slam_manifest import record_files

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)

MODEL_ENTRIES = {"config.json", "generation_config.json", "model.safetensors"}
PROCESSOR_ENTRIES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}
IDS = torch.tensor([[5, 9, 14, 2, 7, 30, 11, 3, 8, 21]])


def tiny_v1(seed=0):
    torch.manual_seed(seed)
    config = slam_hf.SlamV1Config(
        vocab_size=64,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        ef_segment_length=4,
        ef_segment_overlap=1,
    )
    return slam_hf.SlamV1ForCausalLM(config).eval()


def tiny_loop(seed=0):
    """The latent loop with its confidence exit on (threshold 0.5): some tokens stop after 1 or 2 iterations."""
    torch.manual_seed(seed)
    return slam_hf.SlamLoopForCausalLM(SlamLoopModelTester().get_config()).eval()


@torch.no_grad()
def logits(model):
    return model(IDS).logits


def manifest(folder):
    return json.loads((folder / "checksums.json").read_text())


def edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def processor():
    tokenizer = train_bpe_tokenizer(["what number is shown?", "0 1 2 3 4 5 6 7 8 9"], vocab_size=120)
    return SlamProcessor(SlamImageProcessor(size={"height": 28, "width": 28}, patch_size=14), tokenizer)


@pytest.fixture
def saved(tmp_path):
    model = tiny_v1()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def test_save_records_configs_and_weights(saved):
    folder, _ = saved
    assert set(manifest(folder)["files"]) == MODEL_ENTRIES


@pytest.mark.parametrize("model_first", [True, False], ids=["model-then-processor", "processor-then-model"])
def test_model_and_processor_share_one_manifest_in_either_order(tmp_path, processor, model_first):
    model = tiny_v1()
    saves = [lambda: model.save_pretrained(tmp_path), lambda: processor.save_pretrained(tmp_path)]
    for save in saves if model_first else saves[::-1]:
        save()
    assert set(manifest(tmp_path)["files"]) == MODEL_ENTRIES | PROCESSOR_ENTRIES
    processor.image_processor.save_pretrained(tmp_path)  # standalone: preprocessor_config.json joins
    data = manifest(tmp_path)
    data["files"]["model-00001-of-00002.safetensors"] = data["files"]["model.safetensors"]  # a file gone since
    (tmp_path / "checksums.json").write_text(json.dumps(data))
    model.save_pretrained(tmp_path)
    assert set(manifest(tmp_path)["files"]) == MODEL_ENTRIES | PROCESSOR_ENTRIES | {"preprocessor_config.json"}
    torch.testing.assert_close(logits(type(model).from_pretrained(tmp_path)), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("with_manifest", [True, False], ids=["as-saved", "without-manifest"])
def test_missing_config_is_refused_unless_passed(saved, with_manifest):
    folder, model = saved
    config = model.config.to_dict()
    (folder / "config.json").unlink()
    if not with_manifest:
        (folder / "checksums.json").unlink()
    with pytest.raises(OSError, match="has no config.json") as err:
        slam_hf.SlamV1ForCausalLM.from_pretrained(folder)
    assert "pass config= explicitly" in str(err.value) and "Restore config.json" in str(err.value)
    reloaded = slam_hf.SlamV1ForCausalLM.from_pretrained(folder, config=slam_hf.SlamV1Config.from_dict(config))
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


def load_with_autoconfig(folder):
    """A config AutoConfig read from the folder is its config.json: passing it on is no opt-out."""
    return slam_hf.SlamV1ForCausalLM.from_pretrained(folder, config=AutoConfig.from_pretrained(folder))


@pytest.mark.parametrize(
    "load",
    [slam_hf.SlamV1ForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained, load_with_autoconfig],
    ids=["slam-class", "auto-class", "autoconfig-passed"],
)
def test_edited_config_is_refused_naming_it(saved, load):
    folder, _ = saved
    edit_config(folder, ef_segment_length=5)  # loads without any other error: only the manifest can tell
    with pytest.raises(OSError, match="config.json of .* is not the one save_pretrained recorded") as err:
        load(folder)
    message = str(err.value)
    assert "SlamV1Config.from_json_file" in message and "re-sign" in message and "checksums.json" in message


@pytest.mark.parametrize(
    "load", [slam_hf.SlamLoopForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained], ids=["slam", "auto"]
)
def test_edited_loop_exit_threshold_is_refused_and_a_resaved_one_loads(tmp_path, load):
    """A hand-edited exit threshold loads without any other error and changes what the model computes (tokens stop
    at other depths): only the manifest can tell. Changing it in-process, as calibrate_exit_threshold does, and
    saving again re-signs the folder."""
    model = tiny_loop()
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        before, after = (model(IDS, loop_exit_threshold=t).loop_iterations for t in (0.5, 0.9))
    assert not torch.equal(before, after)  # the edit below is not a no-op
    edit_config(tmp_path, loop_exit_threshold=0.9)
    with pytest.raises(OSError, match="config.json of .* is not the one save_pretrained recorded") as err:
        load(tmp_path)
    assert "SlamLoopConfig.from_json_file" in str(err.value)

    model.config.loop_exit_threshold = 0.9
    model.save_pretrained(tmp_path)
    reloaded = load(tmp_path).eval()
    assert reloaded.config.loop_exit_threshold == 0.9
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).loop_iterations, after)


def test_explicit_config_skips_the_check_and_resaving_re_signs(saved):
    folder, model = saved
    edit_config(folder, use_cache=False)  # a deliberate, harmless change
    config = slam_hf.SlamV1Config.from_json_file(folder / "config.json")
    for load in (slam_hf.SlamV1ForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        reloaded = load(folder, config=config)
        torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    reloaded.save_pretrained(folder)  # re-sign
    assert slam_hf.SlamV1ForCausalLM.from_pretrained(folder).config.use_cache is False


def test_folders_without_config_entry_keep_todays_behaviour(saved):
    """Saved by other tools (no manifest) or by an older slam_hf (weights only): an edited config.json loads."""
    folder, _ = saved
    edit_config(folder, use_cache=False)
    data = manifest(folder)
    data["files"] = {"model.safetensors": data["files"]["model.safetensors"]}
    (folder / "checksums.json").write_text(json.dumps(data))
    assert slam_hf.SlamV1ForCausalLM.from_pretrained(folder).config.use_cache is False
    (folder / "checksums.json").unlink()
    assert slam_hf.SlamV1ForCausalLM.from_pretrained(folder).config.use_cache is False


DAMAGED_MANIFESTS = {
    "not-json": "{ this is not json",
    "not-utf8": b"\xff\xfe\x00garbage",
    "a-list": "[]",
    "no-files": '{"algorithm": "sha256"}',
    "files-a-list": '{"files": []}',
    "entry-not-object": '{"files": {"model.safetensors": "abc"}}',
    "size-a-string": '{"files": {"model.safetensors": {"size": "12", "sha256": "' + "0" * 64 + '"}}}',
    "size-a-bool": '{"files": {"model.safetensors": {"size": true, "sha256": "' + "0" * 64 + '"}}}',
    "short-digest": '{"files": {"model.safetensors": {"size": 12, "sha256": "abc"}}}',
    "other-algorithm": '{"algorithm": "md5", "files": {}}',
}


@pytest.mark.parametrize("content", DAMAGED_MANIFESTS.values(), ids=DAMAGED_MANIFESTS.keys())
def test_damaged_manifest_is_an_oserror_naming_it(saved, content):
    folder, model = saved
    path = folder / "checksums.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(OSError, match="checksums.json of .* is not") as err:
        slam_hf.SlamV1ForCausalLM.from_pretrained(folder)
    assert "save_pretrained" in str(err.value) and "delete checksums.json" in str(err.value)
    model.save_pretrained(folder)  # saving repairs it
    assert set(manifest(folder)["files"]) == MODEL_ENTRIES


def test_push_check_refuses_an_edited_config(saved):
    folder, _ = saved
    edit_config(folder, ef_segment_length=5)
    with pytest.raises(FolderError, match="config.json of .* is not the one save_pretrained recorded"):
        check_folder(folder)


# The remote-code path: a Hub user's process, where slam_hf cannot be imported.
REMOTE_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["slam_hf"] = None
    from transformers import AutoConfig, AutoModelForCausalLM
    errors = {}
    for folder in sys.argv[1:]:
        try:
            AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
            errors[folder] = None
        except Exception as err:
            errors[folder] = f"{type(err).__name__}: {err}"
    print(json.dumps(errors))
    """
)


def test_remote_code_refuses_missing_and_edited_config(tmp_path):
    model = tiny_v1()
    folders = {name: tmp_path / name for name in ("intact", "edited", "missing", "loop-intact", "loop-edited")}
    for name, folder in folders.items():
        (tiny_loop() if name.startswith("loop") else model).save_pretrained(folder)
    edit_config(folders["edited"], ef_segment_length=5)
    edit_config(folders["loop-edited"], loop_exit_threshold=0.9)
    (folders["missing"] / "config.json").unlink()
    (tmp_path / "loader.py").write_text(REMOTE_LOADER)
    stdout = run_offline([tmp_path / "loader.py", *folders.values()], tmp_path / "hf_home", cwd=tmp_path)
    errors = json.loads(stdout.strip().splitlines()[-1])
    assert errors[str(folders["intact"])] is None and errors[str(folders["loop-intact"])] is None
    assert "OSError: config.json of" in errors[str(folders["edited"])], errors
    assert "OSError: config.json of" in errors[str(folders["loop-edited"])], errors
    assert "config.json" in errors[str(folders["missing"])], errors  # transformers' AutoConfig refuses it first


def test_pushes_from_one_folder_upload_the_merged_manifest(hub_server, tmp_path, processor):
    """save_pretrained(push_to_hub=True) uploads inside save_pretrained: each saver records its files first, and the
    manifest uploaded last covers the model and the processor."""
    from huggingface_hub import hf_hub_download

    repo_id = "slam-tester/slam-manifest-merge"
    model = tiny_v1()
    model.save_pretrained(tmp_path / "folder", push_to_hub=True, repo_id=repo_id)
    processor.save_pretrained(str(tmp_path / "folder"), push_to_hub=True, repo_id=repo_id)  # needs a str
    with open(hf_hub_download(repo_id, "checksums.json", force_download=True)) as f:
        assert set(json.load(f)["files"]) == MODEL_ENTRIES | PROCESSOR_ENTRIES
    reloaded = slam_hf.SlamV1ForCausalLM.from_pretrained(repo_id)
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("model_first", [True, False], ids=["model-then-processor", "processor-then-model"])
def test_push_to_hub_in_either_order_keeps_both_in_the_repo_manifest(hub_server, processor, model_first):
    """push_to_hub uploads one saver's files from a temporary folder: the repo's entries for the other's files are
    merged into the uploaded manifest, so the last push does not drop them."""
    from huggingface_hub import hf_hub_download

    repo_id = f"slam-tester/slam-manifest-{'model' if model_first else 'processor'}-first"
    model = tiny_v1()
    pushes = [lambda: model.push_to_hub(repo_id), lambda: processor.push_to_hub(repo_id)]
    for push in pushes if model_first else pushes[::-1]:
        push()
    with open(hf_hub_download(repo_id, "checksums.json", force_download=True)) as f:
        assert set(json.load(f)["files"]) == MODEL_ENTRIES | PROCESSOR_ENTRIES
    reloaded = slam_hf.SlamV1ForCausalLM.from_pretrained(repo_id)
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["processor_config.json", "tokenizer.json", "preprocessor_config.json"])
def test_edited_processor_files_are_refused_naming_them(tmp_path, processor, name):
    processor.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    load = SlamImageProcessor if name == "preprocessor_config.json" else SlamProcessor
    load.from_pretrained(tmp_path)
    path = tmp_path / name
    path.write_text(path.read_text().replace("28", "56") if "processor" in name else path.read_text() + " ")
    with pytest.raises(OSError, match=f"{name} of .* is not the one save_pretrained recorded") as err:
        load.from_pretrained(tmp_path)
    assert "record_files(<folder>, " in str(err.value) and "re-save the processor" in str(err.value)
    record_files(tmp_path, [name])  # changed on purpose: recorded again, it loads
    load.from_pretrained(tmp_path)
