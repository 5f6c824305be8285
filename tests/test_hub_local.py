"""Push to and pull from a local Hub (tests/hub_server.py via the `hub_server` fixture), without internet.

Covers: repo creation (409 / exist_ok), upload_folder of a saved tiny SLAM v1 model, `push_to_hub`, loading back
through `AutoModelForCausalLM` with identical logits, pinning `revision=<first commit sha>` after a second commit,
the normal errors for a missing file / repo / revision, and loading with `trust_remote_code=True` in a fresh
subprocess that cannot import slam_hf.
"""

import json
import os

import pytest
import torch
from hub_helpers import is_remote_module, run_fresh
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoModelForCausalLM

import slam_hf

USER = "slam-tester"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = slam_hf.SlamV1Config(
        vocab_size=99,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        ef_segment_length=8,
        ef_segment_overlap=2,
    )
    return slam_hf.SlamV1ForCausalLM(config).eval()


def input_ids():
    return torch.arange(1, 20).remainder(99).unsqueeze(0)


@torch.no_grad()
def logits_of(model):
    return model(input_ids=input_ids()).logits


def api_for(hub):
    return HfApi(endpoint=hub.url, token="hf_dummy_local_test_token")


def test_whoami_and_create_repo(hub_server):
    api = api_for(hub_server)
    assert api.whoami()["name"] == USER
    url = api.create_repo("slam-tester/create-me")
    assert url.repo_id == "slam-tester/create-me"
    assert url.startswith(hub_server.url)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("slam-tester/create-me")
    assert err.value.response.status_code == 409
    again = api.create_repo("slam-tester/create-me", exist_ok=True)
    assert again.repo_id == "slam-tester/create-me"
    # A bare name goes into the caller's namespace, as on the real Hub.
    assert api.create_repo("bare-name").repo_id == f"{USER}/bare-name"
    assert api.model_info("slam-tester/create-me").id == "slam-tester/create-me"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("slam-tester/never-created")


def test_upload_folder_then_from_pretrained(hub_server, tmp_path):
    api = api_for(hub_server)
    model = tiny_model()
    model.save_pretrained(tmp_path / "saved")
    repo_id = api.create_repo("slam-tester/slam-v1-upload").repo_id
    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "saved", commit_message="add model")
    assert len(info.oid) == 40

    files = set(api.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors"} <= files
    # The weights went through the LFS batch + PUT path, the config was inlined into the commit.
    tree = {entry.path: entry for entry in api.list_repo_tree(repo_id)}
    assert tree["model.safetensors"].lfs is not None
    assert tree["config.json"].lfs is None
    assert any(path.endswith("/info/lfs/objects/batch") for _, path in hub_server.request_log)
    assert api.model_info(repo_id).sha == info.oid

    loaded = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    assert type(loaded) is slam_hf.SlamV1ForCausalLM
    # The weights really came from the server (transformers 5.23 asks for the resolved sha, 5.10 for "main").
    downloads = [path for method, path in hub_server.request_log if method == "GET" and "/resolve/" in path]
    assert any(path.startswith(f"/{repo_id}/resolve/") and path.endswith("/model.safetensors") for path in downloads)
    torch.testing.assert_close(logits_of(loaded), logits_of(model), rtol=0, atol=0)


def test_push_to_hub_and_pinned_revision(hub_server):
    repo_id = f"{USER}/slam-v1-push"
    first_model = tiny_model(seed=0)
    first = first_model.push_to_hub(repo_id)
    first_sha = first.oid
    api = api_for(hub_server)
    assert api.model_info(repo_id).sha == first_sha

    second_model = tiny_model(seed=1)
    second = second_model.push_to_hub(repo_id, commit_message="retrain")
    assert second.oid != first_sha
    assert api.model_info(repo_id).sha == second.oid
    assert api.model_info(repo_id, revision=first_sha).sha == first_sha

    first_logits, second_logits = logits_of(first_model), logits_of(second_model)
    assert not torch.equal(first_logits, second_logits)

    latest = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    torch.testing.assert_close(logits_of(latest), second_logits, rtol=0, atol=0)
    pinned = AutoModelForCausalLM.from_pretrained(repo_id, revision=first_sha).eval()
    torch.testing.assert_close(logits_of(pinned), first_logits, rtol=0, atol=0)
    # The cache keeps both snapshots, keyed by commit sha.
    snapshots = os.path.join(os.environ["HF_HUB_CACHE"], "models--slam-tester--slam-v1-push", "snapshots")
    assert {first_sha, second.oid} <= set(os.listdir(snapshots))


def test_missing_file_repo_and_revision_errors(hub_server, tmp_path):
    api = api_for(hub_server)
    repo_id = api.create_repo("slam-tester/errors").repo_id
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="present.json", repo_id=repo_id)
    path = hf_hub_download(repo_id, "present.json", cache_dir=tmp_path / "cache")
    assert json.load(open(path)) == {"a": 1}

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "absent.json", cache_dir=tmp_path / "cache")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("slam-tester/no-such-repo", "config.json", cache_dir=tmp_path / "cache")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "present.json", revision="no-such-branch", cache_dir=tmp_path / "cache")

    # transformers turns the hub errors into its usual exceptions. A repo without config.json gives the same
    # ValueError as an empty local folder (transformers 5.x); one with a config but no weights gives an OSError.
    with pytest.raises(ValueError, match="Unrecognized model"):
        AutoModelForCausalLM.from_pretrained(repo_id)
    api.upload_file(
        path_or_fileobj=tiny_model().config.to_json_string().encode(), path_in_repo="config.json", repo_id=repo_id
    )
    with pytest.raises(OSError, match="does not appear to have a file named"):
        AutoModelForCausalLM.from_pretrained(repo_id)
    with pytest.raises(OSError, match="is not a local folder and is not a valid model identifier"):
        AutoModelForCausalLM.from_pretrained("slam-tester/no-such-repo")
    with pytest.raises(OSError, match="is not a valid git identifier"):
        AutoModelForCausalLM.from_pretrained(repo_id, revision="no-such-branch")


REMOTE_LOADER = """
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(ARGS["repo"], revision=ARGS["revision"], trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(input_ids=ARGS["input_ids"]).logits
finish({"logits": logits, "module": type(model).__module__})
"""


def test_trust_remote_code_in_fresh_process(hub_server, tmp_path):
    repo_id = f"{USER}/slam-v1-remote"
    model = tiny_model(seed=2)
    sha = model.push_to_hub(repo_id).oid
    files = set(api_for(hub_server).list_repo_files(repo_id))
    assert "modeling_slam.py" in files and "configuration_slam.py" in files

    # A clean interpreter (tests/hub_helpers.py): slam_hf not importable, nothing cached, everything from the Hub.
    out = run_fresh(hub_server, tmp_path, REMOTE_LOADER, dict(repo=repo_id, revision=sha, input_ids=input_ids()))
    assert is_remote_module(out["module"]) and "slam_hyphen_v1_hyphen_remote" in out["module"], out["module"]
    torch.testing.assert_close(out["logits"], logits_of(model), rtol=0, atol=0)
