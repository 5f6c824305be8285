"""Publishing a saved SLAM folder to the Hub (`slam-hf push`).

`check_folder` reads a folder the way a Hub user's `from_pretrained(..., trust_remote_code=True)` will: config.json
(a known SLAM `model_type`, valid fields, an `auto_map` entry for every Auto factory), the remote-code files and
their imports, the weights (checked against `checksums.json`, loaded strictly), the tokenizer or processor and the
model card. Anything a user would trip over raises `FolderError` naming the file or key and the fix. What a folder
saved by plain `save_pretrained` lacks and the package can supply (the checksum manifest, a model card) is written
into the folder, and reported.

`push_folder` then creates the repo (or reuses it), uploads the folder in one commit and compares every uploaded
file with the Hub's checksums of that commit.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_NAME = "config.json"
README_NAME = "README.md"
GENERIC_TEMPLATE_NAME = "modelcard_template_generic.md"
# Never uploaded: Trainer checkpoints and logs, caches. upload_folder already skips .git/ and .cache/huggingface/.
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "**/__pycache__/**", "*.pyc"]
# The transformers versions CI runs the whole suite on (the oldest pin in .ci/oldest.txt, the newest resolved).
TESTED_TRANSFORMERS = ("5.10.1", "5.25.0")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class FolderError(ValueError):
    """A folder that would not load from the Hub as saved; the message names the file or key and the fix."""


@dataclass
class FolderReport:
    folder: Path
    model_type: str
    architecture: str
    parameters: int
    files: list[str]
    written: list[str] = field(default_factory=list)  # files check_folder added to the folder

    def summary(self) -> str:
        added = f"; added {', '.join(self.written)}" if self.written else ""
        return (
            f"{self.folder}: {self.architecture} ({self.model_type}), {self.parameters:,} parameters, "
            f"{len(self.files)} files{added}"
        )


def tested_transformers_range() -> str:
    oldest, newest = TESTED_TRANSFORMERS
    return f"transformers {oldest} to {newest} (the CI runs every test at both ends; declared range >= {oldest}, < 6)"


def _slam_config_classes() -> dict:
    from .configuration_slam import SLAM_CONFIG_CLASSES

    return {config_class.model_type: config_class for config_class in SLAM_CONFIG_CLASSES}


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FolderError(
            f"{folder} has no {CONFIG_NAME}: pass the folder written by model.save_pretrained (or `slam-hf train`)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FolderError(f"{path} is not valid JSON ({err}); re-save the model with save_pretrained") from err


def _check_code_files(folder: Path, auto_map: dict) -> list[str]:
    """Every module named in auto_map, and every module those import, must be in the folder."""
    from transformers.dynamic_module_utils import get_relative_import_files

    modules = sorted({value.split("--")[-1].split(".")[0] for value in auto_map.values() if isinstance(value, str)})
    needed = []
    for module in modules:
        path = folder / f"{module}.py"
        if not path.is_file():
            raise FolderError(
                f"{CONFIG_NAME}'s auto_map names {module}.py, which is not in {folder}: save the model with "
                "save_pretrained after `import slam_hf` (it copies the remote code next to the weights)"
            )
        needed.append(path.name)
        try:
            imports = get_relative_import_files(str(path))
        except (OSError, ValueError) as err:  # a sibling that the module imports is missing
            raise FolderError(
                f"{path.name} imports a module that is not in {folder} ({err}); copy the complete remote code by "
                "re-saving the model with save_pretrained after `import slam_hf`"
            ) from err
        needed += [Path(p).name for p in imports]
    return sorted(set(needed))


def _check_weights(folder: Path, written: list[str]) -> None:
    from .slam_checkpoint import (
        CHECKSUMS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
        verify_checkpoint_files,
        write_checksums,
    )

    if not (folder / WEIGHTS_NAME).is_file() and not (folder / WEIGHTS_INDEX_NAME).is_file():
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {', '.join(found)}: re-save with save_pretrained, which writes safetensors)" if found else ""
        raise FolderError(f"{folder} has no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}{hint}")
    if (folder / CHECKSUMS_NAME).is_file():
        try:
            verify_checkpoint_files(str(folder), {})
        except OSError as err:
            raise FolderError(str(err)) from err
    else:
        write_checksums(folder)
        written.append(CHECKSUMS_NAME)


def _load_model(folder: Path, architecture: str):
    import slam_hf

    model_class = getattr(slam_hf, architecture, None)
    if model_class is None:
        raise FolderError(
            f"{CONFIG_NAME} names architecture {architecture!r}, which slam_hf does not define; fix `architectures` "
            "in config.json, or re-save the model with save_pretrained"
        )
    try:
        return model_class.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise FolderError(f"the weights in {folder} do not load into {architecture}: {err}") from err


def _check_preprocessing(folder: Path, config) -> None:
    if getattr(config, "vision_config", None) is not None:
        from transformers import AutoProcessor

        if not (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").is_file():
            raise FolderError(
                f"{folder} holds an image-text model but no processor: save it next to the weights with "
                "processor.save_pretrained(folder) (slam_hf.SlamProcessor), so users load it with AutoProcessor"
            )
        try:
            processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
        except (OSError, ValueError, TypeError) as err:
            raise FolderError(f"the processor in {folder} does not load with AutoProcessor: {err}") from err
        tokenizer = processor.tokenizer
    else:
        from transformers import AutoTokenizer

        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise FolderError(
                f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): save it next to the weights with "
                "tokenizer.save_pretrained(folder) (slam_hf.data.load_default_tokenizer() is the shipped one), so "
                "users load it with AutoTokenizer"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as err:
            raise FolderError(f"the tokenizer in {folder} does not load with AutoTokenizer: {err}") from err
    if len(tokenizer) > config.vocab_size:
        raise FolderError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens but config.json's vocab_size is "
            f"{config.vocab_size}: token ids past the embedding table would fail; save the tokenizer the model was "
            "trained with"
        )


def check_folder(folder, repo_id: str | None = None) -> FolderReport:
    """Check a saved SLAM folder for the Hub, completing it with `checksums.json` and a model card if missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"model folder not found: {folder}")
    raw = _read_config(folder)
    config_classes = _slam_config_classes()
    model_type = raw.get("model_type")
    if model_type not in config_classes:
        raise FolderError(
            f"{folder / CONFIG_NAME} has model_type {model_type!r}, which is not a SLAM variant; slam-hf push "
            f"publishes {', '.join(sorted(config_classes))}. Fix model_type, or push other models with "
            "huggingface_hub's upload_folder"
        )
    try:
        config = config_classes[model_type].from_dict(dict(raw))
    except (TypeError, ValueError) as err:
        raise FolderError(f"{folder / CONFIG_NAME} is not a valid {model_type} config: {err}") from err
    architectures = raw.get("architectures") or []
    if len(architectures) != 1:
        raise FolderError(
            f"{CONFIG_NAME} must name exactly one model class in `architectures`, got {architectures!r}; "
            "save the folder with model.save_pretrained"
        )
    auto_map = raw.get("auto_map") or {}
    config.auto_map = auto_map
    missing = config.missing_auto_map_entries()
    if missing:
        entries = ", ".join(f'"{key}": "{value}"' for key, value in missing.items())
        raise FolderError(
            f"{CONFIG_NAME}'s auto_map lacks {', '.join(missing)}, so Hub users without slam_hf cannot load the "
            f"model: add {entries}, or re-save it with save_pretrained after `import slam_hf` (which writes "
            "every entry and copies the code)"
        )
    code_files = _check_code_files(folder, auto_map)
    written: list[str] = []
    _check_weights(folder, written)
    model = _load_model(folder, architectures[0])
    _check_preprocessing(folder, config)
    readme = folder / README_NAME
    if readme.is_file():
        _check_card(readme)
    else:
        render_generic_card(model, folder, repo_id).save(readme)
        written.append(README_NAME)
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not _ignored(p.relative_to(folder))
    )
    missing_code = sorted(set(code_files) - set(files))
    if missing_code:  # only if an ignore pattern would drop them
        raise FolderError(f"remote-code files would not be uploaded: {', '.join(missing_code)}")
    return FolderReport(folder, model_type, architectures[0], model.num_parameters(), files, written)


