"""`slam-hf train --resume-from-checkpoint` equals the uninterrupted run bit for bit, for every variant.

Each variant trains a tiny model for 6 optimizer steps with dropout 0.1 (every dropout module draws from torch's
global generator) and 2 micro-batches of 4 rows per step (gradient accumulation), over 32 training rows: 4 steps
per epoch, so the runs cross an epoch boundary (a new shuffle, and for SLAM v3 new augmentation draws). The
uninterrupted run writes checkpoints at steps 2, 4 and 6; a second run resumes from one of them into another
folder. Both must log the very same losses and gradient norms after the checkpoint and save the very same weights
(`torch.equal`, no tolerance): the checkpoint restores weights, optimizer, scheduler and the global RNG, Trainer
re-draws the same shuffle, and every data-side random draw (SLAM v3's digit shifts) is a pure function of
(seed, epoch, row index), so nothing it depends on is left out of the checkpoint.

Resuming from checkpoint-2 skips 2 steps of epoch 0 (Trainer's batch skipping, then the RNG restored after the
first batches are drawn); from checkpoint-4 it starts at the epoch boundary (RNG restored before any batch).
"""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from slam_common import single_threaded_torch
from training_common import TINY_V1_FIELDS

from slam_hf.cli import main

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
ROWS = ["--max-train-rows", "32", "--max-eval-rows", "8"]
DROPOUT = dict(attention_dropout=0.1, hidden_dropout=0.1)

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


def _v1(doc: dict) -> None:
    doc["model"].update({**TINY_V1_FIELDS, **DROPOUT, "max_position_embeddings": 128})
    doc["data"]["block_size"] = 64


def _v2(doc: dict) -> None:
    doc["model"].update(hidden_size=64, intermediate_size=128, ef_cycles=1, moa_num_experts=4, **DROPOUT)
    doc["data"]["block_size"] = 64


def _v3(doc: dict) -> None:
    doc["model"].update(DROPOUT)
    doc["model"]["vision_config"].update(DROPOUT)
    doc["data"]["max_shift"] = 2  # the augmentation whose draws used to be left out of the checkpoint


TINY_MODELS = {"slam-v1-tiny": _v1, "slam-v2-tiny": _v2, "slam-v3-tiny": _v3}


def _config(name: str, folder: Path) -> str:
    doc = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    TINY_MODELS[name](doc)
    doc["torch_threads"] = 1
    doc["training"].update(
        max_steps=STEPS,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=2,
        warmup_steps=0,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="steps",
        save_steps=2,
        seed=0,
    )
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _train(config: str, output_dir: Path, *extra: str) -> dict:
    assert main(["train", "--config", config, "--output-dir", str(output_dir), *ROWS, *extra]) == 0
    metrics = yaml.safe_load((output_dir / "training_metrics.json").read_text())  # JSON is YAML
    return {e["step"]: (e["loss"], e["grad_norm"]) for e in metrics["log_history"] if "loss" in e}


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def uninterrupted(request, tmp_path_factory):
    """(The variant's run config, the uninterrupted run's folder, its logged (loss, grad_norm) per step)."""
    folder = tmp_path_factory.mktemp(request.param)
    config = _config(request.param, folder)
    return config, folder / "full", _train(config, folder / "full")


def _assert_same_weights(resumed_dir: Path, full_dir: Path) -> None:
    resumed, full = load_file(resumed_dir / "model.safetensors"), load_file(full_dir / "model.safetensors")
    assert resumed.keys() == full.keys()
    differ = {name: (resumed[name] - full[name]).abs().max().item() for name in full}
    differ = {name: diff for name, diff in differ.items() if not torch.equal(resumed[name], full[name])}
    assert not differ, f"{len(differ)} of {len(full)} tensors differ; largest: {max(differ.values()):.3g}"


@pytest.mark.parametrize("checkpoint", [2, 4])
def test_resume_equals_the_uninterrupted_run(uninterrupted, checkpoint, tmp_path):
    config, full_dir, full = uninterrupted
    assert sorted(full) == list(range(1, STEPS + 1))
    resumed = _train(
        config, tmp_path / "resumed", "--resume-from-checkpoint", str(full_dir / f"checkpoint-{checkpoint}")
    )

    after = range(checkpoint + 1, STEPS + 1)
    assert {step: full[step] for step in after} == {step: resumed[step] for step in after}
    _assert_same_weights(tmp_path / "resumed", full_dir)


def test_persistent_workers_with_augmentation_are_refused(tmp_path, capsys):
    """Persistent data-loader workers keep the training rows they started with and would never see a new epoch
    (`ShiftedDigitRows.set_epoch`): refused before any data is built, naming both settings."""
    doc = yaml.safe_load(Path(_config("slam-v3-tiny", tmp_path)).read_text())
    doc["training"].update(dataloader_num_workers=1, dataloader_persistent_workers=True)
    config = tmp_path / "workers.yaml"
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), *ROWS])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "`training.dataloader_persistent_workers: true`" in err and "`data.max_shift: 2`" in err
