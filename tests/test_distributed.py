"""Scale-out and resume through `slam-hf train`: 2 processes under `accelerate launch` (DDP and FSDP2, CPU/gloo),
and `--resume-from-checkpoint`.

Every run is SLAM v1 on the real Shakespeare rows: hidden 64, one EF cycle (32/8 windows), 64-token rows, 256
training rows, 16 held-out rows, dropout 0 (no random stream differs between processes), one torch thread per
process. The launched runs use the accelerate configs shipped in configs/accelerate/.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from slam_common import single_threaded_torch
from training_common import TINY_V1_FIELDS

from slam_hf.cli import main
from slam_hf.training.run_config import ConfigError
from slam_hf.training.trainer import _resume_checkpoint, enable_cpu_fsdp

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
STEPS = 4
GLOBAL_BATCH = 8
ROWS = ["--max-train-rows", "256", "--max-eval-rows", "16"]
# 1 process x 8 rows vs 2 processes x 4 rows: the same rows in every step (see the first test), so only the order
# of floating-point sums differs (DDP adds two half-batch gradient sums). Measured: at most 9.5e-7 on a logged loss
# (one float32 ulp at 9.0); held-out loss: 0 (DDP), 9.5e-7 (FSDP2).
LOSS_TOLERANCE = 1e-5

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


def _doc(per_device_batch: int, **training) -> dict:
    doc = yaml.safe_load((REPO / "configs" / "slam-v1-tiny.yaml").read_text())
    doc["torch_threads"] = 1
    doc["model"].update({**TINY_V1_FIELDS, "max_position_embeddings": 128})
    doc["data"]["block_size"] = 64
    doc["training"].update(
        max_steps=STEPS,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=per_device_batch,
        warmup_steps=0,
        logging_steps=1,
        eval_steps=STEPS,
        seed=0,
        **training,
    )
    return doc


def _write(path: Path, doc: dict) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(accelerate_config: str, config: str, output_dir: Path, *extra) -> str:
    """`accelerate launch --config_file configs/accelerate/<accelerate_config> -m slam_hf.cli train ...`; stdout."""
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath)
    launch = ["--config_file", str(ACCELERATE_CONFIGS / accelerate_config), "--main_process_port", str(_free_port())]
    train = ["train", "--config", config, "--output-dir", str(output_dir), *ROWS]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, *extra, "-m", "slam_hf.cli", *train]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "training_metrics.json").read_text())


def _step_losses(metrics: dict) -> dict:
    return {e["step"]: e["loss"] for e in metrics["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: 1 process x 8 rows per step, in this process."""
    tmp = tmp_path_factory.mktemp("one-process")
    config = _write(tmp / "run.yaml", _doc(GLOBAL_BATCH))
    assert main(["train", "--config", config, "--output-dir", str(tmp / "model"), *ROWS]) == 0
    return _metrics(tmp / "model")


