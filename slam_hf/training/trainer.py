"""The machinery both `slam-hf train` paths share: Trainer arguments, resuming, distributed runs (DDP, FSDP2 on
CPU), the before/after held-out evaluation, model cards and the saved Hub folder.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

from ..bench.machine import cpu_name
from .run_config import ConfigError, Variant

logger = logging.getLogger(__name__)


def evenly_spaced(dataset, limit):
    """A fixed subset of `limit` rows spread over the whole split, so every work is represented."""
    n = len(dataset)
    if limit is None or limit >= n:
        return dataset
    if limit == 1:
        return dataset.select([0])
    return dataset.select(sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)}))


def hardware_description(processes: int = 1, distributed: str | None = None) -> str:
    """The device one process ran on; with `processes` > 1, how many ran and how (`distributed`: e.g. "DDP, gloo")."""
    import torch

    if processes > 1:
        return f"{processes} processes ({distributed or 'distributed'}), each on {hardware_description()}"
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()}"
    return f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads ({os.cpu_count()} logical cores visible)"


def config_rows(config, block_size, variant: Variant) -> list[tuple[str, object]]:
    if getattr(config, "core_cache_slots", None) is None:
        layers = ("num_hidden_layers", f"{config.num_hidden_layers} (" + " → ".join(config.layer_schedule) + ")")
    else:  # the latent loop: its num_hidden_layers counts cache layers; the loop rows give the structure
        layers = ("num_hidden_layers (cache layers)", config.num_hidden_layers)
    rows = [
        ("model_type", config.model_type),
        ("hidden_size", config.hidden_size),
        layers,
        ("num_attention_heads / num_key_value_heads", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("head_dim", config.head_dim),
        ("intermediate_size", config.intermediate_size),
        ("mlp_type", config.mlp_type),
        ("norm", f"{config.norm_position}-{config.norm_type}"),
        ("position_embedding_type", config.position_embedding_type),
    ]
    rows += variant.card_rows(config)
    rows += [
        ("vocab_size", config.vocab_size),
        ("tie_word_embeddings", config.tie_word_embeddings),
        ("training context (block_size)", block_size),
    ]
    return rows


def render_model_card(template, model_name, pipeline_tag, tags, metric, eval_result: dict, **template_vars):
    """The run's model card: shared card metadata, one measured `EvalResult`, the template filled in."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    card_data = ModelCardData(
        model_name=model_name,
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        metrics=[metric],
        eval_results=[EvalResult(task_type=pipeline_tag, metric_type=metric, **eval_result)],
    )
    from ..hub import tested_transformers_range

    template_vars.setdefault("tested_range", tested_transformers_range())
    # with eval_results, model_name leaves card_data's template variables: pass it again
    return ModelCard.from_template(card_data, template_path=str(template), model_name=model_name, **template_vars)


