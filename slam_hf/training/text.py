"""`slam-hf train` for the text variants (SLAM v1, v2): a causal LM on the Shakespeare corpus, trained with the
transformers Trainer, scored on whole held-out works, saved as a Hub-ready folder.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..bench.machine import software_versions
from .run_config import CARD_TAGS, ConfigError, lora_targets, template_path, variants
from .trainer import (
    CpuFsdpMixin,
    config_rows,
    count_parameters_per_process,
    distributed_label,
    enum_value,
    eval_perplexity,
    evenly_spaced,
    format_seconds,
    generation_summary,
    hardware_description,
    lm_loss_only,
    model_config_from_yaml,
    prepare_run,
    render_model_card,
    run_description,
    save_model_folder,
    train_and_evaluate,
    unsharded_model,
)


def train_text(args, run: dict, t_start: float) -> dict:
    """`slam-hf train` for a text variant (SLAM v1, v2): causal LM on the Shakespeare corpus."""
    template = template_path()  # fail before training, not after
    # Training-only imports (datasets, Trainer, model cards) stay out of `generate` and `--help`.
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator, set_seed

    from ..data import VALIDATION_WORKS, group_texts_for_causal_lm, load_default_tokenizer, load_shakespeare_corpus

    variant = variants()[run["variant"]]
    data_cfg = run["data"]
    for key in ("max_train_rows", "max_eval_rows"):
        if getattr(args, key) is not None:
            data_cfg[key] = getattr(args, key)
    block_size = data_cfg["block_size"]
    job = prepare_run(args, run)
    say, training_args, output_dir, resume = job.say, job.training_args, job.output_dir, job.resume
    train_cfg, model_name, repo_id = job.train_cfg, job.model_name, job.repo_id

    tokenizer = load_default_tokenizer()
    config = model_config_from_yaml(variant, run["model"], tokenizer)
    if config.position_embedding_type == "learned" and block_size > config.max_position_embeddings:
        raise ConfigError(
            f"`data.block_size` ({block_size}) exceeds `model.max_position_embeddings` "
            f"({config.max_position_embeddings})"
        )

    say(f"preparing data: Shakespeare corpus, block_size={block_size}")
    datasets.disable_progress_bars()
    corpus = load_shakespeare_corpus()
    train_rows = group_texts_for_causal_lm(corpus["train"], tokenizer, block_size)
    eval_rows = group_texts_for_causal_lm(corpus["validation"], tokenizer, block_size)
    datasets.enable_progress_bars()
    train_rows_total, eval_rows_total = len(train_rows), len(eval_rows)
    train_rows = evenly_spaced(train_rows, data_cfg["max_train_rows"])
    eval_rows = evenly_spaced(eval_rows, data_cfg["max_eval_rows"])
    say(
        f"train: {len(train_rows)}/{train_rows_total} rows of {block_size} tokens from "
        f"{corpus['train'].num_rows} works; validation: {len(eval_rows)}/{eval_rows_total} rows from the "
        f"{len(VALIDATION_WORKS)} held-out works ({', '.join(VALIDATION_WORKS)})"
    )

    # The model is built before Trainer seeds anything; every process builds the same weights (FSDP2 does not
    # broadcast them from rank 0 as DDP does).
    set_seed(training_args.seed)
    model = AutoModelForCausalLM.from_config(config)
    use_cache = model.config.use_cache  # Trainer switches the cache off for training; the saved config keeps it
    n_params = model.num_parameters()
    n_params_no_emb = model.num_parameters(exclude_embeddings=True)
    say(f"{run['variant']}: {n_params:,} parameters ({n_params_no_emb:,} without embeddings)")

    class PerplexityTrainer(CpuFsdpMixin, Trainer):
        """Scores the LM loss alone, and logs the auxiliary (MoA load-balancing) loss next to the training loss.

        A model with `router_aux_loss_coef` (SLAM v2) adds coef * aux_loss to its loss whenever labels are given:
        that sum is what trains and what `loss` logs, but evaluation runs with the coefficient at 0, so
        `eval_loss` and perplexity are next-token cross-entropy only, comparable across variants.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.aux_losses = []  # training micro-batches since the last log

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            aux_loss = outputs.get("aux_loss") if isinstance(outputs, dict) else None
            if aux_loss is not None and model.training:
                self.aux_losses.append(aux_loss.detach().float())
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args, **kwargs):
            with lm_loss_only(self.model):
                return super().evaluate(*args, **kwargs)

        def log(self, logs, *rest, **kwargs):
            if "eval_loss" in logs:
                logs["eval_perplexity"] = round(math.exp(logs["eval_loss"]), 3)
            if "loss" in logs and self.aux_losses:
                logs["aux_loss"] = round(torch.stack(self.aux_losses).mean().item(), 4)
                self.aux_losses = []
            super().log(logs, *rest, **kwargs)

    trainer = PerplexityTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=default_data_collator,
    )

    processes = job.processes
    hardware = hardware_description(processes, distributed_label(trainer))
    say(f"hardware: {hardware}")
    trained = train_and_evaluate(trainer, job)
    train_output, steps, start_step, history = trained.output, trained.steps, trained.start_step, trained.history
    train_seconds, optim_seconds = float(train_output.metrics["train_runtime"]), trained.optim_seconds
    val_loss_before, val_ppl_before = eval_perplexity(trained.before)
    val_loss_after, val_ppl_after = eval_perplexity(trained.final_eval)
    where = "at initialisation" if resume is None else f"at the checkpoint (step {start_step})"
    say(f"held-out perplexity {where}: {val_ppl_before:.2f} (loss {val_loss_before:.4f})")
    say(f"held-out perplexity after training: {val_ppl_after:.2f} (loss {val_loss_after:.4f})")
    rows_per_step = job.rows_per_step
    train_tokens = steps * rows_per_step * block_size
    run_tokens = (steps - start_step) * rows_per_step * block_size
    parameters_per_process = count_parameters_per_process(trainer)
    if processes > 1:
        say(
            f"parameters held per process ({distributed_label(trainer)}): "
            + " / ".join(f"{n:,}" for n in parameters_per_process)
            + f" of {n_params:,}"
        )
    # Every process takes part in gathering FSDP shards; only the main one writes.
    model = unsharded_model(trainer, model, lambda: AutoModelForCausalLM.from_config(config))
    if not job.is_main:
        return {"train_steps": steps, "val_loss_after": val_loss_after, "process_index": training_args.process_index}
    train_losses = [e["loss"] for e in history if "loss" in e]
    aux_losses = [e["aux_loss"] for e in history if "aux_loss" in e]
    eval_curve = [
        {"step": e["step"], "eval_loss": e["eval_loss"], "eval_perplexity": math.exp(e["eval_loss"])}
        for e in history
        if "eval_loss" in e
    ]

    # Hub folder: weights + config + remote code + generation config + tokenizer.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    save_model_folder(model, output_dir, use_cache, run["generation"])
    tokenizer.save_pretrained(output_dir)

    wall_seconds = time.perf_counter() - t_start
    metrics = {
        "variant": run["variant"],
        "model_name": model_name,
        "parameters": n_params,
        "non_embedding_parameters": n_params_no_emb,
        "val_loss_before": val_loss_before,
        "val_perplexity_before": val_ppl_before,
        "val_loss_after": val_loss_after,
        "val_perplexity_after": val_ppl_after,
        "val_rows": len(eval_rows),
        "val_tokens": len(eval_rows) * block_size,
        "train_rows": len(train_rows),
        "train_steps": steps,
        "train_epochs": trainer.state.epoch,
        "train_tokens": train_tokens,
        "train_loss_mean": float(train_output.training_loss),
        "train_loss_last_logged": train_losses[-1] if train_losses else None,
        # SLAM v2: the MoA load-balancing loss (1 = balanced routing), in the training loss with this weight;
        # never in val_loss/perplexity. None for variants without one.
        "router_aux_loss_coef": getattr(config, "router_aux_loss_coef", None),
        "train_aux_loss_first_logged": aux_losses[0] if aux_losses else None,
        "train_aux_loss_last_logged": aux_losses[-1] if aux_losses else None,
        "train_seconds": train_seconds,
        "train_seconds_excluding_eval": optim_seconds,
        # this invocation's steps (a resumed run: those after its checkpoint) over its optimisation time
        "train_tokens_per_second": run_tokens / optim_seconds,
        **run_description(trainer, job, trained, parameters_per_process, wall_seconds),
        "block_size": block_size,
        "seed": training_args.seed,
        "eval_curve": eval_curve,
        "training_config": {"model": run["model"], "data": data_cfg, "training": train_cfg},
        "versions": software_versions(),
        "log_history": history,
    }
    (output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    card = render_model_card(
        template,
        model_name,
        pipeline_tag="text-generation",
        tags=list(CARD_TAGS),
        metric="perplexity",
        eval_result=dict(
            task_name="Causal language modeling",
            dataset_type="shakespeare",
            dataset_name="Shakespeare, held-out works",
            dataset_split="validation",
            metric_name="Perplexity (held-out works)",
            metric_value=round(val_ppl_after, 2),
        ),
        repo_id=repo_id,
        variant=run["variant"],
        variant_summary=variant.summary,
        interpretation=variant.interpretation,
        config_rows=config_rows(config, block_size, variant),
        lora_target_modules=lora_targets(config),
        lora_modules=variant.lora_modules,
        validation_works=", ".join(VALIDATION_WORKS),
        train_works=corpus["train"].num_rows,
        tokenizer_size=f"{len(tokenizer):,}",
        m=metrics,
        t=training_args,
        optimizer=enum_value(training_args.optim),
        scheduler=enum_value(training_args.lr_scheduler_type),
        params=f"{n_params:,}",
        params_no_emb=f"{n_params_no_emb:,}",
        train_tokens=f"{train_tokens:,}",
        val_tokens=f"{metrics['val_tokens']:,}",
        ppl_before=f"{val_ppl_before:.2f}",
        ppl_after=f"{val_ppl_after:.2f}",
        loss_before=f"{val_loss_before:.4f}",
        loss_after=f"{val_loss_after:.4f}",
        wall_time=format_seconds(wall_seconds),
        train_time=format_seconds(optim_seconds),
        tokens_per_second=f"{run_tokens / optim_seconds:,.0f}",
        config_file=Path(args.config).as_posix(),
        generation_defaults=generation_summary(run["generation"]),
        resumed_step=start_step,
    )
    card.save(output_dir / "README.md")

    say(
        f"saved {output_dir}: {n_params:,} params, held-out perplexity {val_ppl_before:.2f} -> {val_ppl_after:.2f}, "
        f"{run_tokens:,} train tokens at "
        f"{run_tokens / optim_seconds:,.0f} tokens/s, wall time {format_seconds(wall_seconds)}"
    )
    return metrics
