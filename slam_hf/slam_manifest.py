"""The checksum manifest `checksums.json` of a saved SLAM folder: one file per folder, shared by every saver.

Remote code (the standard library and slam_compat, which holds the transformers internals it needs: the download
that tells a missing file apart, the upload hook); the processors record their files through it (`RecordsChecksums`).

A model and its processor are usually saved into the same folder, in either order; each saver records the files it
owns (`record_files`) and keeps the entries of the others, so the manifest covers the whole folder whichever saved
last. An entry whose file is gone is dropped (a shard a re-save deleted, a file removed by hand).
`push_to_hub` uploads one saver's files from a temporary folder: the entries of the repo's manifest for the files it
leaves in place are merged in before the upload (`entries_to_inherit`), so pushing the model and the processor, in
either order, leaves a manifest covering both.
The loaders (slam_checkpoint.py) read it with `read_manifest`, which refuses a damaged manifest by name.
"""

import hashlib
import json
import logging
import os

from .slam_compat import UploadHookMixin, cached_file_or_none

CHECKSUMS_NAME = "checksums.json"
ALGORITHM = "sha256"
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")

logger = logging.getLogger(__name__)


def file_digest(path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def manifest_problem(data) -> str | None:
    """What makes `data` (parsed JSON) not a manifest, or None: {"algorithm": "sha256", "files": {name: {"size": int,
    "sha256": 64 hex digits}}}."""
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return 'expected an object with a "files" object'
    if data.get("algorithm", ALGORITHM) != ALGORITHM:
        return f"algorithm {data['algorithm']!r} is not {ALGORITHM!r}"
    for name, entry in data["files"].items():
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if type(size) is not int or size < 0 or not isinstance(digest, str) or len(digest) != 64 or set(digest) - _HEX:
            return f'the entry of {name!r} is not {{"size": <bytes>, "sha256": <64 hex digits>}}: {entry!r}'
    return None


def read_manifest(path, where) -> dict:
    """The `files` entries of the manifest at `path` (read from `where`). OSError naming the file and the fix when it
    is not valid JSON or not a manifest."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        problem = f"is not valid JSON ({err})"
    else:
        problem = manifest_problem(data)
        problem = problem and f"is not a checksum manifest ({problem})"
    if problem:
        raise OSError(
            f"{CHECKSUMS_NAME} of {where} {problem}. The copy read was {path}. It is written by save_pretrained: "
            "download it again (from_pretrained(..., force_download=True)) or re-save the folder with "
            f"save_pretrained, which rewrites it; delete {CHECKSUMS_NAME} to load without the integrity checks."
        )
    return data["files"]


def _entries_on_disk(folder) -> dict:
    """The entries of the folder's manifest; a damaged one is replaced (saving is how it gets repaired)."""
    path = os.path.join(folder, CHECKSUMS_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        return read_manifest(path, folder)
    except OSError as err:
        logger.warning(
            "Replacing the damaged %s; files it listed that this save did not write are unrecorded: %s",
            CHECKSUMS_NAME,
            err,
        )
        return {}


def record_files(folder, names, inherited: dict | None = None) -> dict:
    """Record size and sha256 of each of `names` present in `folder` in its `checksums.json`, keeping the entries other
    savers wrote; entries whose file no longer exists (`names` included) are dropped. `inherited`: entries of the Hub
    repo an upload goes to, for files the folder does not hold (`entries_to_inherit`). Returns the manifest."""
    folder = os.fspath(folder)
    kept = {
        name: entry
        for name, entry in _entries_on_disk(folder).items()
        if name not in names and os.path.isfile(os.path.join(folder, name))
    }
    fresh = {}
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            size, sha256 = file_digest(os.path.join(folder, name))
            fresh[name] = {"size": size, "sha256": sha256}
    files = {**(inherited or {}), **kept, **fresh}
    manifest = {"algorithm": ALGORITHM, "written_by": "slam_hf save_pretrained", "files": dict(sorted(files.items()))}
    with open(os.path.join(folder, CHECKSUMS_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def entries_to_inherit(working_dir, repo_id, token=None, revision=None) -> dict:
    """The entries of the manifest the Hub repo holds now, for the files an upload from `working_dir` leaves in place.

    Why: `push_to_hub` uploads from a temporary folder holding one saver's files only (the model's, or the
    processor's), and its checksums.json replaces the repo's; without these entries a processor pushed after the
    model would drop the model's. A repo without a manifest (or a damaged one, which this upload repairs) gives none.
    """

    def fetch(at_revision):
        # force_download: the repo's current manifest, not a cached one
        hub_kwargs = {"token": token, "revision": at_revision, "force_download": True}
        return cached_file_or_none(repo_id, CHECKSUMS_NAME, hub_kwargs, unreachable_is_missing=False)

    try:
        path = fetch(revision)
    except OSError as err:
        if revision is None or type(err.__cause__).__name__ != "RevisionNotFoundError":
            raise
        path = fetch(None)  # a new branch: the upload creates it from the default branch
    if path is None:
        return {}
    try:
        remote = read_manifest(path, repo_id)
    except OSError as err:
        logger.warning("Replacing the damaged %s of %s: %s", CHECKSUMS_NAME, repo_id, err)
        return {}
    present = set(os.listdir(working_dir))
    return {name: entry for name, entry in remote.items() if name not in present}


# from_pretrained arguments that say where files come from; passed on to `cached_file` unchanged.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def verify_recorded_files(source, names, kwargs: dict) -> int:
    """Compare those of `names` that the manifest of `source` records and that `source` holds with their entries;
    OSError naming the file and the fix on a difference. Returns how many were checked. A file that is not there is
    left to transformers (the processors load with some files absent); without a manifest nothing is checked."""
    source = os.fspath(source)
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}

    def locate(name):
        return cached_file_or_none(source, name, hub_kwargs, unreachable_is_missing=False)

    manifest_path = locate(CHECKSUMS_NAME)
    if manifest_path is None:
        return 0
    recorded = read_manifest(manifest_path, source)
    checked = 0
    for name in (name for name in names if name in recorded):
        path = locate(name)
        if path is None:
            continue
        size, sha256 = file_digest(path)
        expected = recorded[name]
        if size != expected["size"] or sha256 != expected["sha256"]:
            raise OSError(
                f"{name} of {source} is not the one save_pretrained recorded in {CHECKSUMS_NAME} ({size:,} bytes, "
                f"sha256 {sha256[:16]}…; saved: {expected['size']:,} bytes, {expected['sha256'][:16]}…): it was "
                f"edited or damaged after saving. The copy read was {path}. Restore it (or download it again with "
                "force_download=True). If you changed it on purpose, record it again: `from slam_hf.slam_manifest "
                f"import record_files; record_files(<folder>, [{name!r}])` (or re-save the processor with "
                f"save_pretrained, or delete its entry from {CHECKSUMS_NAME})."
            )
        checked += 1
    return checked


# The files the processor savers record (the model's save records its weights and configs, slam_checkpoint.py).
PROCESSOR_FILES = (
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)


class RecordsChecksums(UploadHookMixin):
    """Mixin (before the transformers base) for the processors: `save_pretrained` records `recorded_files` in the
    folder's checksums.json, next to the model's entries, and `from_pretrained` checks them against it; an upload
    records them in the folder it uploads first, as the model does."""

    recorded_files: tuple = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        verify_recorded_files(pretrained_model_name_or_path, cls.recorded_files, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if os.path.isdir(save_directory):
            record_files(save_directory, self.recorded_files)
        return result

    def before_upload(self, working_dir, repo_id, token=None, revision=None):
        record_files(working_dir, self.recorded_files, entries_to_inherit(working_dir, repo_id, token, revision))
