"""The training stages of the domain-experts demo (`slam_hf.demos.domain_experts`): data, tokenizer, the base
SLAM v1, one SVF expert per domain and the classification expert."""

from __future__ import annotations

import io
import logging
import random
import time
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from .common import cpu_training_args
from .domain_scales import Scale

logger = logging.getLogger(__name__)


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


@dataclass
class DemoRun:
    """What every stage of one run reads: where it writes, its sizes and seed, how much it says, its stopwatch."""

    folder: Path  # base/ and adapters/ go here
    scratch: Path  # Trainer's output_dir (nothing is saved there)
    scale: Scale
    seed: int
    verbose: bool
    clock: Stopwatch = field(default_factory=Stopwatch)
    started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        """A stage's status line: INFO when verbose (the demo's `main` shows it), DEBUG otherwise."""
        logger.log(logging.INFO if self.verbose else logging.DEBUG, message)

    def quiet(self):
        """Trainer prints every log entry when its progress bar is off; show them only when verbose."""
        return nullcontext() if self.verbose else redirect_stdout(io.StringIO())

    def training_args(self, name: str, steps: int, learning_rate: float, **fields):
        """A cosine schedule of `steps` at `learning_rate`; progress bars when verbose."""
        return cpu_training_args(
            self.scratch / name,
            self.seed,
            disable_tqdm=not self.verbose,
            per_device_train_batch_size=self.scale.batch_size,
            weight_decay=0.0,
            max_steps=steps,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            **fields,
        )


class DemoData(NamedTuple):
    domains: dict  # name -> slam_hf.data.domains.Domain (documents, pairs and sources per split)
    other: object  # English prose: the "other" label of dispatch
    mixed: dict  # mixed domain -> (prompt, continuation) pairs: few-shot examples first, then held out
    eval_pairs: dict  # name -> held-out (prompt, continuation) pairs

    def training_documents(self) -> list[str]:
        from ..data.domains import DOMAINS

        return [doc for name in DOMAINS for doc in self.domains[name].documents["train"]]


def load_data(scale: Scale, seed: int) -> DemoData:
    from ..data.domains import DOMAINS, MIXED_DOMAINS, load_domains, mixed_domain_pairs, other_corpus

    domains = load_domains(scale.documents, scale.eval_pairs, seed, num_train_pairs=scale.expert_pairs)
    other = other_corpus(max(scale.other_pairs, scale.classifier_prompts))
    mixed_count = scale.few_shot_examples + scale.mixed_held_out
    mixed = {name: mixed_domain_pairs(name, mixed_count, seed=seed) for name in MIXED_DOMAINS}
    eval_pairs = {name: domains[name].pairs["held_out"] for name in DOMAINS}
    return DemoData(domains, other, mixed, eval_pairs)


def packed_blocks(tokenizer, documents, block_size, seed) -> list[list[int]]:
    """Documents shuffled, joined with EOS and cut into `block_size`-token rows (the ragged tail dropped)."""
    order = list(documents)
    random.Random(seed).shuffle(order)
    stream = []
    for ids in tokenizer(order, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    return [stream[start : start + block_size] for start in range(0, len(stream) - block_size + 1, block_size)]


def _block_dataset(blocks):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks, "labels": [list(block) for block in blocks]})


def last_training_loss(trainer) -> Optional[float]:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return round(losses[-1], 4) if losses else None


