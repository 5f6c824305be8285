"""`slam-hf train` for the image-text variant (SLAM v3) on MNIST digit tiles: "what number is shown?" -> the digit
string, scored by held-out exact match of greedy generation against chance.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import datasets
import numpy as np
import torch
from transformers import AutoModelForImageTextToText, Trainer, TrainerCallback

from ..data.digits import (
    DIGIT_PROMPT,
    DIGIT_SIZE,
    DigitTileCollator,
    ShiftedDigitRows,
    _digit_range,
    digit_exact_match,
    digit_exact_match_chance,
    digit_source_split,
    digit_tile_processor,
    load_digit_tiles,
    preprocess_digit_tiles,
    train_digit_tokenizer,
)
from . import recipe
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
    TrainedRun,
    TrainingRun,
    format_seconds,
    model_config_from_yaml,
    prepare_run,
    run_description,
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
    rows += variant.card_rows(config)
    rows += [
        (
            "vision patch grid",
            f"{grid[0]} × {grid[1]} = {grid[0] * grid[1]} patches ({image_size[0]} × {image_size[1]} pixel tiles)",
        ),
        ("vocab_size", config.vocab_size),
        ("tie_word_embeddings", config.tie_word_embeddings),
    ]
    return rows


class EpochToTrainRows(TrainerCallback):
    """Tells the training rows (`ShiftedDigitRows`) the epoch that starts, which keys their augmentation draws.

    Trainer tells the sampler, not the dataset: accelerate's `DataLoaderShard.set_epoch` forwards to the dataset
    only when the sampler has no `set_epoch`, and its seedable sampler has one. `state.epoch` is the epoch plus the
    fraction done (a resumed run starts from its checkpoint's), so its floor is the epoch Trainer is entering.
    """

    def __init__(self, rows: ShiftedDigitRows):
        self.rows = rows

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.rows.set_epoch(math.floor(state.epoch or 0))


class ImageTextTrainer(CpuFsdpMixin, Trainer):
    """Trains on `ShiftedDigitRows` (translation augmentation, draws keyed by seed, epoch and row index, so a
    resumed run draws what the uninterrupted one did), told the epoch by `EpochToTrainRows`."""

    def __init__(self, *args, train_dataset: ShiftedDigitRows, **kwargs):
        super().__init__(*args, train_dataset=train_dataset, **kwargs)
        self.add_callback(EpochToTrainRows(train_dataset))


class DigitData(NamedTuple):
    """The run's digit tiles, as generated (`tiles`, whose test split scores exact match) and as model rows."""

    tiles: object  # DatasetDict of raw tiles: train / validation / test
    train: object  # preprocessed rows (input_ids, pixel_values, labels)
    validation: object
    image_size: tuple  # (height, width) of every tile, in pixels
    grid: tuple  # patches per tile, (rows, columns)
    tokens_per_row: float  # prompt (with its image placeholders) + answer tokens, mean over the training rows
    chance: float  # exact match of guessing digits of the right length, over the test rows


def train_image_text(args, run: dict, t_start: float | None = None) -> dict:
    """`slam-hf train` for an image-text variant (SLAM v3): MNIST digit tiles -> the digit string.

    Tokenizer and processor are built from the training tiles (`slam_hf.data.digit_tile_processor`); the loss is
    scored on the validation tiles, greedy exact match on the test tiles; both splits are tiled from source digit
    images that training never sees. Returns the metrics written to training_metrics.json.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    template = template_path(IMAGE_TEXT_TEMPLATE_NAME)  # fail before training, not after
    variant = variants()[run["variant"]]
    data_cfg = _data_section(args, run)
    job = prepare_run(args, run)
    _check_augmentation_workers(job, data_cfg)
    tokenizer, config, processor, digits = _prepare_data(job, variant, run["model"], data_cfg)

    model, use_cache = recipe.build_model(AutoModelForImageTextToText, config, job)
    counts = {
        "parameters": model.num_parameters(),
        "vision_tower_parameters": sum(p.numel() for p in model.get_encoder().vision_tower.parameters()),
    }
    job.say(
        f"{run['variant']}: {counts['parameters']:,} parameters "
        f"({counts['vision_tower_parameters']:,} in the vision tower)"
    )
    trainer = ImageTextTrainer(
        model=model,
        args=job.training_args,
        train_dataset=ShiftedDigitRows(digits.train, max_shift=data_cfg["max_shift"], seed=job.training_args.seed),
        eval_dataset=digits.validation,
        data_collator=DigitTileCollator(tokenizer.pad_token_id),
    )
    # Exact match before training scores the freshly built model (a resumed run: the checkpoint is loaded by
    # train(), so it is not scored before; the number is None). Every process generates on the whole test split.
    match_before = digit_exact_match(model, processor, digits.tiles["test"]) if job.resume is None else None
    trained = recipe.train_with_report(trainer, job)
    _report_before(job, trained, match_before, digits.chance)
    val_loss_after = float(trained.final_eval["eval_loss"])
    # Every process takes part in gathering FSDP shards (collective); the exact match then runs on a plain module.
    model, parameters_per_process = recipe.gather_model(trainer, model, AutoModelForImageTextToText, config)
    if not job.is_main:
        return recipe.worker_result(job, trained, val_loss_after)
    match = _exact_match_after(job, model, processor, digits, val_loss_after)

    generation_ids = {"decoder_start_token_id": config.decoder_start_token_id}
    recipe.save_hub_folder(model, job, use_cache, run["generation"], tokenizer, processor, **generation_ids)
    wall_seconds = time.perf_counter() - t_start
    description = run_description(trainer, job, trained, parameters_per_process, wall_seconds)
    metrics = _metrics(run, data_cfg, job, trainer, trained, config, digits, counts, match, match_before, description)
    recipe.write_metrics(job, metrics)
    _write_card(template, args, run, variant, job, trained, metrics, config, digits, processor, tokenizer)
    run_samples = _run_samples(job, trained)
    exact_before = f"{match_before['exact_match']:.2%} -> " if match_before else ""
    job.say(
        f"saved {job.output_dir}: {counts['parameters']:,} params, test exact match {exact_before}"
        f"{match['exact_match']:.2%} (chance {digits.chance:.2%}), {run_samples:,} train samples at "
        f"{run_samples / trained.optim_seconds:,.0f} samples/s, wall time {format_seconds(wall_seconds)}"
    )
    return metrics


def _data_section(args, run: dict) -> dict:
    """The YAML's `data` section with the command line's row limits (a copy)."""
    data_cfg = dict(run["data"])
    if args.max_train_rows is not None:
        data_cfg["train_rows"] = args.max_train_rows
    if args.max_eval_rows is not None:
        data_cfg["eval_rows"] = data_cfg["test_rows"] = args.max_eval_rows
    return data_cfg


def _check_augmentation_workers(job: TrainingRun, data_cfg: dict) -> None:
    """Persistent data-loader workers keep the copy of the training rows they started with, so they would never
    see `ShiftedDigitRows.set_epoch` and would repeat the first epoch's shifts in every epoch."""
    args = job.training_args
    if data_cfg["max_shift"] and args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
        raise ConfigError(
            f"`training.dataloader_persistent_workers: true` with `data.max_shift: {data_cfg['max_shift']}`: "
            "persistent workers never learn that a new epoch started, so every epoch would repeat the first one's "
            "digit shifts; set `dataloader_persistent_workers: false` (workers restart each epoch) or "
            "`data.max_shift: 0`"
        )


def _digits_text(num_digits) -> str:
    return str(num_digits) if isinstance(num_digits, int) else f"{num_digits[0]}-{num_digits[1]}"


def _prepare_data(job: TrainingRun, variant: Variant, model_section: dict, data_cfg: dict):
    """(tokenizer, model config, processor, DigitData): the tiles, and the tokenizer trained on them first, since
    it fixes vocab_size and the special-token ids of the model config."""
    job.say(f"preparing data: MNIST digit tiles of {_digits_text(data_cfg['num_digits'])} digits")
    datasets.disable_progress_bars()
    tiles = load_digit_tiles(
        num_digits=data_cfg["num_digits"],
        sizes={"train": data_cfg["train_rows"], "validation": data_cfg["eval_rows"], "test": data_cfg["test_rows"]},
        seed=data_cfg["seed"],
    )
    tokenizer = train_digit_tokenizer(tiles["train"])
    config = model_config_from_yaml(
        variant,
        model_section,
        tokenizer,
        decoder_start_token_id=tokenizer.bos_token_id,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    processor, digits = _digit_rows(tiles, tokenizer, config, data_cfg)
    datasets.enable_progress_bars()
    _report_data(job, digits, len(tokenizer))
    return tokenizer, config, processor, digits


def _digit_rows(tiles, tokenizer, config, data_cfg: dict) -> tuple[object, DigitData]:
    """(The processor, the tiles as model rows); the patch size must divide the tiles."""
    image_size = (DIGIT_SIZE, _digit_range(data_cfg["num_digits"])[1] * DIGIT_SIZE)
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
    plain = train_rows.with_format(None)
    tokens_per_row = float(
        np.mean([len(ids) + len(labels) for ids, labels in zip(plain["input_ids"], plain["labels"])])
    )
    return processor, DigitData(
        tiles=tiles,
        train=train_rows,
        validation=eval_rows,
        image_size=image_size,
        grid=(image_size[0] // patch_size, image_size[1] // patch_size),
        tokens_per_row=tokens_per_row,
        chance=digit_exact_match_chance(tiles["test"]),
    )


def _report_data(job: TrainingRun, digits: DigitData, tokenizer_size: int) -> None:
    sources = {name: len(idx) for name, idx in digit_source_split().items()}
    (height, width), grid = digits.image_size, digits.grid
    job.say(
        f"train: {len(digits.train)} tiles from {sources['train']} source digits; validation (loss): "
        f"{len(digits.validation)} tiles, test (exact match): {len(digits.tiles['test'])} tiles, from "
        f"{sources['validation']} and {sources['test']} other source digits. Tiles {height}×{width} px = "
        f"{grid[0]}×{grid[1]} patches; prompt {DIGIT_PROMPT!r}; tokenizer {tokenizer_size} tokens (one per "
        f"digit); chance exact match {digits.chance:.2%}"
    )


def _report_before(job: TrainingRun, trained: TrainedRun, match_before, chance: float) -> None:
    exact_before = "" if match_before is None else f", test exact match {match_before['exact_match']:.2%}"
    job.say(
        f"{recipe.starting_point(job, trained)}: held-out loss {float(trained.before['eval_loss']):.4f}{exact_before} "
        f"(chance {chance:.2%})"
    )


def _exact_match_after(job: TrainingRun, model, processor, digits: DigitData, val_loss_after: float) -> dict:
    """Greedy exact match of the trained model on the test tiles, with the seconds it took."""
    t_match = time.perf_counter()
    match = digit_exact_match(model, processor, digits.tiles["test"])
    match = {**match, "seconds": time.perf_counter() - t_match}
    job.say(
        f"after training: held-out loss {val_loss_after:.4f}, test exact match {match['exact_match']:.2%} "
        f"(digits right {match['digit_accuracy']:.2%}; chance {digits.chance:.2%}) on {match['rows']} tiles"
    )
    return match


def _run_samples(job: TrainingRun, trained: TrainedRun) -> int:
    """Samples this invocation trained on (a resumed run: those after its checkpoint)."""
    return (trained.steps - trained.start_step) * job.rows_per_step


def _metrics(run, data_cfg, job, trainer, trained, config, digits, counts, match, match_before, description) -> dict:
    """training_metrics.json of an image-text run."""
    latent_bytes, full_bytes = v3_cache_bytes_per_token(config)
    train_samples = trained.steps * job.rows_per_step
    run_samples = _run_samples(job, trained)
    train_losses = trained.logged("loss")
    return {
        "variant": run["variant"],
        "task": IMAGE_TEXT_TASK,
        "model_name": job.model_name,
        **counts,
        "num_digits": data_cfg["num_digits"],
        "image_size": list(digits.image_size),
        "patch_grid": list(digits.grid),
        "test_exact_match": match["exact_match"],
        "test_digit_accuracy": match["digit_accuracy"],
        "test_exact_match_before": None if match_before is None else match_before["exact_match"],
        "chance_exact_match": digits.chance,
        "test_rows": match["rows"],
        "val_loss_before": float(trained.before["eval_loss"]),
        "val_loss_after": float(trained.final_eval["eval_loss"]),
        "val_rows": len(digits.validation),
        "train_rows": len(digits.train),
        "train_steps": trained.steps,
        "train_epochs": trainer.state.epoch,
        "train_samples": train_samples,
        "tokens_per_sample": digits.tokens_per_row,
        "train_tokens": train_samples * digits.tokens_per_row,
        "train_loss_mean": float(trained.output.training_loss),
        "train_loss_last_logged": train_losses[-1] if train_losses else None,
        "max_shift": data_cfg["max_shift"],
        "train_seconds": trained.train_seconds,
        "train_seconds_excluding_eval": trained.optim_seconds,
        # this invocation's steps (a resumed run: those after its checkpoint) over its optimisation time
        "train_samples_per_second": run_samples / trained.optim_seconds,
        "train_tokens_per_second": run_samples * digits.tokens_per_row / trained.optim_seconds,
        "exact_match_seconds": match["seconds"],
        "decoder_cache_bytes_per_token": latent_bytes,
        "decoder_cache_bytes_per_token_without_mla": full_bytes,
        **description,
        "torch_threads": torch.get_num_threads(),
        "seed": job.training_args.seed,
        "eval_curve": [{"step": e["step"], "eval_loss": e["eval_loss"]} for e in trained.history if "eval_loss" in e],
        "test_predictions_first": [
            {"answer": a, "prediction": p}
            for a, p in zip(digits.tiles["test"]["answer"][:20], match["predictions"][:20])
        ],
        **recipe.provenance(run, data_cfg, job, trained.history),
    }


def _write_card(template, args, run, variant, job, trained, metrics, config, digits, processor, tokenizer) -> None:
    digits_text = _digits_text(metrics["num_digits"])
    match_before = metrics["test_exact_match_before"]
    recipe.write_model_card(
        template,
        args,
        run,
        variant,
        job,
        trained,
        metrics,
        pipeline_tag=IMAGE_TEXT_TASK,
        tags=list(CARD_TAGS) + ["mnist"],
        metric="exact_match",
        eval_result=dict(
            task_name="Reading digits from an image",
            dataset_type="mnist-digit-tiles",
            dataset_name=f"MNIST digit tiles ({digits_text} digits), held-out source digits",
            dataset_split="test",
            metric_name="Exact match (greedy)",
            metric_value=round(metrics["test_exact_match"], 4),
        ),
        config_rows=_image_text_config_rows(config, variant, digits.image_size, digits.grid),
        decoder_lora_pattern=DECODER_LORA_PATTERN,
        digits_text=digits_text,
        prompt=DIGIT_PROMPT,
        image_token=processor.image_token,
        sources={name: len(idx) for name, idx in digit_source_split().items()},
        tokenizer_size=len(tokenizer),
        params_vision=f"{metrics['vision_tower_parameters']:,}",
        exact_match=f"{metrics['test_exact_match']:.2%}",
        exact_match_before=(
            f"not measured (resumed at step {trained.start_step})" if match_before is None else f"{match_before:.2%}"
        ),
        digit_accuracy=f"{metrics['test_digit_accuracy']:.2%}",
        chance=f"{digits.chance:.2%}",
        samples_per_second=f"{metrics['train_samples_per_second']:,.0f}",
        train_samples=f"{metrics['train_samples']:,}",
        tokens_per_second=f"{metrics['train_tokens_per_second']:,.0f}",
    )
