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

The latent loop (slam_loop) also picks its depth in every training forward (slam_loop_training.sample_iterations):
the resumed run must run the very same depths after the checkpoint, with the depth drawn from torch's global
generator (the default "lognormal_poisson") and with "loss_triggered", which reads the batch's own loss.
"""

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from slam_common import single_threaded_torch
from training_common import TINY_V1_FIELDS

from slam_hf import slam_loop
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


def _loop(doc: dict) -> None:
    # 1 prelude layer, 2 shared core layers looped up to 3 times, 1 coda layer. Depth mean 2 (default: the maximum,
    # which most draws hit), so that depths 1, 2 and 3 all occur after either checkpoint.
    doc["model"].update(hidden_size=64, intermediate_size=128, loop_max_iterations=3, loop_sampling_mean=2.0, **DROPOUT)
    doc["data"]["block_size"] = 64


TINY_MODELS = {"slam-v1-tiny": _v1, "slam-v2-tiny": _v2, "slam-v3-tiny": _v3, "slam-loop-tiny": _loop}


def _config(name: str, folder: Path, **model_fields) -> str:
    doc = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    TINY_MODELS[name](doc)
    doc["model"].update(model_fields)
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


@contextmanager
def _recorded_loop_depths():
    """The core iterations of every training forward of a latent-loop model, in order (empty for the other
    variants): the sampled depth, or where the loss trigger stopped the loop."""
    depths, loop = [], slam_loop.SlamLoopModel._loop

    def recorded(self, *args, **kwargs):
        outputs = loop(self, *args, **kwargs)
        if self.training:
            depths.append(int(outputs[1].max()))
        return outputs

    slam_loop.SlamLoopModel._loop = recorded
    try:
        yield depths
    finally:
        slam_loop.SlamLoopModel._loop = loop


def _train(config: str, output_dir: Path, *extra: str) -> tuple[dict, list]:
    """(logged (loss, grad_norm) per step, the depth of every training forward of a latent-loop model)."""
    with _recorded_loop_depths() as depths:
        assert main(["train", "--config", config, "--output-dir", str(output_dir), *ROWS, *extra]) == 0
    metrics = yaml.safe_load((output_dir / "training_metrics.json").read_text())  # JSON is YAML
    return {e["step"]: (e["loss"], e["grad_norm"]) for e in metrics["log_history"] if "loss" in e}, depths


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def uninterrupted(request, tmp_path_factory):
    """(The variant's run config, the uninterrupted run's folder, its logged (loss, grad_norm) per step, the depth of
    each of its training forwards (latent loop))."""
    folder = tmp_path_factory.mktemp(request.param)
    config = _config(request.param, folder)
    return config, folder / "full", *_train(config, folder / "full")


def _assert_same_weights(resumed_dir: Path, full_dir: Path) -> None:
    resumed, full = load_file(resumed_dir / "model.safetensors"), load_file(full_dir / "model.safetensors")
    assert resumed.keys() == full.keys()
    differ = {name: (resumed[name] - full[name]).abs().max().item() for name in full}
    differ = {name: diff for name, diff in differ.items() if not torch.equal(resumed[name], full[name])}
    assert not differ, f"{len(differ)} of {len(full)} tensors differ; largest: {max(differ.values()):.3g}"


@pytest.mark.parametrize("checkpoint", [2, 4])
def test_resume_equals_the_uninterrupted_run(uninterrupted, checkpoint, tmp_path):
    config, full_dir, full, full_depths = uninterrupted
    assert sorted(full) == list(range(1, STEPS + 1))
    resumed, depths = _train(
        config, tmp_path / "resumed", "--resume-from-checkpoint", str(full_dir / f"checkpoint-{checkpoint}")
    )

    after = range(checkpoint + 1, STEPS + 1)
    assert {step: full[step] for step in after} == {step: resumed[step] for step in after}
    _assert_same_weights(tmp_path / "resumed", full_dir)
    if yaml.safe_load(Path(config).read_text())["model"]["variant"] == "slam_loop":
        # 2 training forwards per step, each with a depth drawn from the global RNG
        assert len(full_depths) == 2 * STEPS, full_depths
        assert len(set(full_depths[2 * checkpoint :])) > 1, f"one depth only after the checkpoint: {full_depths}"
        assert depths == full_depths[2 * checkpoint :], f"resumed depths {depths}, uninterrupted {full_depths}"


def test_loop_resume_with_loss_triggered_depth(tmp_path):
    """With "loss_triggered" a training forward goes past iteration 1 only while its batch's token loss after that
    iteration is above `loop_loss_trigger`. The trigger sits inside the first steps' losses, so the uninterrupted run
    mixes full-depth and one-iteration steps, and the run resumed at step 4 must repeat its depths, losses and
    weights (the rule reads only the batch, so nothing needs restoring)."""
    config = _config("slam-loop-tiny", tmp_path, loop_iteration_sampling="loss_triggered", loop_loss_trigger=8.6)
    full, full_depths = _train(config, tmp_path / "full")
    resumed, depths = _train(
        config, tmp_path / "resumed", "--resume-from-checkpoint", str(tmp_path / "full" / "checkpoint-4")
    )

    assert set(full_depths) == {1, 3}, full_depths
    assert depths == full_depths[len(full_depths) - len(depths) :], f"resumed {depths}, uninterrupted {full_depths}"
    assert {step: full[step] for step in (5, 6)} == {step: resumed[step] for step in (5, 6)}
    _assert_same_weights(tmp_path / "resumed", tmp_path / "full")


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
