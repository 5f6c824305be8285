"""`slam-hf train` for the text variants (SLAM v1, v2, the latent loop): a causal LM on the Shakespeare corpus,
trained with the transformers Trainer, scored on whole held-out works, saved as a Hub-ready folder. A latent-loop
model's exit threshold is calibrated on the held-out rows before it is saved. With a `lora` section (SLAM v1, v2),
LoRA adapters train on the frozen `base_model` instead and the folder holds the adapter (training/lora.py).

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import datasets
import torch
from transformers import AutoModelForCausalLM, Trainer, default_data_collator

from ..data import VALIDATION_WORKS, group_texts_for_causal_lm, load_default_tokenizer, load_shakespeare_corpus
from . import lora, recipe
from .run_config import CARD_TAGS, ConfigError, Variant, lora_targets, template_path, variants
from .trainer import (
    CpuFsdpMixin,
    TrainedRun,
    TrainingRun,
    config_rows,
    distributed_label,
    eval_perplexity,
    evenly_spaced,
    format_seconds,
    full_loop_depth,
    lm_loss_only,
    model_config_from_yaml,
    prepare_run,
    run_description,
)

# Auxiliary training losses a model returns next to `loss`, logged as their mean since the last log: SLAM v2's MoA
# load-balancing loss, the latent loop's confidence-head loss.
AUXILIARY_LOSSES = ("aux_loss", "confidence_loss")


class PerplexityTrainer(CpuFsdpMixin, Trainer):
    """Scores the LM loss alone, and logs the auxiliary losses (MoA load balancing, loop confidence head) next to
    the training loss.

    A model with `router_aux_loss_coef` (SLAM v2) adds coef * aux_loss to its loss whenever labels are given:
    that sum is what trains and what `loss` logs, but evaluation runs with the coefficient at 0, so
    `eval_loss` and perplexity are next-token cross-entropy only, comparable across variants. The latent loop adds
    its confidence-head loss in training mode only, so its evaluation is the LM loss already; it is evaluated at full
    depth (`full_loop_depth`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.auxiliary = {name: [] for name in AUXILIARY_LOSSES}  # training micro-batches since the last log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if isinstance(outputs, dict) and model.training:
            for name, values in self.auxiliary.items():
                if outputs.get(name) is not None:
                    values.append(outputs[name].detach().float())
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        with lm_loss_only(self.model), full_loop_depth(self.model):
            return super().evaluate(*args, **kwargs)

    def log(self, logs, *rest, **kwargs):
        if "eval_loss" in logs:
            logs["eval_perplexity"] = round(math.exp(logs["eval_loss"]), 3)
        if "loss" in logs:
            for name, values in self.auxiliary.items():
                if values:
                    logs[name] = round(torch.stack(values).mean().item(), 4)
                    values.clear()
        super().log(logs, *rest, **kwargs)


class CausalLmRows(NamedTuple):
    corpus: object  # the Shakespeare DatasetDict (works)
    train: object  # block_size-token rows
    validation: object


class Perplexities(NamedTuple):
    loss_before: float
    before: float
    loss_after: float
    after: float


def train_text(args, run: dict, t_start: float) -> dict:
    """`slam-hf train` for a text variant (SLAM v1, v2): causal LM on the Shakespeare corpus."""
    template = template_path()  # fail before training, not after
    variant = variants()[run["variant"]]
    data_cfg = _data_section(args, run)
    job = prepare_run(args, run)
    tokenizer = load_default_tokenizer()
    config = _model_config(variant, run, tokenizer, data_cfg["block_size"])
    rows = _causal_lm_rows(tokenizer, data_cfg, job)

    if run["lora"]:
        model, use_cache = lora.build_peft_model(run, config, job)
    else:
        model, use_cache = recipe.build_model(AutoModelForCausalLM, config, job)
    n_params = model.num_parameters(), model.num_parameters(exclude_embeddings=True)
    job.say(f"{run['variant']}: {n_params[0]:,} parameters ({n_params[1]:,} without embeddings)")
    trainer = PerplexityTrainer(
        model=model,
        args=job.training_args,
        train_dataset=rows.train,
        eval_dataset=rows.validation,
        data_collator=default_data_collator,
    )
    if run["lora"]:
        lora.check_not_fsdp(trainer)
    trained = recipe.train_with_report(trainer, job)
    scores = _report_perplexities(job, trained, is_lora=bool(run["lora"]))
    # Every process takes part in gathering FSDP shards; only the main one writes.
    model, parameters_per_process = recipe.gather_model(trainer, model, AutoModelForCausalLM, config)
    if job.processes > 1:
        job.say(
            f"parameters held per process ({distributed_label(trainer)}): "
            + " / ".join(f"{n:,}" for n in parameters_per_process)
            + f" of {n_params[0]:,}"
        )
    if not job.is_main:
        return recipe.worker_result(job, trained, scores.loss_after)

    calibration = _calibrate_exit(model, rows.validation, run, job)
    if run["lora"]:  # an adapter folder: PEFT writes its README.md
        lora.save_adapter_folder(model, job, tokenizer)
    else:
        recipe.save_hub_folder(model, job, use_cache, run["generation"], tokenizer, tokenizer)
    wall_seconds = time.perf_counter() - t_start
    description = run_description(trainer, job, trained, parameters_per_process, wall_seconds)
    metrics = _metrics(run, data_cfg, job, trainer, trained, config, rows, n_params, scores, description)
    if calibration is not None:
        metrics["exit_calibration"] = calibration
    if run["lora"]:
        metrics["lora"] = lora.lora_metrics(run, model)
    recipe.write_metrics(job, metrics)
    if not run["lora"]:
        _write_card(template, args, run, variant, job, trained, metrics, config, rows, tokenizer)
    run_tokens = _run_tokens(job, trained, data_cfg["block_size"])
    job.say(
        f"saved {job.output_dir}: {n_params[0]:,} params, held-out perplexity {scores.before:.2f} -> "
        f"{scores.after:.2f}, {run_tokens:,} train tokens at {run_tokens / trained.optim_seconds:,.0f} tokens/s, "
        f"wall time {format_seconds(wall_seconds)}"
    )
    return metrics


def _calibrate_exit(model, validation, run: dict, job: TrainingRun) -> dict | None:
    """slam_loop: set the model's exit threshold for the loss budget on the held-out rows (the rows that scored
    the run), before it is saved; returns the record training_metrics.json keeps (None for other variants or with
    `exit_calibration.enabled: false`)."""
    settings = run.get("exit_calibration")
    if not settings or not settings["enabled"]:
        return None
    from .loop import calibrate_exit_threshold

    batch_size = job.training_args.per_device_eval_batch_size
    ids = torch.tensor(validation["input_ids"])
    batches = [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]
    job.say(
        f"calibrating the loop exit ({settings['criterion']}) on {len(ids)} held-out rows, loss budget "
        f"{settings['loss_budget']:g} (+{100 * settings['loss_budget']:g} % over full depth)"
    )
    started = time.perf_counter()
    result = calibrate_exit_threshold(model, batches, settings["loss_budget"], settings["criterion"])
    record = exit_calibration_record(result, model.config.loop_max_iterations, time.perf_counter() - started)
    job.say(exit_calibration_summary(record))
    return record


def exit_calibration_record(result, max_iterations: int, seconds: float) -> dict:
    """training_metrics.json's `exit_calibration`: a `slam_hf.training.loop.Calibration` in plain numbers."""
    full, chosen = result.full_depth, result.chosen
    return {
        "criterion": result.criterion,
        "threshold": result.threshold,  # None: no threshold met the budget, every token runs full depth
        "loss_budget": result.loss_budget,
        "full_depth_loss": full.loss,
        "full_depth_perplexity": math.exp(full.loss),
        "chosen_loss": chosen.loss,
        "chosen_perplexity": math.exp(chosen.loss),
        "loss_increase": chosen.loss / full.loss - 1 if full.loss else 0.0,
        "mean_iterations": chosen.mean_iterations,
        "max_iterations": max_iterations,
        "compute_saved": 1 - chosen.mean_iterations / max_iterations,
        "tokens": full.tokens,
        "seconds": seconds,
        "curve": [
            {"threshold": point.threshold, "loss": point.loss, "mean_iterations": point.mean_iterations}
            for point in result.curve
        ],
    }


def exit_calibration_summary(record: dict) -> str:
    """One status line for a calibration record."""
    full = f"full-depth held-out loss {record['full_depth_loss']:.4f}"
    if record["threshold"] is None:
        return (
            f"loop exit: no {record['criterion']} threshold kept the held-out loss within "
            f"+{100 * record['loss_budget']:g} % of the {full}; the exit stays off (all "
            f"{record['max_iterations']} iterations)"
        )
    return (
        f"loop exit: {record['criterion']} threshold {record['threshold']:g}, held-out loss "
        f"{record['chosen_loss']:.4f} ({full}, +{100 * record['loss_increase']:.2f} %), "
        f"{record['mean_iterations']:.2f} of {record['max_iterations']} core iterations per token "
        f"({100 * record['compute_saved']:.0f} % of core compute saved)"
    )


def _data_section(args, run: dict) -> dict:
    """The YAML's `data` section with the command line's row limits (updated in place: the run records it)."""
    data_cfg = run["data"]
    for key in ("max_train_rows", "max_eval_rows"):
        if getattr(args, key) is not None:
            data_cfg[key] = getattr(args, key)
    return data_cfg


def _model_config(variant: Variant, run: dict, tokenizer, block_size: int):
    if run["lora"]:
        config = lora.base_config(variant, run["base_model"], tokenizer)
    else:
        config = model_config_from_yaml(variant, run["model"], tokenizer)
    if config.position_embedding_type == "learned" and block_size > config.max_position_embeddings:
        raise ConfigError(
            f"`data.block_size` ({block_size}) exceeds `model.max_position_embeddings` "
            f"({config.max_position_embeddings})"
        )
    return config


def _causal_lm_rows(tokenizer, data_cfg: dict, job: TrainingRun) -> CausalLmRows:
    """The corpus cut into `block_size`-token rows; each split limited to evenly spaced rows, so every work stays."""
    block_size = data_cfg["block_size"]
    job.say(f"preparing data: Shakespeare corpus, block_size={block_size}")
    datasets.disable_progress_bars()
    corpus = load_shakespeare_corpus()
    train_rows = group_texts_for_causal_lm(corpus["train"], tokenizer, block_size)
    eval_rows = group_texts_for_causal_lm(corpus["validation"], tokenizer, block_size)
    datasets.enable_progress_bars()
    train_rows_total, eval_rows_total = len(train_rows), len(eval_rows)
    train_rows = evenly_spaced(train_rows, data_cfg["max_train_rows"])
    eval_rows = evenly_spaced(eval_rows, data_cfg["max_eval_rows"])
    job.say(
        f"train: {len(train_rows)}/{train_rows_total} rows of {block_size} tokens from "
        f"{corpus['train'].num_rows} works; validation: {len(eval_rows)}/{eval_rows_total} rows from the "
        f"{len(VALIDATION_WORKS)} held-out works ({', '.join(VALIDATION_WORKS)})"
    )
    return CausalLmRows(corpus, train_rows, eval_rows)


def _report_perplexities(job: TrainingRun, trained: TrainedRun, is_lora: bool = False) -> Perplexities:
    loss_before, ppl_before = eval_perplexity(trained.before)
    loss_after, ppl_after = eval_perplexity(trained.final_eval)
    start = recipe.starting_point(job, trained)
    if is_lora and job.resume is None:
        start = "of the base model (the adapters start as the identity)"
    job.say(f"held-out perplexity {start}: {ppl_before:.2f} (loss {loss_before:.4f})")
    job.say(f"held-out perplexity after training: {ppl_after:.2f} (loss {loss_after:.4f})")
    return Perplexities(loss_before, ppl_before, loss_after, ppl_after)


def _run_tokens(job: TrainingRun, trained: TrainedRun, block_size: int) -> int:
    """Tokens this invocation trained on (a resumed run: those after its checkpoint)."""
    return (trained.steps - trained.start_step) * job.rows_per_step * block_size


def _metrics(run, data_cfg, job, trainer, trained, config, rows, n_params, scores, description) -> dict:
    """training_metrics.json of a text run."""
    block_size = data_cfg["block_size"]
    aux_losses = trained.logged("aux_loss")
    confidence_losses = trained.logged("confidence_loss")
    train_losses = trained.logged("loss")
    return {
        "variant": run["variant"],
        "model_name": job.model_name,
        "parameters": n_params[0],
        "non_embedding_parameters": n_params[1],
        "val_loss_before": scores.loss_before,
        "val_perplexity_before": scores.before,
        "val_loss_after": scores.loss_after,
        "val_perplexity_after": scores.after,
        "val_rows": len(rows.validation),
        "val_tokens": len(rows.validation) * block_size,
        "train_rows": len(rows.train),
        "train_steps": trained.steps,
        "train_epochs": trainer.state.epoch,
        "train_tokens": trained.steps * job.rows_per_step * block_size,
        "train_loss_mean": float(trained.output.training_loss),
        "train_loss_last_logged": train_losses[-1] if train_losses else None,
        # SLAM v2: the MoA load-balancing loss (1 = balanced routing), in the training loss with this weight;
        # never in val_loss/perplexity. None for variants without one.
        "router_aux_loss_coef": getattr(config, "router_aux_loss_coef", None),
        "train_aux_loss_first_logged": aux_losses[0] if aux_losses else None,
        "train_aux_loss_last_logged": aux_losses[-1] if aux_losses else None,
        # slam_loop: the confidence head's loss, in the training loss with this weight; never in val_loss. None for
        # the other variants.
        "loop_confidence_loss_weight": getattr(config, "loop_confidence_loss_weight", None),
        "train_confidence_loss_first_logged": confidence_losses[0] if confidence_losses else None,
        "train_confidence_loss_last_logged": confidence_losses[-1] if confidence_losses else None,
        "train_seconds": trained.train_seconds,
        "train_seconds_excluding_eval": trained.optim_seconds,
        # this invocation's steps (a resumed run: those after its checkpoint) over its optimisation time
        "train_tokens_per_second": _run_tokens(job, trained, block_size) / trained.optim_seconds,
        **description,
        "block_size": block_size,
        "seed": job.training_args.seed,
        "eval_curve": [
            {"step": e["step"], "eval_loss": e["eval_loss"], "eval_perplexity": math.exp(e["eval_loss"])}
            for e in trained.history
            if "eval_loss" in e
        ],
        **recipe.provenance(run, data_cfg, job, trained.history),
    }


def _write_card(template, args, run, variant, job, trained, metrics, config, rows, tokenizer) -> None:
    recipe.write_model_card(
        template,
        args,
        run,
        variant,
        job,
        trained,
        metrics,
        pipeline_tag="text-generation",
        tags=list(CARD_TAGS),
        metric="perplexity",
        eval_result=dict(
            task_name="Causal language modeling",
            dataset_type="shakespeare",
            dataset_name="Shakespeare, held-out works",
            dataset_split="validation",
            metric_name="Perplexity (held-out works)",
            metric_value=round(metrics["val_perplexity_after"], 2),
        ),
        config_rows=config_rows(config, metrics["block_size"], variant),
        lora_target_modules=lora_targets(config),
        validation_works=", ".join(VALIDATION_WORKS),
        train_works=rows.corpus["train"].num_rows,
        tokenizer_size=f"{len(tokenizer):,}",
        params_no_emb=f"{metrics['non_embedding_parameters']:,}",
        train_tokens=f"{metrics['train_tokens']:,}",
        val_tokens=f"{metrics['val_tokens']:,}",
        ppl_before=f"{metrics['val_perplexity_before']:.2f}",
        ppl_after=f"{metrics['val_perplexity_after']:.2f}",
        tokens_per_second=f"{metrics['train_tokens_per_second']:,.0f}",
        resumed_step=trained.start_step,
    )
