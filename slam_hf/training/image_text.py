"""`slam-hf train` for the image-text variant (SLAM v3) on MNIST digit tiles: "what number is shown?" -> the digit
string, scored by held-out exact match of greedy generation against chance.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..bench.machine import software_versions
from .run_config import (
    CARD_TAGS,
    DECODER_LORA_PATTERN,
    IMAGE_TEXT_TASK,
    IMAGE_TEXT_TEMPLATE_NAME,
    ConfigError,
    Variant,
    template_path,
    v3_cache_bytes_per_token,
    variants,
)
from .trainer import (
    CpuFsdpMixin,
    count_parameters_per_process,
    distributed_label,
    enum_value,
    format_seconds,
    generation_summary,
    hardware_description,
    model_config_from_yaml,
    prepare_run,
    render_model_card,
    run_description,
    save_model_folder,
    train_and_evaluate,
    unsharded_model,
)


def _image_text_config_rows(config, variant: Variant, image_size, grid) -> list[tuple[str, object]]:
    rows = [
        ("model_type", config.model_type),
        ("hidden_size", config.hidden_size),
        ("layers", " → ".join(config.layer_schedule)),
        (
            "num_attention_heads / num_key_value_heads (encoder, cross-attention)",
            f"{config.num_attention_heads} / {config.num_key_value_heads}",
        ),
        ("head_dim", config.head_dim),
        ("intermediate_size / mlp_type", f"{config.intermediate_size} / {config.mlp_type}"),
        ("norm", f"{config.norm_position}-{config.norm_type}"),
        ("position_embedding_type (encoder)", config.position_embedding_type),
    ]
    rows += variant.architecture_rows(config)
    rows += [
        (
            "vision patch grid",
            f"{grid[0]} × {grid[1]} = {grid[0] * grid[1]} patches ({image_size[0]} × {image_size[1]} pixel tiles)",
        ),
        ("vocab_size", config.vocab_size),
        ("tie_word_embeddings", config.tie_word_embeddings),
    ]
    return rows


def train_image_text(args, run: dict, t_start: float | None = None) -> dict:
    """`slam-hf train` for an image-text variant (SLAM v3): MNIST digit tiles -> the digit string.

    Tokenizer and processor are built from the training tiles (`slam_hf.data.digit_tile_processor`); the loss is
    scored on the validation tiles, greedy exact match on the test tiles; both splits are tiled from source digit
    images that training never sees. Returns the metrics written to training_metrics.json.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    template = template_path(IMAGE_TEXT_TEMPLATE_NAME)  # fail before training, not after
    import datasets
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText, Trainer, set_seed

    from ..data.digits import (
        DIGIT_PROMPT,
        DIGIT_SIZE,
        DigitTileCollator,
        _digit_range,
        digit_exact_match,
        digit_exact_match_chance,
        digit_source_split,
        digit_tile_processor,
        load_digit_tiles,
        preprocess_digit_tiles,
        train_digit_tokenizer,
    )

    variant = variants()[run["variant"]]
    data_cfg = dict(run["data"])
    if args.max_train_rows is not None:
        data_cfg["train_rows"] = args.max_train_rows
    if args.max_eval_rows is not None:
        data_cfg["eval_rows"] = data_cfg["test_rows"] = args.max_eval_rows
    job = prepare_run(args, run)
    say, training_args, output_dir, resume = job.say, job.training_args, job.output_dir, job.resume
    train_cfg, model_name, repo_id = job.train_cfg, job.model_name, job.repo_id
    num_digits = data_cfg["num_digits"]
    digits_text = str(num_digits) if isinstance(num_digits, int) else f"{num_digits[0]}-{num_digits[1]}"
    image_size = (DIGIT_SIZE, _digit_range(num_digits)[1] * DIGIT_SIZE)  # (height, width) of every tile
    say(f"preparing data: MNIST digit tiles of {digits_text} digits")
    datasets.disable_progress_bars()
    sizes = {"train": data_cfg["train_rows"], "validation": data_cfg["eval_rows"], "test": data_cfg["test_rows"]}
    tiles = load_digit_tiles(num_digits=num_digits, sizes=sizes, seed=data_cfg["seed"])
    chance = digit_exact_match_chance(tiles["test"])  # guessing digits of the right length, over the test rows

    # Tokenizer first: it fixes vocab_size and the special-token ids of the model config.
    tokenizer = train_digit_tokenizer(tiles["train"])
    config = model_config_from_yaml(
        variant, run["model"], tokenizer,
        decoder_start_token_id=tokenizer.bos_token_id, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    patch_size = config.vision_config.patch_size
    if image_size[0] % patch_size or image_size[1] % patch_size:
        raise ConfigError(
            f"`model.vision_config.patch_size` ({patch_size}) must divide the {image_size[0]} × {image_size[1]} "
            f"pixel tiles; use 7, 14 or 28"
        )
    if config.vision_config.num_channels != 3:
        raise ConfigError("`model.vision_config.num_channels` must be 3: the image processor outputs RGB")
    processor = digit_tile_processor(tiles["train"], patch_size=patch_size, tokenizer=tokenizer)
    if processor.image_token_id != config.image_token_id:
        raise ConfigError(
            f"`model.image_token_id` ({config.image_token_id}) is not the tokenizer's <image> id "
            f"({processor.image_token_id}); leave it unset"
        )
    train_rows = preprocess_digit_tiles(tiles["train"], processor)
    eval_rows = preprocess_digit_tiles(tiles["validation"], processor)
    datasets.enable_progress_bars()
    grid = (image_size[0] // patch_size, image_size[1] // patch_size)
    plain = train_rows.with_format(None)
    tokens_per_row = float(
        np.mean([len(ids) + len(labels) for ids, labels in zip(plain["input_ids"], plain["labels"])])
    )
    sources = {name: len(idx) for name, idx in digit_source_split().items()}
    say(
        f"train: {len(train_rows)} tiles from {sources['train']} source digits; validation (loss): "
        f"{len(eval_rows)} tiles, test (exact match): {len(tiles['test'])} tiles, from {sources['validation']} "
        f"and {sources['test']} other source digits. Tiles {image_size[0]}×{image_size[1]} px = {grid[0]}×{grid[1]} "
        f"patches; prompt {DIGIT_PROMPT!r}; tokenizer {len(tokenizer)} tokens (one per digit); chance exact match "
        f"{chance:.2%}"
    )

    # The model is built before Trainer seeds anything; every process builds the same weights (FSDP2 does not
    # broadcast them from rank 0 as DDP does).
    set_seed(training_args.seed)
    model = AutoModelForImageTextToText.from_config(config)
    use_cache = model.config.use_cache  # Trainer switches the cache off for training; the saved config keeps it
    n_params = model.num_parameters()
    n_params_vision = sum(p.numel() for p in model.get_encoder().vision_tower.parameters())
    say(f"{run['variant']}: {n_params:,} parameters ({n_params_vision:,} in the vision tower)")

    class ImageTextTrainer(CpuFsdpMixin, Trainer):
        """Trains through `train_collator` (translation augmentation) and evaluates through `data_collator`."""

        def __init__(self, *args, train_collator=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.train_collator = train_collator

        def get_train_dataloader(self):
            eval_collator, self.data_collator = self.data_collator, self.train_collator or self.data_collator
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = eval_collator

    pad_id = tokenizer.pad_token_id
    trainer = ImageTextTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=DigitTileCollator(pad_id),
        train_collator=DigitTileCollator(pad_id, max_shift=data_cfg["max_shift"], seed=training_args.seed),
    )

    processes = job.processes
    hardware = hardware_description(processes, distributed_label(trainer))
    say(f"hardware: {hardware}")
    # Exact match before training scores the freshly built model (a resumed run: the checkpoint is loaded by
    # train(), so it is not scored before; the number is None). Every process generates on the whole test split.
    match_before = digit_exact_match(model, processor, tiles["test"]) if resume is None else None
    trained = train_and_evaluate(trainer, job)
    train_output, steps, start_step, history = trained.output, trained.steps, trained.start_step, trained.history
    train_seconds, optim_seconds = float(train_output.metrics["train_runtime"]), trained.optim_seconds
    val_loss_before = float(trained.before["eval_loss"])
    where = "at initialisation" if resume is None else f"at the checkpoint (step {start_step})"
    exact_before = "" if match_before is None else f", test exact match {match_before['exact_match']:.2%}"
    say(f"{where}: held-out loss {val_loss_before:.4f}{exact_before} (chance {chance:.2%})")
    val_loss_after = float(trained.final_eval["eval_loss"])
    # Every process takes part in gathering FSDP shards (collective); the exact match then runs on a plain module.
    parameters_per_process = count_parameters_per_process(trainer)
    model = unsharded_model(trainer, model, lambda: AutoModelForImageTextToText.from_config(config))
    if not job.is_main:
        return {"train_steps": steps, "val_loss_after": val_loss_after, "process_index": training_args.process_index}
    t_match = time.perf_counter()
    match = digit_exact_match(model, processor, tiles["test"])
    match_seconds = time.perf_counter() - t_match
    say(
        f"after training: held-out loss {val_loss_after:.4f}, test exact match {match['exact_match']:.2%} "
        f"(digits right {match['digit_accuracy']:.2%}; chance {chance:.2%}) on {match['rows']} tiles"
    )
    rows_per_step = job.rows_per_step
    train_samples = steps * rows_per_step
    run_samples = (steps - start_step) * rows_per_step
    train_losses = [e["loss"] for e in history if "loss" in e]
    eval_curve = [{"step": e["step"], "eval_loss": e["eval_loss"]} for e in history if "eval_loss" in e]

    # Hub folder: weights + config + remote code + generation config + processor.
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    generation.eos_token_id, generation.decoder_start_token_id = tokenizer.eos_token_id, config.decoder_start_token_id
    save_model_folder(model, output_dir, use_cache, run["generation"])
    processor.save_pretrained(output_dir)

    wall_seconds = time.perf_counter() - t_start
    latent_bytes, full_bytes = v3_cache_bytes_per_token(config)
    metrics = {
        "variant": run["variant"],
        "task": variant.task,
        "model_name": model_name,
        "parameters": n_params,
        "vision_tower_parameters": n_params_vision,
        "num_digits": num_digits,
        "image_size": list(image_size),
        "patch_grid": list(grid),
        "test_exact_match": match["exact_match"],
        "test_digit_accuracy": match["digit_accuracy"],
        "test_exact_match_before": None if match_before is None else match_before["exact_match"],
        "chance_exact_match": chance,
        "test_rows": match["rows"],
        "val_loss_before": val_loss_before,
        "val_loss_after": val_loss_after,
        "val_rows": len(eval_rows),
        "train_rows": len(train_rows),
        "train_steps": steps,
        "train_epochs": trainer.state.epoch,
        "train_samples": train_samples,
        "tokens_per_sample": tokens_per_row,
        "train_tokens": train_samples * tokens_per_row,
        "train_loss_mean": float(train_output.training_loss),
        "train_loss_last_logged": train_losses[-1] if train_losses else None,
        "max_shift": data_cfg["max_shift"],
        "train_seconds": train_seconds,
        "train_seconds_excluding_eval": optim_seconds,
        # this invocation's steps (a resumed run: those after its checkpoint) over its optimisation time
        "train_samples_per_second": run_samples / optim_seconds,
        "train_tokens_per_second": run_samples * tokens_per_row / optim_seconds,
        "exact_match_seconds": match_seconds,
        "decoder_cache_bytes_per_token": latent_bytes,
        "decoder_cache_bytes_per_token_without_mla": full_bytes,
        **run_description(trainer, job, trained, parameters_per_process, wall_seconds),
        "torch_threads": torch.get_num_threads(),
        "seed": training_args.seed,
        "eval_curve": eval_curve,
        "test_predictions_first": [
            {"answer": a, "prediction": p} for a, p in zip(tiles["test"]["answer"][:20], match["predictions"][:20])
        ],
        "training_config": {"model": run["model"], "data": data_cfg, "training": train_cfg},
        "versions": software_versions(),
        "log_history": history,
    }
    (output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    card = render_model_card(
        template,
        model_name,
        pipeline_tag=IMAGE_TEXT_TASK,
        tags=list(CARD_TAGS) + ["mnist"],
        metric="exact_match",
        eval_result=dict(
            task_name="Reading digits from an image",
            dataset_type="mnist-digit-tiles",
            dataset_name=f"MNIST digit tiles ({digits_text} digits), held-out source digits",
            dataset_split="test",
            metric_name="Exact match (greedy)",
            metric_value=round(match["exact_match"], 4),
        ),
        repo_id=repo_id,
        variant=run["variant"],
        variant_summary=variant.summary,
        interpretation=variant.interpretation,
        config_rows=_image_text_config_rows(config, variant, image_size, grid),
        lora_modules=variant.lora_modules,
        decoder_lora_pattern=DECODER_LORA_PATTERN,
        digits_text=digits_text,
        prompt=DIGIT_PROMPT,
        image_token=processor.image_token,
        sources=sources,
        tokenizer_size=len(tokenizer),
        m=metrics,
        t=training_args,
        optimizer=enum_value(training_args.optim),
        scheduler=enum_value(training_args.lr_scheduler_type),
        params=f"{n_params:,}",
        params_vision=f"{n_params_vision:,}",
        exact_match=f"{match['exact_match']:.2%}",
        exact_match_before=(
            f"{match_before['exact_match']:.2%}" if match_before else f"not measured (resumed at step {start_step})"
        ),
        digit_accuracy=f"{match['digit_accuracy']:.2%}",
        chance=f"{chance:.2%}",
        loss_before=f"{val_loss_before:.4f}",
        loss_after=f"{val_loss_after:.4f}",
        wall_time=format_seconds(wall_seconds),
        train_time=format_seconds(optim_seconds),
        samples_per_second=f"{run_samples / optim_seconds:,.0f}",
        train_samples=f"{train_samples:,}",
        tokens_per_second=f"{run_samples * tokens_per_row / optim_seconds:,.0f}",
        config_file=Path(args.config).as_posix(),
        generation_defaults=generation_summary(run["generation"]),
    )
    card.save(output_dir / "README.md")

    exact_before = f"{match_before['exact_match']:.2%} -> " if match_before else ""
    say(
        f"saved {output_dir}: {n_params:,} params, test exact match {exact_before}{match['exact_match']:.2%} "
        f"(chance {chance:.2%}), {run_samples:,} train samples at {run_samples / optim_seconds:,.0f} samples/s, "
        f"wall time {format_seconds(wall_seconds)}"
    )
    return metrics