def _build_base(tokenizer, scale: Scale, seed: int):
    from .. import SlamV1ForCausalLM
    from ..presets import load_preset

    config = load_preset(
        "slam_v1",
        "tiny",
        vocab_size=len(tokenizer),
        hidden_size=scale.hidden_size,
        intermediate_size=scale.intermediate_size,
        num_attention_heads=scale.num_attention_heads,
        ef_cycles=scale.ef_cycles,
        ef_segment_length=scale.ef_segment_length,
        ef_segment_overlap=scale.ef_segment_overlap,
        max_position_embeddings=2 * scale.block_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return SlamV1ForCausalLM(config)


def pretrain(demo: DemoRun, tokenizer, blocks):
    """The base model, trained in full on the mixture of the three domains; saved with its tokenizer to base/.
    Returns (model, its last logged training loss)."""
    from transformers import Trainer, default_data_collator

    scale = demo.scale
    with demo.clock.stage("pretrain"):
        model = _build_base(tokenizer, scale, demo.seed)
        trainer = Trainer(
            model=model,
            train_dataset=_block_dataset(blocks),
            data_collator=default_data_collator,
            args=demo.training_args(
                "trainer_base",
                scale.pretrain_steps,
                scale.pretrain_lr,
                warmup_steps=max(1, scale.pretrain_steps // 20),
                logging_steps=max(1, scale.pretrain_steps // 10),
            ),
        )
        with demo.quiet():
            trainer.train()
        pretrain_loss = last_training_loss(trainer)
        model.eval()
        model.save_pretrained(demo.folder / "base")
        tokenizer.save_pretrained(demo.folder / "base")
    demo.say(f"pretrained ({demo.clock.seconds['pretrain']} s), last training loss {pretrain_loss}")
    return model, pretrain_loss


def answer_dataset(tokenizer, pairs):
    """Rows of (context, answer) with the loss on the answer tokens only; tokenized apart, as they are scored."""
    from datasets import Dataset

    rows = []
    for context, answer in pairs:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": context_ids + answer_ids, "labels": [-100] * len(context_ids) + answer_ids})
    return Dataset.from_list(rows)


def train_experts(demo: DemoRun, model, tokenizer, data: DemoData, svf_config):
    """One SVF expert per domain, on its training (prompt, continuation) pairs. Returns (the PeftModel holding
    them, {domain: last training loss and pairs})."""
    from transformers.utils import logging as transformers_logging

    from ..adapters.transformer2 import train_svf_expert
    from ..data.domains import DOMAINS

    scale, expert_training = demo.scale, {}
    with demo.clock.stage("experts"), demo.quiet():
        for name in transformers_logging.tqdm(DOMAINS, desc="domain experts", disable=not demo.verbose):
            pairs = data.domains[name].pairs["train"]
            expert_trainer = train_svf_expert(
                model,
                answer_dataset(tokenizer, pairs),
                demo.training_args(
                    f"trainer_{name}",
                    scale.expert_steps,
                    scale.expert_lr,
                    logging_steps=max(1, scale.expert_steps // 5),
                ),
                processing_class=tokenizer,
                adapter_name=name,
                svf_config=svf_config,
            )
            model = expert_trainer.model  # a PeftModel from the first expert on; the next expert is added to it
            expert_training[name] = {
                "last_training_loss": last_training_loss(expert_trainer),
                "training_pairs": len(pairs),
            }
    demo.say(f"experts trained ({demo.clock.seconds['experts']} s)")
    return model.eval(), expert_training


def classifier_prompts(demo: DemoRun, data: DemoData) -> list[tuple[str, str]]:
    """(prompt, label) training rows of the classification expert: prompts of every domain and of prose."""
    from ..data.domains import DOMAINS, OTHER_DOMAIN, evenly_spread

    count = demo.scale.classifier_prompts
    labelled = [
        (prompt, name) for name in DOMAINS for prompt, _ in evenly_spread(data.domains[name].pairs["train"], count)
    ]
    labelled += [(prompt, OTHER_DOMAIN) for prompt, _ in evenly_spread(data.other.pairs["train"], count)]
    random.Random(demo.seed).shuffle(labelled)
    return labelled


def _classification_pairs(labelled_prompts, labels):
    from ..adapters.transformer2 import DEFAULT_CLASSIFICATION_TEMPLATE

    return [
        (DEFAULT_CLASSIFICATION_TEMPLATE.format(labels=", ".join(labels), prompt=prompt), " " + label)
        for prompt, label in labelled_prompts
    ]


def train_classifier(demo: DemoRun, peft_model, tokenizer, labelled, labels, svf_config) -> Optional[float]:
    """The classification expert (adapter "classifier": the label after the classification prompt); saves every
    adapter to adapters/. Returns its last training loss."""
    from ..adapters.transformer2 import train_svf_expert
    from ..data.domains import DOMAINS

    scale = demo.scale
    with demo.clock.stage("classifier"), demo.quiet():
        classifier_trainer = train_svf_expert(
            peft_model,
            answer_dataset(tokenizer, _classification_pairs(labelled, labels)),
            demo.training_args(
                "trainer_classifier",
                scale.classifier_steps,
                scale.classifier_lr,
                logging_steps=max(1, scale.classifier_steps // 5),
            ),
            processing_class=tokenizer,
            adapter_name="classifier",
            svf_config=svf_config,
        )
        classifier_loss = last_training_loss(classifier_trainer)
    peft_model.eval()
    peft_model.save_pretrained(demo.folder / "adapters", selected_adapters=[*DOMAINS, "classifier"])
    demo.say(f"classifier trained ({demo.clock.seconds['classifier']} s)")
    return classifier_loss
