"""Data and Trainer settings shared by the training tests of every SLAM variant (real data, tiny models).

The `tokenizer`, `lm_blocks` and `genre` fixtures (tests/conftest.py, module scope) are built by the functions here.
"""

import math
import os

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from safetensors import safe_open
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from slam_hf import data

LN_VOCAB = math.log(8192)  # loss of a uniform prediction, where every run starts
BLOCK_SIZE = 64
TRAIN_WORKS = 3  # LM training text: every 12th training work, 3 plays, ~2,000 blocks of 64 tokens
EVAL_BLOCKS = 64  # fixed, evenly spaced blocks of the 6 held-out works
GENRE_TRAIN_PASSAGES = 3000  # of 9,308 training passages (30 plays); one epoch
GENRE_MAX_LENGTH = 128  # 12-line passages are ~115 tokens; the 90th percentile hits 128
# The tiny SLAM v1 of the training tests: hidden 64, 4 heads, one EF cycle of 32-token windows overlapping by 8.
TINY_V1_FIELDS = dict(
    vocab_size=8192,
    hidden_size=64,
    num_attention_heads=4,
    intermediate_size=128,
    ef_cycles=1,
    ef_segment_length=32,
    ef_segment_overlap=8,
    max_position_embeddings=256,
    attention_dropout=0.0,
    hidden_dropout=0.0,
)


def training_args(output_dir, **overrides):
    """CPU, no reporting, no checkpoints, fixed seeds, data loading in the main process."""
    fields = dict(
        output_dir=str(output_dir),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        logging_steps=10,
        per_device_eval_batch_size=64,
        weight_decay=0.0,
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


def logged_train_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def evenly_spaced(dataset, n):
    return dataset.select(np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist())


def masked_once(blocks, tokenizer):
    """Held-out blocks masked once with a fixed seed, so before and after see the very same masks."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    batch = collator([{"input_ids": ids} for ids in blocks["input_ids"]])
    return Dataset.from_dict({k: batch[k].tolist() for k in ("input_ids", "attention_mask", "labels")})


def lm_blocks_of(tokenizer):
    """64-token blocks (`input_ids`, `labels`) of a few training works and of the held-out works."""
    corpus = data.load_shakespeare_corpus()
    n_train = len(corpus["train"])
    train_works = corpus["train"].select(range(0, n_train, n_train // TRAIN_WORKS)[:TRAIN_WORKS])
    train = data.group_texts_for_causal_lm(train_works, tokenizer, BLOCK_SIZE)
    validation = data.group_texts_for_causal_lm(corpus["validation"], tokenizer, BLOCK_SIZE)
    assert not set(train_works["work"]) & set(data.VALIDATION_WORKS)
    return {"train": train, "validation": evenly_spaced(validation, EVAL_BLOCKS)}


def genre_of(tokenizer):
    """Tokenised genre passages: a shuffled subset of the training plays, and all held-out plays."""
    passages = data.load_genre_dataset()

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=GENRE_MAX_LENGTH)

    train = passages["train"].shuffle(seed=0).select(range(GENRE_TRAIN_PASSAGES))
    held_out = concatenate_datasets([passages["validation"], passages["test"]])
    return {
        "train": train.map(encode, batched=True, remove_columns=["text", "work"]),
        "held_out": held_out.map(encode, batched=True, remove_columns=["text", "work"]),
    }


# --------------------------------------------------------------------------------------------------
# PEFT LoRA on every variant: what each test checks the same way
# --------------------------------------------------------------------------------------------------


def assert_only_lora_trains(model, lora_layers, rank) -> dict:
    """Only the LoRA matrices train, r * (in + out) per wrapped Linear; returns them by name."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    expected = sum(rank * (m.in_features + m.out_features) for m in lora_layers.values())
    assert model.get_nb_trainable_parameters()[0] == sum(p.numel() for p in trainable.values()) == expected
    return trainable


def fit_adapter(model, fit_rows, output_dir, batch_size, learning_rate, steps, **trainer_kwargs):
    """Trains the adapter on `fit_rows` at a constant learning rate, logging every step; the model ends in eval mode.
    Returns the Trainer."""
    args = training_args(
        output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=fit_rows, **trainer_kwargs)
    trainer.train()
    model.eval()
    return trainer


def assert_fit_lowered_loss(trainer, steps, base_loss, lora_loss, min_drop) -> None:
    """The logged training loss fell over the fit, and the fitted batch's loss dropped by more than `min_drop`."""
    losses = logged_train_losses(trainer)
    assert len(losses) == steps and losses[-1] < losses[0], losses
    assert lora_loss < base_loss - min_drop, (base_loss, lora_loss)


def saved_adapter_keys(model, adapter_dir) -> list[str]:
    """Saves the adapter to `adapter_dir`, which must hold only the adapter; returns its tensor names."""
    model.save_pretrained(adapter_dir)
    files = set(os.listdir(adapter_dir))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        return list(f.keys())


def reloaded_adapter(model_class, base_dir, adapter_dir):
    """The saved adapter on a fresh base model loaded from `base_dir`, in eval mode."""
    import peft

    return peft.PeftModel.from_pretrained(model_class.from_pretrained(base_dir), adapter_dir).eval()


def merged_logits_of(reloaded, model_class, input_ids, lora_logits):
    """merge_and_unload folds the adapter into plain Linear weights and keeps the adapter's logits; returns them."""
    from peft.tuners.lora import LoraLayer

    merged = reloaded.merge_and_unload()
    assert type(merged) is model_class
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        logits = merged(input_ids=input_ids).logits
    torch.testing.assert_close(logits, lora_logits, atol=1e-5, rtol=0)
    return logits
