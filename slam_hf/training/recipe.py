"""The steps both `slam-hf train` recipes (text.py, image_text.py) take in the same way: build the model, train and
score it, gather it from every process, save the Hub folder, write training_metrics.json and the model card.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bench.machine import software_versions
from .run_config import Variant
from .trainer import (
    TrainedRun,
    TrainingRun,
    count_parameters_per_process,
    distributed_label,
    enum_value,
    format_seconds,
    generation_summary,
    hardware_description,
    render_model_card,
    save_model_folder,
    train_and_evaluate,
    unsharded_model,
)


def build_model(auto_class, config, job: TrainingRun):
    """`auto_class.from_config(config)` and its `use_cache`, which the saved config keeps (Trainer switches the
    cache off for training).

    The model is built before Trainer seeds anything; every process builds the same weights (FSDP2 does not
    broadcast them from rank 0 as DDP does).
    """
    from transformers import set_seed

    set_seed(job.training_args.seed)
    model = auto_class.from_config(config)
    return model, model.config.use_cache


def train_with_report(trainer, job: TrainingRun) -> TrainedRun:
    """Says where the run trains, then trains and scores it before and after (`train_and_evaluate`)."""
    job.say(f"hardware: {hardware_description(job.processes, distributed_label(trainer))}")
    return train_and_evaluate(trainer, job)


def starting_point(job: TrainingRun, trained: TrainedRun) -> str:
    """What the "before" numbers score: a fresh model, or the checkpoint a resumed run started from."""
    return "at initialisation" if job.resume is None else f"at the checkpoint (step {trained.start_step})"


def gather_model(trainer, model, auto_class, config) -> tuple[object, list[int]]:
    """(The trained model as one plain module, parameter elements each process held). Collective: every process
    calls it; under FSDP only the main process gets the model (`unsharded_model`, into a fresh
    `auto_class.from_config(config)`), the others None."""
    parameters_per_process = count_parameters_per_process(trainer)
    return unsharded_model(trainer, model, lambda: auto_class.from_config(config)), parameters_per_process


def worker_result(job: TrainingRun, trained: TrainedRun, val_loss_after: float) -> dict:
    """What a process other than the main one returns: it writes nothing."""
    return {
        "train_steps": trained.steps,
        "val_loss_after": val_loss_after,
        "process_index": job.training_args.process_index,
    }


def save_hub_folder(model, job: TrainingRun, use_cache: bool, generation: dict, tokenizer, processing_class, **ids):
    """Hub folder: weights + config + remote code + generation config + tokenizer or processor.

    The generation config takes the tokenizer's pad/bos/eos ids (and `ids`, e.g. decoder_start_token_id) before
    the YAML's `generation` section goes over it.
    """
    token_ids = {name: getattr(tokenizer, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    for name, value in {**token_ids, **ids}.items():
        setattr(model.generation_config, name, value)
    save_model_folder(model, job.output_dir, use_cache, generation)
    processing_class.save_pretrained(job.output_dir)


def provenance(run: dict, data_cfg: dict, job: TrainingRun, history: list) -> dict:
    """The last fields of training_metrics.json: the settings the run used, the software and the whole log."""
    return {
        "training_config": {"model": run["model"], "data": data_cfg, "training": job.train_cfg},
        "versions": software_versions(),
        "log_history": history,
    }


def write_metrics(job: TrainingRun, metrics: dict) -> None:
    (job.output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def write_model_card(
    template, args, run: dict, variant: Variant, job: TrainingRun, trained: TrainedRun, metrics: dict, **card
) -> None:
    """README.md from `template`: the fields every card fills in, plus `card` (render_model_card's metadata
    arguments and the template's own variables)."""
    training_args = job.training_args
    model_card = render_model_card(
        template,
        job.model_name,
        repo_id=job.repo_id,
        variant=run["variant"],
        variant_summary=variant.summary,
        interpretation=variant.interpretation,
        lora_modules=variant.lora_modules,
        usage_note=variant.usage_note,
        m=metrics,
        t=training_args,
        optimizer=enum_value(training_args.optim),
        scheduler=enum_value(training_args.lr_scheduler_type),
        params=f"{metrics['parameters']:,}",
        loss_before=f"{metrics['val_loss_before']:.4f}",
        loss_after=f"{metrics['val_loss_after']:.4f}",
        wall_time=format_seconds(metrics["wall_seconds"]),
        train_time=format_seconds(trained.optim_seconds),
        config_file=Path(args.config).as_posix(),
        generation_defaults=generation_summary(run["generation"]),
        **card,
    )
    model_card.save(job.output_dir / "README.md")
