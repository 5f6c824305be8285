"""Shared pytest setup: seed every test (`pythonpath` in pyproject.toml puts the repo and tests/ on `sys.path`)."""

import os
import random
import sys

import pytest


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state, so failures reproduce and tests do not depend on order."""
    import torch

    random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """A local Hub (tests/hub_server.py) on 127.0.0.1 that huggingface_hub and transformers talk to in this process.

    huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_DISABLE_XET into `huggingface_hub.constants` at import time
    (slam_hf has already imported it by now), so setting the environment alone is not enough: the constants, the
    module-level `huggingface_hub.hf_api.api` (bound to the old endpoint) and transformers' cached `HfApi` are patched
    too. The environment is still set, for subprocesses (`hub_server.env` is a ready-made copy for them).
    The server object also has `.request_log`, `.response_log`, `.unrouted`, `.store` and the fault-injection hook
    `.faults` / `.fault_log` (module docstring of tests/hub_server.py).
    """
    import huggingface_hub
    from hub_server import HubServer
    from huggingface_hub import constants

    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    server = HubServer(str(tmp_path / "hub_data")).start()
    env = {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "hf_dummy_local_test_token",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HF_MODULES_CACHE",
        "HF_TOKEN_PATH",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", server.url)
    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:
        transformers_hub = None
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # rebuilt on first use, with the patched endpoint
    # transformers also fixes its remote-code module cache at import; keep in-process trust_remote_code in hf_home.
    import transformers.dynamic_module_utils as dynamic_module_utils

    for module in (transformers_hub, dynamic_module_utils):
        if module is not None and hasattr(module, "HF_MODULES_CACHE"):
            monkeypatch.setattr(module, "HF_MODULES_CACHE", str(hf_home / "modules"))
    # HfFileSystem (datasets' hf:// paths) caches one instance per argument set, and with it the endpoint and the
    # listings of the previous test's server: start from none. datasets copies endpoint and caches into
    # `datasets.config` when it is imported (slam_hf.data imports it); a later import reads the environment above.
    huggingface_hub.HfFileSystem.clear_instance_cache()
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", server.url)
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False, raising=False)
        datasets_cache = hf_home / "datasets"
        for name, value in (
            ("HF_DATASETS_CACHE", datasets_cache),
            ("HF_MODULES_CACHE", hf_home / "modules"),
            ("DOWNLOADED_DATASETS_PATH", datasets_cache / "downloads"),
            ("EXTRACTED_DATASETS_PATH", datasets_cache / "downloads" / "extracted"),
        ):
            if hasattr(datasets_config, name):
                monkeypatch.setattr(datasets_config, name, value)  # Path objects, as datasets keeps them
    server.env = dict(os.environ)
    try:
        yield server
    finally:
        server.stop()
        huggingface_hub.HfFileSystem.clear_instance_cache()


# The training tests' data (tests/training_common.py), one copy per test module that asks for it.
@pytest.fixture(scope="module")
def tokenizer():
    from slam_hf.data import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture(scope="module")
def lm_blocks(tokenizer):
    from training_common import lm_blocks_of

    return lm_blocks_of(tokenizer)


@pytest.fixture(scope="module")
def genre(tokenizer):
    from training_common import genre_of

    return genre_of(tokenizer)