def _training_arguments(output_dir, train_cfg: dict):
    """The run's TrainingArguments; an invalid `training` section becomes a ConfigError naming it."""
    import torch
    from transformers import TrainingArguments

    # Checkpoints only when the YAML asks for them (training.save_strategy / save_steps); the final folder is
    # written by the command either way.
    train_cfg = {"save_strategy": "no", **train_cfg}
    try:
        return TrainingArguments(
            output_dir=str(output_dir),
            report_to=[],
            disable_tqdm=False,
            use_cpu=not torch.cuda.is_available(),
            prediction_loss_only=True,
            **train_cfg,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid `training` section: {err}") from err


def eval_perplexity(metrics: dict) -> tuple[float, float]:
    loss = float(metrics["eval_loss"])
    return loss, math.exp(loss)


def _resume_checkpoint(value, output_dir: Path) -> tuple[str, int, int] | None:
    """`--resume-from-checkpoint`: (checkpoint folder, its global step, entries in its log history); `latest` is the
    newest checkpoint-N in `output_dir`. None when not resuming."""
    if value is None:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    if value == "latest":
        path = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if path is None:
            raise ConfigError(
                f"--resume-from-checkpoint latest: no checkpoint-N folder in {output_dir}; runs write them with "
                "`training.save_strategy: steps` and `training.save_steps: N` in the YAML, or pass a checkpoint "
                "folder (and the --output-dir of the run that wrote it for `latest`)"
            )
        path = Path(path)
    else:
        path = Path(value)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise ConfigError(
            f"--resume-from-checkpoint {value}: {path} is not a Trainer checkpoint (no trainer_state.json); pass a "
            "checkpoint-N folder written with `training.save_strategy` in the YAML, or `latest`"
        )
    state = json.loads(state_file.read_text(encoding="utf-8"))
    return str(path), int(state["global_step"]), len(state.get("log_history", []))


def enable_cpu_fsdp(trainer) -> None:
    """Under `accelerate launch` with `distributed_type: FSDP` on CPU, shard with FSDP2 (torch's `fully_shard`).

    accelerate (1.10 to 1.15 at least) switches to FSDP only for accelerator devices: `AcceleratorState` sets
    `DistributedType.FSDP` inside its MULTI_GPU / NPU / XPU / ... branch (accelerate/state.py), so a CPU run stays
    MULTI_CPU, the FSDP plugin is dropped and Trainer wraps the model in DDP, replicating every parameter without a
    word. torch's FSDP2 runs on CPU with gloo, and so does accelerate's FSDP2 preparation once the state says FSDP:
    this turns it on, with the plugin accelerate builds from the launcher's FSDP_* variables. FSDP1 cannot run on
    CPU: torch raises "FSDP needs a non-CPU accelerator device" (torch/distributed/fsdp/_init_utils.py).
    Call right after `Trainer.create_accelerator_and_postprocess`.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or trainer.is_fsdp_enabled:
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_AUTO_WRAP_POLICY, ... like accelerate does
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"FSDP version {plugin.fsdp_version} cannot run on CPU (torch: 'FSDP needs a non-CPU accelerator "
            "device'); set `fsdp_version: 2` under `fsdp_config` in the accelerate config, as "
            "configs/accelerate/fsdp-cpu-2proc.yaml does"
        )
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # as AcceleratorState.__init__ does on its FSDP path: later AcceleratorState() calls copy it back from here
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


class CpuFsdpMixin:
    """Mixed into both training paths' Trainer subclasses (before `Trainer`): FSDP2 on CPU (`enable_cpu_fsdp`)."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        enable_cpu_fsdp(self)


def distributed_label(trainer) -> str:
    """How the processes of this run worked together, e.g. "DDP, gloo" or "FSDP2, gloo"."""
    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled:
        kind = f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', 1)}"
    elif state.num_processes > 1:
        kind = "DDP"
    else:
        kind = "single process"
    backend = getattr(state, "backend", None)
    return f"{kind}, {backend}" if backend else kind


def count_parameters_per_process(trainer) -> list[int]:
    """Parameter elements each process holds after `prepare` (FSDP: its shards; DDP: a full replica). Collective."""
    import torch

    model = trainer.model_wrapped
    if trainer.is_fsdp_enabled:
        # FSDP2 leaves groups with reshard_after_forward=False (accelerate's embedding/head group) gathered after a
        # forward pass; reshard to count what each process stores between steps.
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    counts = trainer.accelerator.gather(torch.tensor([local], device=trainer.args.device))
    return [int(n) for n in counts.tolist()]


def unsharded_model(trainer, model, build):
    """The trained model as one plain module: `model` itself, or under FSDP a fresh `build()` holding the full
    state dict (gathered from every process; a collective, so every process calls it; only the main process gets
    the weights)."""
    if not trainer.is_fsdp_enabled:
        return model
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return None
    full = build()
    full.load_state_dict(state_dict)
    return full


@contextlib.contextmanager
def distributed_teardown():
    """Under `accelerate launch`, end the process group when training is done: left to interpreter exit, gloo's
    threads can abort a rank ("terminate called without an active exception", seen on a busy 2-core machine)
    after the run has already finished and saved."""
    yield  # on an error, no barrier: the other ranks may never reach it
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def using_torch_threads(count):
    """Within the block, torch uses `count` intra-op threads (None: leave the setting alone)."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TrainingRun(NamedTuple):
    """What both training paths settle before training: overrides applied, where it writes, how it reports."""

    train_cfg: dict  # the YAML's `training` section with the command-line overrides
    output_dir: Path
    model_name: str
    repo_id: str
    resume: tuple | None  # _resume_checkpoint's (folder, step, log entries)
    training_args: object
    is_main: bool  # under `accelerate launch` only the main process prints and writes

    @property
    def processes(self) -> int:
        return max(self.training_args.world_size, 1)

    @property
    def rows_per_step(self) -> int:
        """Rows per optimisation step over all processes (each draws its own per-device batch)."""
        args = self.training_args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * self.processes

    def say(self, message):
        """A status line (logged at INFO; `slam-hf` shows it as `[slam-hf] message`), from the main process only."""
        if self.is_main:
            logger.info(message)


def prepare_run(args, run: dict) -> TrainingRun:
    train_cfg = dict(run["training"])
    if args.max_steps is not None:
        train_cfg["max_steps"] = args.max_steps
    if args.seed is not None:
        train_cfg["seed"] = args.seed
    train_cfg.setdefault("seed", 42)
    output_dir = Path(args.output_dir or run["output_dir"] or Path("outputs") / Path(args.config).stem)
    # Under `accelerate launch` every process runs the whole command (data, training and evaluation are sharded
    # across them). The "before" evaluation runs inside train() (eval_on_start), after the model is prepared: a
    # Trainer.evaluate() call before train() prepares the model for evaluation only, and with accelerate 1.15 the
    # later training prepare() then skips the DDP wrapper (`_is_accelerate_prepared`), so processes would not sync
    # gradients. Resumed, that evaluation scores the checkpoint's weights (logged at its step).
    training_args = _training_arguments(output_dir, {**train_cfg, "eval_on_start": True})
    return TrainingRun(
        train_cfg=train_cfg,
        output_dir=output_dir,
        model_name=run["hub"].get("model_name") or output_dir.resolve().name,
        repo_id=run["hub"].get("repo_id") or str(output_dir),
        resume=_resume_checkpoint(getattr(args, "resume_from_checkpoint", None), output_dir),
        training_args=training_args,
        is_main=training_args.process_index == 0,
    )


def model_config_from_yaml(variant: Variant, model_section: dict, tokenizer, **defaults):
    """The variant's config from the YAML's `model` section; vocab_size and special-token ids default to the
    tokenizer's (it is built first for that reason)."""
    model_kwargs = dict(model_section)
    vocab_size = model_kwargs.setdefault("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ConfigError(f"`model.vocab_size` ({vocab_size}) is smaller than the tokenizer's {len(tokenizer)} tokens")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        model_kwargs.setdefault(name, getattr(tokenizer, name))
    for name, value in defaults.items():
        model_kwargs.setdefault(name, value)
    try:
        return variant.config_class(**model_kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid `model` section: {err}") from err


class TrainedRun(NamedTuple):
    output: object  # Trainer.train()'s TrainOutput
    steps: int  # global step reached (a resumed run counts its checkpoint's steps)
    start_step: int  # 0, or the checkpoint's step
    history: list  # the whole run's log (a resumed run's starts with its checkpoint's entries), final eval included
    before: dict  # eval_on_start: the model train() started from
    final_eval: dict
    optim_seconds: float  # this invocation's training time without its evaluations

    @property
    def train_seconds(self) -> float:
        """This invocation's training time, its evaluations included."""
        return float(self.output.metrics["train_runtime"])

    def logged(self, key: str) -> list:
        """Every value of `key` in the whole run's log, in order (e.g. "loss")."""
        return [entry[key] for entry in self.history if key in entry]


def train_and_evaluate(trainer, run: TrainingRun) -> TrainedRun:
    """trainer.train() (resumed if asked), then the held-out evaluations before and after it."""
    start_step, restored = (run.resume[1], run.resume[2]) if run.resume else (0, 0)
    if run.resume:
        run.say(f"resuming from {run.resume[0]} at step {start_step}")
    output = trainer.train(resume_from_checkpoint=run.resume[0] if run.resume else None)
    steps = trainer.state.global_step
    history = list(trainer.state.log_history)
    this_run = history[restored:]
    before = next(e for e in this_run if "eval_loss" in e)
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in this_run)
    # Trainer already evaluates at the last step when eval_strategy="steps"; reuse that instead of a second pass.
    final_eval = next((e for e in reversed(this_run) if "eval_loss" in e and e.get("step") == steps), None)
    if final_eval is None or final_eval is before:
        final_eval = {**trainer.evaluate(), "step": steps}
        history.append(final_eval)
    optim_seconds = max(float(output.metrics["train_runtime"]) - eval_seconds, 1e-9)
    return TrainedRun(output, steps, start_step, history, before, final_eval, optim_seconds)


def run_description(
    trainer, job: TrainingRun, trained: TrainedRun, parameters_per_process: list[int], wall_seconds: float
) -> dict:
    """The training_metrics.json fields that say how a run was executed (time, hardware, processes, resume)."""
    import time

    return {
        "wall_seconds": wall_seconds,
        "process_cpu_seconds": time.process_time(),  # the main process's
        "hardware": hardware_description(job.processes, distributed_label(trainer)),
        "processes": job.processes,
        "distributed": distributed_label(trainer),
        "global_batch_rows": job.rows_per_step,
        "parameters_per_process": parameters_per_process,
        "resumed_from_checkpoint": job.resume[0] if job.resume else None,
        "resumed_at_step": trained.start_step if job.resume else None,
    }


def save_model_folder(model, output_dir: Path, use_cache: bool, generation: dict) -> None:
    """Weights, config (save_pretrained writes the full auto_map), generation config (the YAML's `generation`
    section over the token ids already set) and remote code into the Hub folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stale = output_dir / "pytorch_model.bin"
    if stale.exists():
        stale.unlink()
    model.config.use_cache = use_cache  # Trainer switched it off for training
    model.generation_config.update(**generation)
    model.save_pretrained(output_dir)


def generation_summary(generation: dict) -> str:
    """The YAML's `generation` section as the model card states it."""
    if not generation:
        return "transformers' defaults: greedy, at most 20 tokens in all"
    return ", ".join(f"`{key}={value!r}`" for key, value in generation.items())


@contextlib.contextmanager
def lm_loss_only(model):
    """Within the block, a model with an auxiliary router loss returns the LM loss alone."""
    config = model.config
    coef = getattr(config, "router_aux_loss_coef", None)
    if not coef:
        yield
        return
    config.router_aux_loss_coef = 0.0
    try:
        yield
    finally:
        config.router_aux_loss_coef = coef


@contextlib.contextmanager
def full_loop_depth(model):
    """Within the block, a latent-loop model runs every token through all its core iterations (no exit), so held-out
    scores during training are the full-depth model's whatever `loop_exit_threshold` the YAML set."""
    config = model.config
    threshold = getattr(config, "loop_exit_threshold", None)
    if threshold is None:
        yield
        return
    config.loop_exit_threshold = None
    try:
        yield
    finally:
        config.loop_exit_threshold = threshold


def enum_value(value) -> str:
    return str(getattr(value, "value", value))


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"
