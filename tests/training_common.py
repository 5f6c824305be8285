"""Data and Trainer settings shared by the training tests of every SLAM variant (real data, tiny models).

The `tokenizer`, `lm_blocks` and `genre` fixtures (tests/conftest.py, module scope) are built by the functions here.
"""

import math

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import DataCollatorForLanguageModeling, TrainingArguments

from slam_hf import data

LN_VOCAB = math.log(8192)  # loss of a uniform prediction, where every run starts
BLOCK_SIZE = 64
TRAIN_WORKS = 3  # LM training text: every 12th training work, 3 plays, ~2,000 blocks of 64 tokens
EVAL_BLOCKS = 64  # fixed, evenly spaced blocks of the 6 held-out works
GENRE_TRAIN_PASSAGES = 3000  # of 9,308 training passages (30 plays); one epoch
GENRE_MAX_LENGTH = 128  # 12-line passages are ~115 tokens; the 90th percentile hits 128


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
