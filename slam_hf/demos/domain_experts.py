"""Transformer² domain experts on one small SLAM v1 causal LM, offline on CPU: one command, honest numbers.

    python -m slam_hf.demos.domain_experts --output DIR [--scale tiny] [--seed 0] [--threads N]

writes DIR/results.json and DIR/report.md (and prints the report), plus the base model, tokenizer and adapters
under DIR/base and DIR/adapters. `run(...)` returns the same results as a JSON-able dict.

What it does (data: `slam_hf.data.domains`, every held-out set disjoint from training):

1. **Base model.** A byte-level BPE (`train_bpe_tokenizer`) and a small SLAM v1 (hidden 128, 6 layers at full
   scale) trained from scratch with `Trainer` on an even mixture of three domains' training documents: Shakespeare
   verse, Python standard-library source and "a + b = c" sums. This stands in for the general model Transformer²
   starts from.
2. **Experts.** One SVF expert per domain (`train_svf_expert`, next-token loss on the continuation tokens of that
   domain's *training* (prompt, continuation) pairs, the prompt masked with -100; z vectors on the MLP and
   attention projections: a model this small has little to rescale in the MLP alone). Why the task form and not
   whole documents: the loss of an arithmetic document is dominated by its random operands, which nothing can
   predict, and in a first full-scale run experts trained on whole documents moved the held-out continuation loss
   by less than 0.005 nats (arithmetic 2.5014 → 2.4977); on the task form they learn what is measured.
   Measured: the held-out continuation loss of every expert on every domain (a 3×3 matrix, plus the base row).
3. **Dispatch.** A classification expert (an SVF adapter trained on `DEFAULT_CLASSIFICATION_TEMPLATE` prompts built
   from training prompts of the three domains and of English prose from `pydoc_data.topics`, the "other" class,
   loss on the label only; learning rate 0.2: at 0.05 it reached 69 % accuracy, sending many code and sum prompts
   to "other") drives `SelfAdaptiveModel(strategy="classifier")`. Measured: accuracy on the held-out prompts of
   the three domains (and with held-out prose added), and the same for `strategy="prompt"`, where the base model
   reads the classification prompt itself: it was never trained on such prompts, so expect chance level or worse.
4. **Two-pass.** Each held-out prompt is dispatched, then scored (or generated) with the chosen expert; "other" runs
   on the base weights. Measured: continuation loss per domain vs the base model, and exact-match accuracy of
   greedy sums through `SelfAdaptiveModel.generate()` vs the base model's `generate()`.
5. **Few-shot mixture** on two mixed domains no model was trained on (verse quoted in Python code, sums as
   doctests): `fit_mixture` (CEM over α, z' = Σₖ αₖ zₖ) on a handful of examples, then held-out loss on the rest
   vs the base, each single expert, the uniform mixture and classifier dispatch. Two searches (`MIXTURE_BOUNDS`):
   α ∈ [0, 1]³, whose corners are the single experts and, at α = 0, the base model (any constant z reproduces
   W), and α ∈ [0, 2]³, which may also amplify experts. Against the amplified mixture, each expert alone is
   also given a strength fitted the same way (a one-dimensional CEM in [0, 2] on the same shots), so a win of
   the mixture over "every single expert" cannot come from amplification alone.

Losses are mean negative log-likelihoods per continuation token (nats), pooled over a domain's held-out pairs; the
prompt and continuation are tokenized separately, as `SelfAdaptiveModel` scores them (`domain_data` cuts texts
where that equals tokenizing them whole). Targets are judged from the numbers, never assumed: see `targets` in the
results. Everything is seeded; on one torch thread a rerun reproduces the numbers exactly.

Sizes (`SCALE_SETTINGS`): "full" is sized to finish in about 15 minutes on a 2-core CPU (pretraining is most of it);
"tiny" runs every stage in seconds for the tests, and its numbers mean nothing. The dispatch target is judged at
`DISPATCH_TARGET` (90 % of the held-out prompts of the three domains).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch

SCALES = ("full", "tiny")
# Mixing weights searched by CEM: within the experts' span (α ∈ [0, 1], each expert and the base model are
# corners), and "amplified", α ∈ [0, 2] (z' = Σ αₖ zₖ does not bound α; an expert trained for a few steps may help
# more at twice its strength). [0, 1] was run first; in the first full run it converged to the best single expert.
MIXTURE_BOUNDS = {"fitted_mixture": (0.0, 1.0), "amplified_mixture": (0.0, 2.0)}
DISPATCH_TARGET = 0.9  # "the dispatcher picks the right expert": at least this share of held-out prompts


@dataclass(frozen=True)
class Scale:
    """Every size of one run: data, model, and the three training stages."""

    # data
    documents: int  # pretraining documents per domain (held-out documents are not used)
    eval_pairs: int  # held-out (prompt, continuation) pairs per domain
    expert_pairs: int  # training (prompt, continuation) pairs per domain for its expert
    classifier_prompts: int  # training prompts per label for the classification expert (from the expert pairs)
    other_pairs: int  # held-out prose prompts for dispatch
    few_shot_examples: int  # examples fit_mixture sees, per mixed domain
    mixed_held_out: int  # held-out pairs per mixed domain
    generate_examples: int  # held-out sums answered with generate()
    # tokenizer and model
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    ef_cycles: int
    ef_segment_length: int
    ef_segment_overlap: int
    block_size: int
    # training
    batch_size: int
    pretrain_steps: int
    pretrain_lr: float
    expert_steps: int
    expert_lr: float
    classifier_steps: int
    classifier_lr: float
    cem_iterations: int
    cem_population: int
    cem_elites: int


SCALE_SETTINGS = {
    "full": Scale(
        documents=6000,
        eval_pairs=200,
        expert_pairs=3200,
        classifier_prompts=600,
        other_pairs=100,
        few_shot_examples=16,
        mixed_held_out=150,
        generate_examples=200,
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=4,
        ef_cycles=2,
        ef_segment_length=64,
        ef_segment_overlap=16,
        block_size=128,
        batch_size=16,
        pretrain_steps=1100,
        pretrain_lr=3e-3,
        expert_steps=200,
        expert_lr=0.1,
        classifier_steps=120,
        classifier_lr=0.2,
        cem_iterations=8,
        cem_population=12,
        cem_elites=4,
    ),
    "tiny": Scale(
        documents=120,
        eval_pairs=12,
        expert_pairs=48,
        classifier_prompts=24,
        other_pairs=8,
        few_shot_examples=4,
        mixed_held_out=8,
        generate_examples=8,
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        ef_cycles=1,
        ef_segment_length=32,
        ef_segment_overlap=8,
        block_size=64,
        batch_size=8,
        pretrain_steps=30,
        pretrain_lr=3e-3,
        expert_steps=6,
        expert_lr=0.1,
        classifier_steps=6,
        classifier_lr=0.2,
        cem_iterations=2,
        cem_population=4,
        cem_elites=2,
    ),
}


# --------------------------------------------------------------------------------------------- helpers ----
def _check_arguments(scale, seed, num_threads):
    if scale not in SCALE_SETTINGS:
        raise ValueError(f"scale={scale!r} is not a known scale: use one of {SCALES}.")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed={seed!r} must be an integer >= 0.")
    if num_threads is not None and not (
        isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1
    ):
        raise ValueError(f"num_threads={num_threads!r} must be an integer >= 1 (or None: leave torch's setting).")


@contextmanager
def _torch_threads(count):
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def _training_args(output_dir, scale: Scale, seed, **fields):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(output_dir),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        logging_steps=10,
        per_device_train_batch_size=scale.batch_size,
        weight_decay=0.0,
    )
    base.update(fields)
    return TrainingArguments(**base)


def _packed_blocks(tokenizer, documents, block_size, seed) -> list[list[int]]:
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


def _last_training_loss(trainer) -> Optional[float]:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return round(losses[-1], 4) if losses else None


@torch.no_grad()
def pair_losses(model, tokenizer, pairs, batch_size: int = 32) -> list[tuple[float, int]]:
    """(Σ −log p(continuation tokens | prompt), number of continuation tokens) of each pair, under the model's
    active weights. Prompt and continuation are tokenized separately, as SelfAdaptiveModel scores them."""
    rows = [
        (tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
        for p, c in pairs
    ]
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, (prompt, continuation) in enumerate(chunk):  # right padding: real positions never see it
            input_ids[row, : len(prompt) + len(continuation)] = torch.tensor(prompt + continuation)
            attention_mask[row, : len(prompt) + len(continuation)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        log_probs = logits.float().log_softmax(-1).cpu()
        for row, (prompt, continuation) in enumerate(chunk):
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1)
            nll = -log_probs[row, positions, torch.tensor(continuation)].sum().item()
            results.append((nll, len(continuation)))
    return results


def _pooled(losses) -> float:
    return round(sum(nll for nll, _ in losses) / sum(count for _, count in losses), 4)


def _answer_number(text: str) -> Optional[int]:
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------------------- stages ----
def _load_data(scale: Scale, seed: int):
    from ..data.domains import MIXED_DOMAINS, load_domains, mixed_domain_pairs, other_corpus

    domains = load_domains(scale.documents, scale.eval_pairs, seed, num_train_pairs=scale.expert_pairs)
    other = other_corpus(max(scale.other_pairs, scale.classifier_prompts))
    mixed_count = scale.few_shot_examples + scale.mixed_held_out
    mixed = {name: mixed_domain_pairs(name, mixed_count, seed=seed) for name in MIXED_DOMAINS}
    return domains, other, mixed


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


def _answer_dataset(tokenizer, pairs):
    """Rows of (context, answer) with the loss on the answer tokens only; tokenized apart, as they are scored."""
    from datasets import Dataset

    rows = []
    for context, answer in pairs:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": context_ids + answer_ids, "labels": [-100] * len(context_ids) + answer_ids})
    return Dataset.from_list(rows)


def _classification_pairs(labelled_prompts, labels):
    from ..adapters.transformer2 import DEFAULT_CLASSIFICATION_TEMPLATE

    return [
        (DEFAULT_CLASSIFICATION_TEMPLATE.format(labels=", ".join(labels), prompt=prompt), " " + label)
        for prompt, label in labelled_prompts
    ]


def _dispatch_accuracy(labels_by_prompt, truth) -> float:
    return round(sum(got == want for got, want in zip(labels_by_prompt, truth)) / len(truth), 4)


def _confusion(predicted, truth, labels) -> dict[str, dict[str, int]]:
    table = {want: {got: 0 for got in labels} for want in dict.fromkeys(truth)}
    for got, want in zip(predicted, truth):
        table[want][got] += 1
    return table


@torch.no_grad()
def _greedy_sums(generate, tokenizer, pairs, batch_size=32) -> list[Optional[int]]:
    answers = []
    for start in range(0, len(pairs), batch_size):
        prompts = [prompt for prompt, _ in pairs[start : start + batch_size]]
        batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
        sequences = generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            do_sample=False,
            max_new_tokens=4,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = sequences[:, batch["input_ids"].shape[1] :]
        answers += [_answer_number(text) for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


# ------------------------------------------------------------------------------------------------- run ----
def run(
    output_dir=None,
    *,
    scale: str = "full",
    seed: int = 0,
    num_threads: Optional[int] = None,
    expert_steps: Optional[int] = None,
    verbose: bool = False,
) -> dict:
    """Run every stage and return the results (JSON-able). With `output_dir`, also save results.json, report.md,
    the base model with its tokenizer (`base/`) and the adapters (`adapters/<label>/`).

    `scale`: "full" (the reported run) or "tiny" (seconds, for tests). `seed` fixes the model's initialisation, the
    data order, the arithmetic operand split (and with it the doctest pairs) and the CEM search. `num_threads`: torch
    intra-op threads for the run (None: leave torch's setting). `expert_steps` replaces the scale's training steps
    of each domain expert (the README's longer-training run: 600). `verbose` prints stage times and Trainer logs.
    """
    _check_arguments(scale, seed, num_threads)
    if expert_steps is not None and not (
        isinstance(expert_steps, int) and not isinstance(expert_steps, bool) and expert_steps >= 1
    ):
        raise ValueError(f"expert_steps={expert_steps!r} must be an integer >= 1 (or None: the scale's setting).")
    settings = SCALE_SETTINGS[scale]
    if expert_steps is not None:
        settings = replace(settings, expert_steps=expert_steps)
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="demo_domain_experts_") as scratch:
            return _run(Path(scratch), False, scale, settings, seed, num_threads, verbose)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return _run(output_dir, True, scale, settings, seed, num_threads, verbose)


def _run(folder: Path, keep: bool, scale_name: str, scale: Scale, seed: int, num_threads, verbose: bool) -> dict:
    from transformers.utils import logging as transformers_logging

    previous_verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        # Trainer wants an output_dir even with saving off; keep its (empty) folders out of the results folder.
        with _torch_threads(num_threads), tempfile.TemporaryDirectory(prefix="trainer_") as scratch:
            results = _stages(folder, Path(scratch), scale_name, scale, seed, verbose)
    finally:
        transformers_logging.set_verbosity(previous_verbosity)
    if keep:
        (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (folder / "report.md").write_text(render_markdown(results))
    return results


def _stages(folder: Path, scratch: Path, scale_name: str, scale: Scale, seed: int, verbose: bool) -> dict:
    from peft import PeftModel
    from transformers import Trainer, default_data_collator

    from ..adapters.svf import SVFConfig, get_z_vectors, svf_target_modules
    from ..adapters.transformer2 import SelfAdaptiveModel, cem_search, train_svf_expert
    from ..bench.machine import software_versions
    from ..data.domains import DOMAINS, MIXED_DOMAINS, OTHER_DOMAIN, evenly_spread, stdlib_files, stdlib_root
    from ..processing_slam import train_bpe_tokenizer

    def say(message):
        if verbose:
            print(f"[demo_domain_experts {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def quiet():  # Trainer prints every log entry when tqdm is off; show them only when verbose
        return nullcontext() if verbose else redirect_stdout(io.StringIO())

    clock = _Stopwatch()
    started = time.perf_counter()
    random.seed(seed)

    with clock.stage("data"):
        domains, other, mixed = _load_data(scale, seed)
        eval_pairs = {name: domains[name].pairs["held_out"] for name in DOMAINS}
    say(f"data ready ({clock.seconds['data']} s)")

    with clock.stage("tokenizer"):
        tokenizer = train_bpe_tokenizer(
            [doc for name in DOMAINS for doc in domains[name].documents["train"]], vocab_size=scale.vocab_size
        )
    mixture_blocks = _packed_blocks(
        tokenizer, [doc for name in DOMAINS for doc in domains[name].documents["train"]], scale.block_size, seed
    )

    # 1. the base model, trained in full on the mixture
    with clock.stage("pretrain"):
        model = _build_base(tokenizer, scale, seed)
        trainer = Trainer(
            model=model,
            train_dataset=_block_dataset(mixture_blocks),
            data_collator=default_data_collator,
            args=_training_args(
                scratch / "trainer_base",
                scale,
                seed,
                max_steps=scale.pretrain_steps,
                learning_rate=scale.pretrain_lr,
                lr_scheduler_type="cosine",
                warmup_steps=max(1, scale.pretrain_steps // 20),
                logging_steps=max(1, scale.pretrain_steps // 10),
            ),
        )
        with quiet():
            trainer.train()
        pretrain_loss = _last_training_loss(trainer)
        model.eval()
        model.save_pretrained(folder / "base")
        tokenizer.save_pretrained(folder / "base")
    say(f"pretrained ({clock.seconds['pretrain']} s), last training loss {pretrain_loss}")

    # 2. one SVF expert per domain
    svf_config = SVFConfig(task_type="CAUSAL_LM", target_modules=svf_target_modules(model, attention=True))
    expert_training = {}
    with clock.stage("experts"), quiet():
        for name in DOMAINS:
            expert_trainer = train_svf_expert(
                model,
                _answer_dataset(tokenizer, domains[name].pairs["train"]),
                _training_args(
                    scratch / f"trainer_{name}",
                    scale,
                    seed,
                    max_steps=scale.expert_steps,
                    learning_rate=scale.expert_lr,
                    lr_scheduler_type="cosine",
                    logging_steps=max(1, scale.expert_steps // 5),
                ),
                processing_class=tokenizer,
                adapter_name=name,
                svf_config=svf_config,
            )
            model = expert_trainer.model  # a PeftModel from the first expert on; the next expert is added to it
            expert_training[name] = {
                "last_training_loss": _last_training_loss(expert_trainer),
                "training_pairs": len(domains[name].pairs["train"]),
            }
    peft_model: PeftModel = model.eval()
    say(f"experts trained ({clock.seconds['experts']} s)")

    # 3. the classification expert
    labels = [*DOMAINS, OTHER_DOMAIN]
    labelled = [
        (prompt, name)
        for name in DOMAINS
        for prompt, _ in evenly_spread(domains[name].pairs["train"], scale.classifier_prompts)
    ]
    labelled += [(prompt, OTHER_DOMAIN) for prompt, _ in evenly_spread(other.pairs["train"], scale.classifier_prompts)]
    random.Random(seed).shuffle(labelled)

    with clock.stage("classifier"), quiet():
        classifier_trainer = train_svf_expert(
            peft_model,
            _answer_dataset(tokenizer, _classification_pairs(labelled, labels)),
            _training_args(
                scratch / "trainer_classifier",
                scale,
                seed,
                max_steps=scale.classifier_steps,
                learning_rate=scale.classifier_lr,
                lr_scheduler_type="cosine",
                logging_steps=max(1, scale.classifier_steps // 5),
            ),
            processing_class=tokenizer,
            adapter_name="classifier",
            svf_config=svf_config,
        )
        classifier_loss = _last_training_loss(classifier_trainer)
    peft_model.eval()
    peft_model.save_pretrained(folder / "adapters", selected_adapters=[*DOMAINS, "classifier"])
    say(f"classifier trained ({clock.seconds['classifier']} s)")

    experts = {name: name for name in DOMAINS}
    adaptive = SelfAdaptiveModel(
        peft_model, tokenizer, experts, strategy="classifier", classifier="classifier", scoring_batch_size=32
    )
    settings = ["base", *DOMAINS]

    def losses_under(setting, pairs):
        with adaptive.using(OTHER_DOMAIN if setting == "base" else setting):
            return pair_losses(peft_model, tokenizer, pairs)

    # 1'. loss of every setting on every domain, kept per pair for the two-pass scores
    with clock.stage("loss_matrix"):
        per_pair = {
            setting: {name: losses_under(setting, eval_pairs[name]) for name in DOMAINS} for setting in settings
        }
    loss_matrix = {setting: {name: _pooled(per_pair[setting][name]) for name in DOMAINS} for setting in settings}
    say(f"loss matrix ({clock.seconds['loss_matrix']} s)")

    # 2'. dispatch accuracy
    with clock.stage("dispatch"):
        prompts = [prompt for name in DOMAINS for prompt, _ in eval_pairs[name]]
        truth = [name for name in DOMAINS for _ in eval_pairs[name]]
        other_prompts = [prompt for prompt, _ in other.pairs["held_out"][: scale.other_pairs]]
        dispatch = {}
        dispatched = {}
        for strategy in ("classifier", "prompt"):
            dispatcher = (
                adaptive
                if strategy == "classifier"
                else SelfAdaptiveModel(peft_model, tokenizer, experts, strategy="prompt", scoring_batch_size=32)
            )
            got = dispatcher.dispatch(prompts + other_prompts)
            dispatched[strategy] = got[: len(prompts)]
            all_truth = truth + [OTHER_DOMAIN] * len(other_prompts)
            dispatch[strategy] = {
                "accuracy_three_domains": _dispatch_accuracy(got[: len(prompts)], truth),
                "accuracy_with_other": _dispatch_accuracy(got, all_truth),
                "confusion": _confusion(got, all_truth, labels),
            }
    chance = round(1 / len(labels), 4)
    say(f"dispatch ({clock.seconds['dispatch']} s): {dispatch['classifier']['accuracy_three_domains']}")

    # 3'. two-pass (dispatch -> expert) vs base, per domain; and greedy sums through generate()
    two_pass = {}
    offset = 0
    for name in DOMAINS:
        chosen = dispatched["classifier"][offset : offset + len(eval_pairs[name])]
        offset += len(eval_pairs[name])
        losses = [
            per_pair["base" if label == OTHER_DOMAIN else label][name][index] for index, label in enumerate(chosen)
        ]
        two_pass[name] = {
            "base": loss_matrix["base"][name],
            "two_pass": _pooled(losses),
            "own_expert": loss_matrix[name][name],
            "dispatched_to_own_expert": _dispatch_accuracy(chosen, [name] * len(chosen)),
        }
    with clock.stage("generate"):
        sums = evenly_spread(domains["arithmetic"].pairs["held_out"], scale.generate_examples)
        wanted = [int(answer) for _, answer in sums]
        with peft_model.disable_adapter():
            base_answers = _greedy_sums(peft_model.generate, tokenizer, sums)
        adaptive_answers = _greedy_sums(adaptive.generate, tokenizer, sums)
    exact_match = {
        "examples": len(sums),
        "base": round(sum(a == w for a, w in zip(base_answers, wanted)) / len(sums), 4),
        "two_pass": round(sum(a == w for a, w in zip(adaptive_answers, wanted)) / len(sums), 4),
        "samples": [
            {"prompt": p, "want": w, "base": b, "two_pass": t}
            for (p, _), w, b, t in list(zip(sums, wanted, base_answers, adaptive_answers))[:5]
        ],
    }
    say(f"generate ({clock.seconds['generate']} s): {exact_match['base']} -> {exact_match['two_pass']}")

    # 4'. few-shot mixtures on the unseen mixed domains
    few_shot = {}
    with clock.stage("few_shot"):
        mixer = SelfAdaptiveModel(peft_model, tokenizer, experts, strategy="few_shot", scoring_batch_size=32)
        for name in MIXED_DOMAINS:
            pairs = mixed[name]
            examples, held_out = pairs[: scale.few_shot_examples], pairs[scale.few_shot_examples :]
            entry = {
                "examples": len(examples),
                "held_out": len(held_out),
                "example": {"prompt": examples[0][0], "continuation": examples[0][1]},
            }
            held_out_losses = {setting: losses_under(setting, held_out) for setting in settings}
            entry["loss"] = {setting: _pooled(losses) for setting, losses in held_out_losses.items()}
            routed = adaptive.dispatch([prompt for prompt, _ in held_out])
            entry["classifier_two_pass"] = _pooled(
                [
                    held_out_losses["base" if label == OTHER_DOMAIN else label][index]
                    for index, label in enumerate(routed)
                ]
            )
            entry["classifier_labels"] = {label: routed.count(label) for label in labels}
            mixer.set_mixture([1 / len(DOMAINS)] * len(DOMAINS))
            with adaptive.using(None):
                entry["loss"]["uniform_mixture"] = _pooled(pair_losses(peft_model, tokenizer, held_out))
            search = dict(
                iterations=scale.cem_iterations,
                population_size=scale.cem_population,
                num_elites=scale.cem_elites,
                seed=seed,
            )
            entry["alphas"], entry["cem_best_scores"] = {}, {}
            for setting, bounds in MIXTURE_BOUNDS.items():
                alphas = mixer.fit_mixture(examples, bounds=bounds, **search)
                with adaptive.using(None):
                    entry["loss"][setting] = _pooled(pair_losses(peft_model, tokenizer, held_out))
                entry["alphas"][setting] = {label: round(float(a), 4) for label, a in zip(DOMAINS, alphas)}
                entry["cem_best_scores"][setting] = [round(s, 4) for s in mixer.mixture_search.best_scores]
            # Each expert alone at a strength fitted the same way (α ∈ [0, 2] on one expert): does the amplified
            # mixture win by mixing, or only by amplifying one expert?
            entry["single_expert_strength"] = {}
            for index, label in enumerate(DOMAINS):

                def one_expert(strength, index=index):
                    alphas = torch.zeros(len(DOMAINS), dtype=torch.float64)
                    alphas[index] = strength[0]
                    return alphas

                found = cem_search(
                    lambda strength: mixer.few_shot_score(examples, one_expert(strength)),
                    1,
                    bounds=MIXTURE_BOUNDS["amplified_mixture"],
                    **search,
                )
                mixer.set_mixture(one_expert(found.alphas))
                with adaptive.using(None):
                    entry["loss"][f"{label}_fitted_strength"] = _pooled(pair_losses(peft_model, tokenizer, held_out))
                entry["single_expert_strength"][label] = round(float(found.alphas[0]), 4)
            singles = [*DOMAINS, *(f"{label}_fitted_strength" for label in DOMAINS)]
            entry["best_single_expert"] = min(singles, key=lambda setting: entry["loss"][setting])
            few_shot[name] = entry
    say(f"few-shot ({clock.seconds['few_shot']} s)")

    # targets, judged from the numbers above
    targets = {
        "each_expert_lowers_own_domain_loss": {
            name: loss_matrix[name][name] < loss_matrix["base"][name] for name in DOMAINS
        },
        "dispatcher_accuracy_at_least_%g" % DISPATCH_TARGET: dispatch["classifier"]["accuracy_three_domains"]
        >= DISPATCH_TARGET,
        "two_pass_beats_base_on_every_domain": {
            name: two_pass[name]["two_pass"] < two_pass[name]["base"] for name in DOMAINS
        },
        "two_pass_beats_base_exact_match": exact_match["two_pass"] > exact_match["base"],
        "few_shot_mixture_beats_every_single_expert": {
            name: entry["loss"]["amplified_mixture"] < entry["loss"][entry["best_single_expert"]]
            for name, entry in few_shot.items()
        },
        "few_shot_mixture_in_[0,1]_beats_every_single_expert": {
            name: entry["loss"]["fitted_mixture"] < entry["loss"][entry["best_single_expert"]]
            for name, entry in few_shot.items()
        },
    }

    parameters = sum(p.numel() for n, p in peft_model.get_base_model().named_parameters() if "svf_" not in n)
    expert_z = get_z_vectors(peft_model, DOMAINS[0])
    z_per_expert = sum(z.numel() for z in expert_z.values())
    adapted = sorted({module.rsplit(".", 1)[-1] for module in expert_z})
    config = peft_model.get_base_model().config
    spec = {
        "scale": scale_name,
        "seed": seed,
        "settings": asdict(scale),
        "model": {
            key: getattr(config, key)
            for key in (
                "model_type",
                "vocab_size",
                "hidden_size",
                "num_attention_heads",
                "intermediate_size",
                "mlp_type",
                "norm_type",
                "norm_position",
                "ef_cycles",
                "ef_segment_length",
                "ef_segment_overlap",
                "num_hidden_layers",
            )
        },
        "parameters": parameters,
        "svf_adapted_projections": adapted,
        "svf_adapted_modules": len(expert_z),
        "z_entries_per_expert": z_per_expert,
        "tokenizer_vocab_size": len(tokenizer),
        "data": {
            **{
                name: {
                    "train_documents": len(domains[name].documents["train"]),
                    "expert_training_pairs": len(domains[name].pairs["train"]),
                    "held_out_pairs": len(eval_pairs[name]),
                    "train_sources": len(domains[name].sources["train"]),
                    "held_out_sources": len(domains[name].sources["held_out"]),
                }
                for name in DOMAINS
            },
            "pretraining_tokens_seen": scale.pretrain_steps * scale.batch_size * scale.block_size,
            "pretraining_blocks": len(mixture_blocks),
            "other_held_out_prompts": scale.other_pairs,
            "classifier_training_prompts": len(labelled),
            "stdlib": {"root": str(stdlib_root()), "library_files": len(stdlib_files())},
        },
        "training": {
            "pretrain_last_loss": pretrain_loss,
            "experts": expert_training,
            "classifier_last_loss": classifier_loss,
        },
        "software": {
            **software_versions("peft"),
            "python_full": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seconds": {**clock.seconds, "total": round(time.perf_counter() - started, 2)},
    }
    return {
        "spec": spec,
        "loss_matrix": loss_matrix,
        "dispatch": {**dispatch, "chance": chance, "labels": labels},
        "two_pass": two_pass,
        "arithmetic_exact_match": exact_match,
        "few_shot": few_shot,
        "targets": targets,
    }


# -------------------------------------------------------------------------------------------- report ----
def _yes(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {'met' if ok else 'NOT met'}" for key, ok in value.items())
    return "met" if value else "NOT met"


def render_markdown(results: dict) -> str:
    """The report: spec, then one table per measurement, then which targets were met."""
    spec = results["spec"]
    domains = list(results["two_pass"])
    settings = list(results["loss_matrix"])
    lines = [
        f"# Transformer² domain experts on SLAM v1 ({spec['scale']} scale, seed {spec['seed']})",
        "",
        f"Model: SLAM v1, hidden {spec['model']['hidden_size']}, {spec['model']['num_hidden_layers']} layers, "
        f"{spec['parameters']:,} parameters; byte-level BPE of {spec['tokenizer_vocab_size']} tokens; "
        f"pretrained {spec['settings']['pretrain_steps']} steps ({spec['data']['pretraining_tokens_seen']:,} tokens) "
        "on "
        f"the three domains. SVF experts: {spec['z_entries_per_expert']:,} z entries each "
        f"on {spec['svf_adapted_modules']} projections ({', '.join(spec['svf_adapted_projections'])}), "
        f"{spec['settings']['expert_steps']} steps on the domain's training pairs. "
        f"torch {spec['software']['torch']}, transformers {spec['software']['transformers']}, peft "
        f"{spec['software']['peft']}, Python {spec['software']['python_full']}, {spec['torch_threads']} torch "
        f"thread(s); wall time {spec['seconds']['total']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in spec["seconds"].items() if k != "total")
        + ").",
        "",
        "## 1. Held-out continuation loss (nats/token), every setting on every domain",
        "",
        "| weights | " + " | ".join(domains) + " |",
        "|---|" + "---:|" * len(domains),
    ]
    for setting in settings:
        row = results["loss_matrix"][setting]
        cells = [f"**{row[d]:.4f}**" if setting == d else f"{row[d]:.4f}" for d in domains]
        lines.append(f"| {'base' if setting == 'base' else setting + ' expert'} | " + " | ".join(cells) + " |")
    dispatch = results["dispatch"]
    lines += [
        "",
        "## 2. Dispatch accuracy on held-out prompts",
        "",
        f"| strategy | three domains ({sum(spec['data'][d]['held_out_pairs'] for d in domains)} prompts) | "
        f'with {spec["data"]["other_held_out_prompts"]} prose prompts ("other") |',
        "|---|---:|---:|",
    ]
    for strategy in ("classifier", "prompt"):
        lines.append(
            f"| {strategy} | {dispatch[strategy]['accuracy_three_domains']:.3f} | "
            f"{dispatch[strategy]['accuracy_with_other']:.3f} |"
        )
    lines += [
        "",
        f"Chance: {dispatch['chance']:.3f} (four labels). Classifier confusion (rows: true, columns: chosen):",
        "",
        "| true \\ chosen | " + " | ".join(dispatch["labels"]) + " |",
        "|---|" + "---:|" * len(dispatch["labels"]),
    ]
    for want, row in dispatch["classifier"]["confusion"].items():
        lines.append(f"| {want} | " + " | ".join(str(row[label]) for label in dispatch["labels"]) + " |")
    lines += [
        "",
        "## 3. Two-pass (classifier dispatch → expert) vs base",
        "",
        "| domain | base | two-pass | own expert (oracle) | dispatched to own expert |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["two_pass"].items():
        lines.append(
            f"| {name} | {row['base']:.4f} | {row['two_pass']:.4f} | {row['own_expert']:.4f} | "
            f"{row['dispatched_to_own_expert']:.3f} |"
        )
    match = results["arithmetic_exact_match"]
    lines += [
        "",
        f"Greedy sums, exact match on {match['examples']} held-out operand pairs: base `generate()` "
        f"{match['base']:.3f}, `SelfAdaptiveModel.generate()` {match['two_pass']:.3f}.",
        "",
        "## 4. Few-shot mixture on unseen mixed domains (held-out continuation loss)",
        "",
        "| domain | base | "
        + " | ".join(f"{d} expert (fitted strength)" for d in domains)
        + " | uniform mix | classifier two-pass | mix, α ∈ [0, 1] | mix, α ∈ [0, 2] | α ∈ [0, 2] ("
        + ", ".join(domains)
        + ") |",
        "|---|" + "---:|" * (len(domains) + 6),
    ]
    for name, entry in results["few_shot"].items():
        loss, strength = entry["loss"], entry["single_expert_strength"]
        amplified = entry["alphas"]["amplified_mixture"]
        lines.append(
            f"| {name} ({entry['examples']} shots, {entry['held_out']} held out) | {loss['base']:.4f} | "
            + " | ".join(f"{loss[d]:.4f} ({loss[d + '_fitted_strength']:.4f} at {strength[d]:.2f})" for d in domains)
            + f" | {loss['uniform_mixture']:.4f} | {entry['classifier_two_pass']:.4f} | "
            f"{loss['fitted_mixture']:.4f} | **{loss['amplified_mixture']:.4f}** | "
            + ", ".join(f"{amplified[d]:.2f}" for d in domains)
            + " |"
        )
    lines += [
        "",
        "Examples: "
        + "; ".join(
            f"{name}: `{entry['example']['prompt']!r}` → `{entry['example']['continuation']!r}`"
            for name, entry in results["few_shot"].items()
        ),
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {key.replace('_', ' ')}: {_yes(value)}" for key, value in results["targets"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder for results.json, report.md, base/ and adapters/")
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--expert-steps",
        type=int,
        default=None,
        help="training steps per domain expert (default: the scale's, 200 at full scale)",
    )
    args = parser.parse_args(argv)
    results = run(
        args.output,
        scale=args.scale,
        seed=args.seed,
        num_threads=args.threads,
        expert_steps=args.expert_steps,
        verbose=True,
    )
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SCALES", "SCALE_SETTINGS", "Scale", "main", "pair_losses", "render_markdown", "run"]
