"""Checkpoint integrity for SLAM models: a checksum manifest written at save time and checked at load time, and
strict weight-key checks.

Remote code: imports only the standard library and its slam_compat.py sibling, and is copied flat next to the weights.

Why a manifest: huggingface_hub checks a download's size but not its content, and a file corrupted before upload
gets a matching Hub checksum anyway. `save_pretrained` records the size and sha256 of every weight file it wrote in
`checksums.json`; `from_pretrained` compares the files it is about to load with it (before safetensors parses
them, so a truncated file is reported by name instead of as a header error). Folders without the manifest (saved
by other tools) get a structural check only: each safetensors file must be as long as its header says.

Why strict keys: transformers only logs missing or unexpected weights and fills the gaps with random values. A
SLAM checkpoint that does not cover the SLAM class it is loaded into is an error here, naming the keys; a task head
that the checkpoint never had (a classification head on a causal-LM checkpoint) is still initialised as usual.
"""

import hashlib
import json
import os

from .slam_compat import cached_file_or_none

CHECKSUMS_NAME = "checksums.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_CHUNK = 1 << 20
# from_pretrained arguments that say where files come from; passed on to `cached_file` unchanged.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def _with_variant(name: str, variant) -> str:
    """`model.safetensors` -> `model.<variant>.safetensors`, as transformers names weight variants."""
    if not variant:
        return name
    stem, _, suffix = name.partition(".")
    return f"{stem}.{variant}.{suffix}"


def _is_weight_file(name: str) -> bool:
    return name.startswith("model") and (name.endswith(".safetensors") or name.endswith(".safetensors.index.json"))