@pytest.fixture(scope="module")
def half_batch_config(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("half") / "run.yaml", _doc(GLOBAL_BATCH // 2))


def test_two_processes_match_one_process(one_process, half_batch_config, tmp_path):
    """2 processes x 4 rows (DDP over gloo) log the same training loss at every step as 1 process x 8 rows, and the
    same held-out loss.

    Why the rows are the same: Trainer builds a RandomSampler over the training rows and accelerate's
    `prepare_data_loader` replaces it (use_seedable_sampler, the default) with a SeedableRandomSampler seeded from
    `torch.initial_seed()`, i.e. the seed Trainer set, identically in every process, so every process draws the
    same permutation. The batch sampler (per-device size) is wrapped in a BatchSamplerShard that, without
    split_batches, hands process i every i-th batch: at step k rank 0 gets rows perm[8k:8k+4] and rank 1
    perm[8k+4:8k+8], exactly the 1-process batch perm[8k:8k+8]. The loss is a token sum over the global token count
    (Trainer gathers num_items_in_batch and multiplies each process's loss by the number of processes, which DDP's
    gradient average divides out), so gradients and logged losses are the global-batch ones. Evaluation shards the 16
    held-out rows (8 per process, no padding) and averages over all rows.

    The same comparison caught a real bug: `Trainer.evaluate()` before `train()` prepares the model for evaluation,
    and with accelerate 1.15 the later training `prepare()` then skips the DDP wrapper, so the processes never
    synchronised gradients (step-2 loss off by 0.013). `slam-hf train` evaluates with `eval_on_start` instead.
    """
    stdout = _launch("ddp-cpu-2proc.yaml", half_batch_config, tmp_path / "model")
    two = _metrics(tmp_path / "model")

    ref, got = _step_losses(one_process), _step_losses(two)
    assert sorted(got) == list(range(1, STEPS + 1)) == sorted(ref)
    diffs = {step: abs(got[step] - ref[step]) for step in ref}
    assert max(diffs.values()) <= LOSS_TOLERANCE, diffs
    assert ref[STEPS] < ref[1] - 0.1  # it trains: the comparison is not between two flat lines
    assert abs(two["val_loss_after"] - one_process["val_loss_after"]) <= LOSS_TOLERANCE
    assert two["val_loss_before"] == pytest.approx(one_process["val_loss_before"], abs=LOSS_TOLERANCE)

    # Accounting: the global batch and tokens count both processes; the hardware line says how many ran.
    assert two["processes"] == 2 and one_process["processes"] == 1
    assert two["global_batch_rows"] == one_process["global_batch_rows"] == GLOBAL_BATCH
    assert two["train_tokens"] == one_process["train_tokens"] == STEPS * GLOBAL_BATCH * 64
    assert two["hardware"].startswith("2 processes (DDP, gloo), each on CPU")
    assert two["parameters_per_process"] == [two["parameters"]] * 2  # DDP: full replicas
    # Only the main process prints (and writes): one "saved" line, not two.
    assert stdout.count("[slam-hf] saved ") == 1
    assert stdout.count("[slam-hf] preparing data") == 1


def test_fsdp2_shards_trains_and_saves_a_loadable_folder(one_process, half_batch_config, tmp_path):
    """configs/accelerate/fsdp-cpu-2proc.yaml: FSDP2 over gloo stores half of every parameter per process, trains to
    the same losses as the 1-process run (sharding changes where parameters live, not the arithmetic), and writes a
    full model that `from_pretrained` loads."""
    from transformers import AutoModelForCausalLM

    stdout = _launch("fsdp-cpu-2proc.yaml", half_batch_config, tmp_path / "model")
    metrics = _metrics(tmp_path / "model")

    assert metrics["distributed"] == "FSDP2, gloo"
    total, per_process = metrics["parameters"], metrics["parameters_per_process"]
    assert len(per_process) == 2 and sum(per_process) == total
    assert max(per_process) <= 0.51 * total, per_process  # measured: exactly half each
    assert "parameters held per process (FSDP2, gloo)" in stdout

    assert metrics["val_loss_after"] < metrics["val_loss_before"] - 0.2
    ref, got = _step_losses(one_process), _step_losses(metrics)
    assert max(abs(got[step] - ref[step]) for step in ref) <= LOSS_TOLERANCE
    assert abs(metrics["val_loss_after"] - one_process["val_loss_after"]) <= LOSS_TOLERANCE

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.num_parameters() == total
    assert json.loads((tmp_path / "model" / "config.json").read_text())["architectures"] == ["SlamV1ForCausalLM"]
    logits = model(torch.tensor([[1, 100, 200, 300, 400]])).logits
    assert logits.shape == (1, 5, model.config.vocab_size) and torch.isfinite(logits).all()


def test_fsdp1_on_cpu_is_refused_with_the_reason(monkeypatch):
    """FSDP1 cannot run on CPU (torch raises "FSDP needs a non-CPU accelerator device"): the command says so and
    points at fsdp_version 2 instead of failing inside torch."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    state = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no")
    trainer = SimpleNamespace(accelerator=SimpleNamespace(state=state), is_fsdp_enabled=False)
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        enable_cpu_fsdp(trainer)
    assert state.distributed_type == DistributedType.MULTI_CPU


# --------------------------------------------------------------------------------------------------------------
# resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """4 steps, checkpoints at steps 2 and 4, held-out loss at steps 0 (eval_on_start), 2 and 4."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    doc = _doc(GLOBAL_BATCH // 2, save_strategy="steps", save_steps=STEPS // 2)
    doc["training"]["eval_steps"] = STEPS // 2
    config = _write(tmp / "run.yaml", doc)
    assert main(["train", "--config", config, "--output-dir", str(tmp / "model"), *ROWS]) == 0
    return config, tmp / "model"


def test_resume_reproduces_the_uninterrupted_run(uninterrupted, tmp_path):
    """Resuming from checkpoint-2 into another folder logs bit-identical losses for steps 3-4 and the same final
    held-out loss: the checkpoint restores weights, AdamW moments, the scheduler step and the RNG state, Trainer
    skips the 2 batches already drawn from the same seeded permutation, and the CPU kernels are deterministic for
    identical inputs on one thread. The resumed run's "before" number is the checkpoint's held-out loss (its
    eval_on_start), equal to what the uninterrupted run measured at step 2."""
    config, full_dir = uninterrupted
    full = _metrics(full_dir)
    assert {p.name for p in full_dir.iterdir() if p.name.startswith("checkpoint-")} == {"checkpoint-2", "checkpoint-4"}

    out = tmp_path / "resumed"
    argv = ["train", "--config", config, "--output-dir", str(out), *ROWS]
    assert main(argv + ["--resume-from-checkpoint", str(full_dir / "checkpoint-2")]) == 0
    resumed = _metrics(out)

    full_losses, resumed_losses = _step_losses(full), _step_losses(resumed)
    assert [resumed_losses[s] for s in (3, 4)] == [full_losses[s] for s in (3, 4)]
    assert resumed["val_loss_after"] == full["val_loss_after"]
    eval_at_2 = [e["eval_loss"] for e in full["log_history"] if "eval_loss" in e and e["step"] == 2]
    assert resumed["val_loss_before"] == eval_at_2[0]
    assert resumed["resumed_at_step"] == 2 and resumed["train_steps"] == STEPS
    assert full["resumed_at_step"] is None and full["val_loss_before"] > full["val_loss_after"]
    card = (out / "README.md").read_text()
    assert "resumed from a checkpoint at step 2" in card
    assert f"{math.exp(eval_at_2[0]):.2f}" in card


def test_resume_latest_and_bad_paths(uninterrupted, tmp_path, capsys):
    config, full_dir = uninterrupted
    path, step, _ = _resume_checkpoint("latest", full_dir)
    assert Path(path) == full_dir / "checkpoint-4" and step == 4

    (tmp_path / "empty").mkdir()
    for value, output_dir, fragments in [
        ("latest", tmp_path / "empty", ["--resume-from-checkpoint latest", "no checkpoint-N folder", "save_strategy"]),
        (str(tmp_path / "empty"), tmp_path / "out", ["is not a Trainer checkpoint", "trainer_state.json"]),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["train", "--config", config, "--output-dir", str(output_dir), "--resume-from-checkpoint", value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        for fragment in fragments:
            assert fragment in err
