"""Checkpoint integrity for SLAM models: a checksum manifest written at save time and checked at load time, and
strict weight-key checks.

Remote code: imports only the standard library and its slam_compat.py and slam_manifest.py siblings, and is copied
flat next to the weights.

Why a manifest: huggingface_hub checks a download's size but not its content, and a file corrupted before upload
gets a matching Hub checksum anyway. `save_pretrained` records the size and sha256 of every weight file it wrote,
config.json and generation_config.json in `checksums.json` (slam_manifest.py; the processor adds its own files);
`from_pretrained` compares the files it is about to load with it (before safetensors parses them, so a truncated
file is reported by name instead of as a header error). config.json is covered because an edited or missing one
loads silently: the weights fill whatever model the changed (or default) settings build, wherever shapes match.
Passing `config=` is the caller taking over that choice, so it skips the config check. Folders without the manifest
(saved by other tools) get a structural check only: each safetensors file must be as long as its header says, and
a SLAM class loaded directly still needs config.json.

Why strict keys: transformers only logs missing or unexpected weights and fills the gaps with random values. A
SLAM checkpoint that does not cover the SLAM class it is loaded into is an error here, naming the keys; a task head
that the checkpoint never had (a classification head on a causal-LM checkpoint) is still initialised as usual.
"""

import json
import os

from .slam_compat import cached_file_or_none
from .slam_manifest import CHECKSUMS_NAME, file_digest, read_manifest, record_files

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
# What a model's save_pretrained records besides its weights (the processor records its own files).
MODEL_FILES = (CONFIG_NAME, "generation_config.json")
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


def write_checksums(save_directory, inherited: dict | None = None) -> dict:
    """Record size and sha256 of every weight file in `save_directory`, its config.json and generation_config.json
    in `checksums.json` (keeping what the processor recorded there, and `inherited`: see record_files); returns the
    manifest."""
    weights = [name for name in os.listdir(save_directory) if _is_weight_file(name)]
    return record_files(save_directory, [*weights, *MODEL_FILES], inherited)


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


def config_read_from_source(source: str, kwargs: dict) -> bool:
    """Whether from_pretrained builds the model from the source's config.json (rather than a config the caller chose).

    No `config=`: transformers reads config.json. The Auto classes always pass `config=`, read by AutoConfig, which
    sets its `name_or_path` to the source (5.10 to 5.25; `_from_auto` does not tell: 5.10 drops it on that path): a
    config read from this very source is its config.json and is checked like a direct load. A config the caller built
    (in Python, `from_json_file`, `from_dict`) has no such name and skips the check.
    """
    config = kwargs.get("config")
    if config is None:
        return True
    return os.fspath(getattr(config, "name_or_path", "") or "") == source


def verify_checkpoint_files(pretrained_model_name_or_path, kwargs: dict, config_class: str = "<ConfigClass>") -> int:
    """Check the files of a checkpoint against its `checksums.json` before they are loaded.

    Returns how many files were checked. Raises OSError naming the file, where it was read from and what to do, when
    config.json is missing (and no `config=` was passed), when a recorded file is missing, has the wrong size or the
    wrong sha256, or when the manifest itself is damaged. config.json is checked only where the model is built from
    it (`config_read_from_source`). Without a manifest, only the safetensors layout is checked (file length == what
    its header describes).
    """
    if pretrained_model_name_or_path is None or kwargs.get("gguf_file") or kwargs.get("state_dict") is not None:
        return 0
    source = os.fspath(pretrained_model_name_or_path)
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
    where = source + (f" (revision {hub_kwargs['revision']})" if hub_kwargs.get("revision", "main") != "main" else "")
    reads_config = config_read_from_source(source, kwargs)
    if reads_config and cached_file_or_none(source, CONFIG_NAME, hub_kwargs, unreachable_is_missing=False) is None:
        raise OSError(
            f"{where} has no {CONFIG_NAME}: without it the weights would be loaded into a model built from default "
            f"settings, a different architecture. Restore {CONFIG_NAME} from the folder written by save_pretrained, "
            f"or pass config= explicitly to load the weights with a config of your choosing (from_pretrained(path, "
            f"config={config_class}(...)) skips this check)."
        )
    manifest_path = cached_file_or_none(source, CHECKSUMS_NAME, hub_kwargs)
    if manifest_path is None:
        return _check_safetensors_layout(source, hub_kwargs, where, kwargs.get("variant"))
    recorded = read_manifest(manifest_path, where)

    def resolve(name):
        path = cached_file_or_none(source, name, hub_kwargs, unreachable_is_missing=False)
        if path is None:
            raise OSError(
                f"{name} is listed in {CHECKSUMS_NAME} of {where} but the file is missing. Upload the complete "
                "folder written by save_pretrained "
                f"(or delete {CHECKSUMS_NAME} if the weights were removed on purpose)."
            )
        return path

    # Only what the manifest records is checked (a shard it does not list is transformers' to report; a manifest
    # written before config.json was recorded checks the weights only).
    names = [
        name
        for name in _weight_files(lambda name: resolve(name) if name in recorded else None, kwargs.get("variant"))
        if name in recorded
    ]
    if reads_config and CONFIG_NAME in recorded:
        _check_config(resolve(CONFIG_NAME), recorded[CONFIG_NAME], where, config_class)
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
    return len(names) + (reads_config and CONFIG_NAME in recorded)


def _check_config(path, expected: dict, where: str, config_class: str) -> None:
    """config.json must be the one save_pretrained recorded: an edited structural field (a segment length, a norm
    placement) would load the weights into a different model without any other error."""
    size, sha256 = file_digest(path)
    if size == expected["size"] and sha256 == expected["sha256"]:
        return
    raise OSError(
        f"{CONFIG_NAME} of {where} is not the one save_pretrained recorded in {CHECKSUMS_NAME} ({size:,} bytes, "
        f"sha256 {sha256[:16]}…; saved: {expected['size']:,} bytes, {expected['sha256'][:16]}…): it was edited or "
        "damaged after saving, and the weights would be loaded into a model built from the changed settings. The "
        f"copy read was {path}. Restore {CONFIG_NAME} (or download it again with force_download=True). If you changed "
        "it on purpose, pass a config you built explicitly, which skips this check: from_pretrained(path, "
        f"config={config_class}.from_json_file(<path>/{CONFIG_NAME})) (a config AutoConfig read from this folder is "
        f"its {CONFIG_NAME} and is checked); then save_pretrained the loaded model to re-sign the folder (it rewrites "
        f"{CHECKSUMS_NAME})."
    )


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