def file_digest(path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def make_weights_readable(save_directory) -> None:
    """Give the weight files the mode any newly created file gets (0o666 minus the umask), like config.json.

    safetensors >= 0.8 writes through a temporary file (always 0o600) renamed into place, so model.safetensors
    came out readable by its owner only (safetensors 0.6 wrote 0o644): a shared cache or a served folder then
    cannot read the weights next to a readable config.
    """
    umask = os.umask(0)  # reading the umask means setting it; restored at once
    os.umask(umask)
    for name in os.listdir(save_directory):
        if name.startswith("model") and name.endswith(".safetensors"):
            os.chmod(os.path.join(save_directory, name), 0o666 & ~umask)


def write_checksums(save_directory) -> dict:
    """Record size and sha256 of every weight file in `save_directory` in `checksums.json`; returns the manifest."""
    names = sorted(name for name in os.listdir(save_directory) if _is_weight_file(name))
    files = {}
    for name in names:
        size, sha256 = file_digest(os.path.join(save_directory, name))
        files[name] = {"size": size, "sha256": sha256}
    manifest = {"algorithm": "sha256", "written_by": "slam_hf save_pretrained", "files": files}
    with open(os.path.join(save_directory, CHECKSUMS_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def _weight_files(locate, variant) -> list[str]:
    """The weight files from_pretrained reads: the single file, else the index and then its shards.

    `locate(name)` returns the local path of `name`, or None where the checkpoint lacks it.
    """
    single, index = _with_variant(WEIGHTS_NAME, variant), _with_variant(WEIGHTS_INDEX_NAME, variant)
    if locate(single) is not None:
        return [single]
    index_path = locate(index)
    if index_path is None:
        return []
    with open(index_path, encoding="utf-8") as f:
        return [index] + sorted(set(json.load(f)["weight_map"].values()))


def verify_checkpoint_files(pretrained_model_name_or_path, kwargs: dict) -> int:
    """Check the weight files of a checkpoint against its `checksums.json` before they are loaded.

    Returns how many files were checked. Raises OSError naming the file, where it was read from and what to do, when
    a file is missing, has the wrong size or the wrong sha256. Without a manifest, only the safetensors layout is
    checked (file length == what its header describes).
    """
    if pretrained_model_name_or_path is None or kwargs.get("gguf_file") or kwargs.get("state_dict") is not None:
        return 0
    source = os.fspath(pretrained_model_name_or_path)
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
    manifest_path = cached_file_or_none(source, CHECKSUMS_NAME, hub_kwargs)
    where = source + (f" (revision {hub_kwargs['revision']})" if hub_kwargs.get("revision", "main") != "main" else "")
    if manifest_path is None:
        return _check_safetensors_layout(source, hub_kwargs, where, kwargs.get("variant"))
    with open(manifest_path, encoding="utf-8") as f:
        recorded = json.load(f).get("files", {})

    def resolve(name):
        path = cached_file_or_none(source, name, hub_kwargs, unreachable_is_missing=False)
        if path is None:
            raise OSError(
                f"{name} is listed in {CHECKSUMS_NAME} of {where} but the file is missing. Upload the complete "
                "folder written by save_pretrained "
                f"(or delete {CHECKSUMS_NAME} if the weights were removed on purpose)."
            )
        return path

    # Only what the manifest records is checked (a shard it does not list is transformers' to report).
    names = [
        name
        for name in _weight_files(lambda name: resolve(name) if name in recorded else None, kwargs.get("variant"))
        if name in recorded
    ]
    for name in names:
        path = resolve(name)
        expected = recorded[name]
        size, sha256 = file_digest(path)
        if size == expected["size"] and sha256 == expected["sha256"]:
            continue
        problem = (
            f"is {size:,} bytes but {expected['size']:,} were saved: it is truncated or was replaced"
            if size != expected["size"]
            else f"has sha256 {sha256[:16]}… but {expected['sha256'][:16]}… was saved: its content is corrupted"
        )
        raise OSError(
            f"{name} of {where} {problem} (checked against {CHECKSUMS_NAME}, written by save_pretrained). The copy "
            f"read was {path}. Download it again (from_pretrained(..., force_download=True)); if the copy on the "
            "Hub is bad, re-upload the original folder (`slam-hf push` or push_to_hub). If you changed the weights on "
            f"purpose, re-save them with save_pretrained, which rewrites {CHECKSUMS_NAME}."
        )
    return len(names)


def _check_safetensors_layout(source, hub_kwargs: dict, where: str, variant) -> int:
    """Without a manifest: each safetensors file must be exactly as long as its header says (catches truncation,
    which safetensors reports without naming the file). Returns how many files were checked."""

    def locate(name):
        return cached_file_or_none(source, name, hub_kwargs)

    # Other formats (no safetensors file or index): transformers reports them.
    files = {name: locate(name) for name in _weight_files(locate, variant) if name.endswith(".safetensors")}
    for name, path in files.items():
        if path is None:
            continue  # transformers names a missing shard itself
        size = os.path.getsize(path)
        expected = None
        if size >= 8:
            with open(path, "rb") as f:
                header_length = int.from_bytes(f.read(8), "little")
                if 8 + header_length <= size:
                    try:
                        header = json.loads(f.read(header_length))
                        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
                        expected = 8 + header_length + max(ends, default=0)
                    except (ValueError, KeyError, TypeError, IndexError):
                        expected = None
        if expected == size:
            continue
        described = f"its header describes {expected:,}" if expected is not None else "its header is unreadable"
        raise OSError(
            f"{name} of {where} is {size:,} bytes but {described}: it is truncated or corrupted. The copy read was "
            f"{path}. Download it again (from_pretrained(..., force_download=True)); if the copy on the Hub is bad, "
            "re-upload the original folder."
        )
    return len(files)


def check_loading_info(model, info: dict, source) -> None:
    """Raise ValueError if the checkpoint does not cover the SLAM model it was loaded into.

    Unexpected keys are always an error (transformers already drops the weights of another task head). Missing
    keys are an error inside the trunk, and anywhere when the checkpoint was saved from this very class; a task
    head the checkpoint never had is left to transformers' usual initialisation and warning.
    """
    name = type(model).__name__
    saved_as = list(getattr(model.config, "architectures", None) or [])
    is_trunk = model.base_model is model
    trunk_prefix = f"{model.base_model_prefix}."
    missing = sorted(
        key for key in info.get("missing_keys", ()) if is_trunk or name in saved_as or key.startswith(trunk_prefix)
    )
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(str(item) for item in info.get("mismatched_keys", ()))
    if not (missing or unexpected):
        return

    def listing(keys):
        shown = ", ".join(keys[:8])
        return shown + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) the model needs are not in the checkpoint: {listing(missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} weight(s) in the checkpoint match nothing in the model: {listing(unexpected)}"
        )
    if mismatched:
        problems.append(f"re-initialised because of shape mismatches: {listing(mismatched)}")
    raise ValueError(
        f"The checkpoint {source} (saved as {', '.join(saved_as) or 'an unknown class'}) does not match "
        f"{name} built from its config.json: " + "; ".join(problems) + ". The weight file and config.json come "
        "from different models or versions: re-save both with save_pretrained from the same model. To load anyway "
        "and inspect the lists, pass output_loading_info=True (the missing weights are then randomly initialised)."
    )