def _ignored(relative: Path) -> bool:
    from huggingface_hub.utils import filter_repo_objects

    return not list(filter_repo_objects([relative.as_posix()], ignore_patterns=PUSH_IGNORE_PATTERNS))


def _check_card(readme: Path) -> None:
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(readme)
    except Exception as err:  # the metadata block is YAML; huggingface_hub raises several types
        raise FolderError(
            f"{readme} has an unreadable metadata block: {err}; fix the YAML between the --- lines"
        ) from err
    if card.data.get("library_name") != "transformers":
        raise FolderError(
            f"{readme}'s metadata lacks `library_name: transformers` (the Hub then shows no 'Use in Transformers' "
            "snippet); add it to the YAML block, or delete README.md and let slam-hf push write a card"
        )


def render_generic_card(model, folder: Path, repo_id: str | None):
    """A model card for a folder pushed without one: architecture, usage, PEFT targets, compatibility, limitations.

    It reports training metrics only if the folder holds `slam-hf train`'s training_metrics.json (the cards that
    `slam-hf train` writes itself are richer); otherwise it says that none were recorded.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .training.run_config import DECODER_LORA_PATTERN, IMAGE_TEXT_TASK, lora_targets, template_path, variants

    config = model.config
    variant = variants()[config.model_type]
    image_text = variant.task == IMAGE_TEXT_TASK
    metrics_path = folder / "training_metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    repo_id = repo_id or folder.resolve().name
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag=variant.task,
        tags=["slam", "custom_code", config.model_type],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(GENERIC_TEMPLATE_NAME)),
        repo_id=repo_id,
        variant=config.model_type,
        variant_summary=variant.summary,
        architecture=type(model).__name__,
        params=f"{model.num_parameters():,}",
        rows=variant.card_rows(config),
        image_text=image_text,
        head_auto_class=variant.head_auto_classes[0],
        lora_targets=[DECODER_LORA_PATTERN] if image_text else lora_targets(config),
        lora_modules=variant.lora_modules,
        usage_note=variant.usage_note,
        interpretation=variant.interpretation,
        tested_range=tested_transformers_range(),
        metrics=metrics,
    )


def push_folder(
    folder,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    dry_run: bool = False,
) -> dict:
    """Check `folder` (see `check_folder`), upload it to `repo_id` in one commit and verify the upload.

    Returns `{"repo_id", "commit", "url", "files", "written"}` (commit and url are None for a dry run).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/") or " " in repo_id:
        raise FolderError(f"--repo must be NAME or ORG/NAME, got {repo_id!r}")
    report = check_folder(folder, repo_id)
    result = {
        "repo_id": repo_id,
        "commit": None,
        "url": None,
        "files": report.files,
        "written": report.written,
        "summary": report.summary(),
    }
    if dry_run:
        return result
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(report.folder),
        revision=revision,
        commit_message=commit_message
        or f"Upload {report.architecture} ({report.parameters:,} parameters) with slam-hf push",
        ignore_patterns=PUSH_IGNORE_PATTERNS,
        create_pr=create_pr,
    )
    verify_upload(api, repo_id, report, commit.oid)
    result.update(repo_id=repo_id, commit=commit.oid, url=str(commit.commit_url))
    return result


def verify_upload(api, repo_id: str, report: FolderReport, commit_sha: str) -> None:
    """Every file of the folder is in the commit, with the same sha256 (LFS) or git blob id."""
    check = api.verify_repo_checksums(repo_id, local_dir=str(report.folder), revision=commit_sha)
    uploaded = set(report.files)
    bad = [m for m in check.mismatches if m["path"] in uploaded]
    absent = sorted(uploaded & set(check.extra_paths))
    if bad or absent:
        details = [
            f"{m['path']} ({m['algorithm']} {m['actual'][:12]}… here, {m['expected'][:12]}… on the Hub)" for m in bad
        ]
        details += [f"{path} (not in the commit)" for path in absent]
        raise FolderError(
            f"the upload to {repo_id} at {commit_sha} does not match {report.folder}: {'; '.join(details)}. "
            "Push again; if it persists, check the files for concurrent writes."
        )
