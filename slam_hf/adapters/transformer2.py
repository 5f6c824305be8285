"""Transformer² (arXiv 2501.06252) on SVF adapters: expert training and two-pass self-adaptive inference (DESIGN §7).

An expert is an SVF adapter (`slam_hf.adapters.svf`): one z vector per adapted `nn.Linear` that rescales its singular
values. This module adds what the paper does with experts, for any Hugging Face causal LM and tokenizer:

* **Next-token training.** `train_svf_expert(model, train_dataset, args, processing_class=tokenizer)` wraps the
  model with an SVF adapter (or adds one to a PeftModel) and trains it with `Trainer`.
* **REINFORCE.** `SVFReinforceTrainer` is a `Trainer` whose step samples completions of the batch's prompts with
  `generate()` (no gradient), scores each with `reward_fn` and minimises

      mean over samples of  −(r − b) · Σₜ log πθ(yₜ | x, y<ₜ)  +  kl_coef · Σₜ KL(πθ(· | x, y<ₜ) ‖ π_base(· | x, y<ₜ))

  where the sums run over the completion tokens (up to and including the first end-of-sequence token), r is the
  reward, b the baseline (`baseline="none"`: b = 0, as in the paper and its released code; `"mean"`: the mean
  reward of the same prompt's samples) and π_base is the same PeftModel under `disable_adapter()`, so no second
  copy of the weights is held. The KL of each position is computed exactly over the vocabulary along the sampled
  completions (the released code computes it the other way round, KL(π_base ‖ πθ)); summed over a completion
  sampled from πθ it is an unbiased estimate of the sequence-level KL(πθ ‖ π_base). Rewards must lie in [-1, 1]:
  the paper's ±1 for a right or wrong answer, or partial credit in between.
* **Two-pass inference.** `SelfAdaptiveModel` wraps a PeftModel and its experts. Pass 1 picks the adaptation for
  each prompt, pass 2 runs `generate()` with it:
  - `strategy="prompt"`: the base model (adapters disabled) reads a classification prompt that lists the expert
    names and "other"; the label is the one whose tokens get the highest log-likelihood after that prompt (no
    free-text parsing, so the answer is always a valid label);
  - `strategy="classifier"`: the same scoring, run with a classification expert (an SVF adapter trained on such
    prompts) active;
  - `strategy="few_shot"`: `fit_mixture(examples)` searches mixing weights α with the cross-entropy method
    (`cem_search`) so that the experts' mixture z' = Σₖ αₖ zₖ, loaded into a dedicated adapter slot, best
    explains a handful of (prompt, answer) examples; pass 2 generates with that mixture.
  A prompt labelled "other" is generated with the base weights (adapters disabled).

Imports: torch, transformers, peft and slam_hf.adapters.svf only; this is not remote code.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from peft import PeftModel, get_peft_model
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from .svf import SVF_PEFT_TYPE, SVFConfig, get_z_vectors, mix_z_vectors, set_z_vectors

STRATEGIES = ("prompt", "classifier", "few_shot")
BASELINES = ("none", "mean")
REWARD_RANGE = (-1.0, 1.0)
DEFAULT_OTHER_LABEL = "other"
DEFAULT_MIXTURE_ADAPTER = "transformer2_mixture"
DEFAULT_CLASSIFIER_ADAPTER = "transformer2_classifier"
DEFAULT_CLASSIFICATION_TEMPLATE = (
    "Classify the task of the following prompt into one of these categories: {labels}.\nPrompt: {prompt}\nCategory:"
)


# ---------------------------------------------------------------------------------- next-token experts ----
def _peft_type(peft_model: PeftModel, adapter_name: str) -> str:
    peft_type = peft_model.peft_config[adapter_name].peft_type
    return getattr(peft_type, "value", peft_type)  # PeftType members are str enums; print the plain name


def _is_svf_adapter(peft_model: PeftModel, adapter_name: str) -> bool:
    return _peft_type(peft_model, adapter_name) == SVF_PEFT_TYPE


def add_svf_expert(model, adapter_name: str = "default", svf_config: Optional[SVFConfig] = None) -> PeftModel:
    """Make `adapter_name` a trainable SVF adapter of `model` and the active one; return the PeftModel.

    A plain transformers model is wrapped with `get_peft_model`; a PeftModel gets the adapter added (or, if it
    already has one of that name, that adapter is activated). `svf_config` defaults to `SVFConfig(task_type=
    "CAUSAL_LM")`, which adapts the MLP projections as in the paper.
    """
    svf_config = svf_config if svf_config is not None else SVFConfig(task_type="CAUSAL_LM")
    if not isinstance(model, PeftModel):
        return get_peft_model(model, svf_config, adapter_name=adapter_name)
    if adapter_name not in model.peft_config:
        model.add_adapter(adapter_name, svf_config)
    elif not _is_svf_adapter(model, adapter_name):
        raise ValueError(
            f"add_svf_expert(adapter_name={adapter_name!r}): the model's adapter {adapter_name!r} is a "
            f"{_peft_type(model, adapter_name)} adapter, not SVF. Choose another adapter_name."
        )
    model.set_adapter(adapter_name)  # also makes its z vectors trainable
    return model


def train_svf_expert(
    model,
    train_dataset,
    args: TrainingArguments,
    *,
    processing_class=None,
    adapter_name: str = "default",
    svf_config: Optional[SVFConfig] = None,
    eval_dataset=None,
    data_collator=None,
    **trainer_kwargs,
) -> Trainer:
    """Train an SVF expert with next-token loss in one call: `add_svf_expert`, then `Trainer(...).train()`.

    `train_dataset` holds tokenized rows (`input_ids`, optionally `attention_mask` and `labels`). Without a
    `data_collator`, and given the tokenizer as `processing_class`, rows are padded and: without labels, labelled
    for next-token loss on every token (`DataCollatorForLanguageModeling(mlm=False)`; it also masks the pad token,
    so a tokenizer whose pad token is its EOS does not learn to stop); with labels (e.g. -100 on the prompt, to
    train on answers only), their labels are padded with -100 (`DataCollatorForSeq2Seq`). Returns the Trainer:
    its `.model` is the PeftModel (`trainer.model.save_pretrained(folder)` saves the expert's z vectors), its
    `.state.log_history` the losses.
    """
    peft_model = add_svf_expert(model, adapter_name=adapter_name, svf_config=svf_config)
    has_labels = "labels" in (getattr(train_dataset, "column_names", None) or [])
    if data_collator is None and processing_class is not None:
        data_collator = (
            DataCollatorForSeq2Seq(processing_class, label_pad_token_id=-100)
            if has_labels
            else DataCollatorForLanguageModeling(processing_class, mlm=False)
        )
    elif data_collator is None and not has_labels:
        raise ValueError(
            "train_svf_expert: train_dataset has no 'labels' column, so pass processing_class=tokenizer (rows are "
            "then padded and labelled for next-token loss) or a data_collator."
        )
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=processing_class,
        **trainer_kwargs,
    )
    trainer.train()
    return trainer


# --------------------------------------------------------------------------------------- REINFORCE ----
@dataclass
class _Rollout:
    """Sampled completions: prompt rows repeated once per sample, completions masked after their first EOS."""

    prompt_ids: torch.Tensor  # (N, P), left-padded
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T), 1 up to and including the first end-of-sequence token
    texts: list[str] = field(default_factory=list)

    def completion_token_lists(self) -> list[list[int]]:
        return [ids[: int(length)].tolist() for ids, length in zip(self.completion_ids, self.completion_mask.sum(-1))]


def _checked_rewards(values, completions: Sequence[str]) -> torch.Tensor:
    """`reward_fn`'s output as a float tensor (N,), or an error naming reward_fn and the first bad value."""
    count = len(completions)
    try:
        rewards = torch.as_tensor(
            values.detach() if isinstance(values, torch.Tensor) else list(values), dtype=torch.float32
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"reward_fn must return one number per completion ({count} here, a list or 1-D tensor), but it returned "
            f"{type(values).__name__} ({err})."
        ) from None
    if rewards.dim() != 1 or rewards.numel() != count:
        raise ValueError(
            f"reward_fn returned {rewards.numel()} value(s) of shape {tuple(rewards.shape)} for {count} completions: "
            "it must return one reward per completion, in the order of `completions`."
        )
    low, high = REWARD_RANGE
    bad = ~torch.isfinite(rewards) | (rewards < low) | (rewards > high)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"reward_fn returned {rewards[index].item()} for completion {index} ({completions[index]!r}): rewards "
            f"must be finite and lie in [{low:g}, {high:g}] (Transformer² gives +1 for a right and -1 for a wrong "
            "answer; values in between are partial credit). Rescale or clip the reward inside reward_fn."
        )
    return rewards


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # As generate() numbers left-padded rows: real tokens count from 0, so a row scores as it was sampled.
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _accepts_position_ids(peft_model: PeftModel) -> bool:
    return "position_ids" in inspect.signature(peft_model.get_base_model().forward).parameters


class SVFReinforceTrainer(Trainer):
    """Train the active adapter of a PeftModel (an SVF expert) with REINFORCE, as Transformer² does.

    Nothing here is specific to SVF: any PEFT adapter trains the same way.

    Args:
        model (`PeftModel`): the model with its trainable adapter active (`add_svf_expert(model, "math")`). With
            the adapter disabled it is the reference policy of the KL penalty. Use it without dropout: the
            penalty compares a training-mode forward with an eval-mode one.
        reward_fn (`Callable`): `reward_fn(prompts, completions, completion_ids=..., **columns)` → one reward per
            completion, in [-1, 1] (±1 in the paper). `prompts` and `completions` are lists of strings (each prompt
            repeated once per sample, completions decoded without special tokens), `completion_ids` lists the
            token ids up to and including the first EOS, and every other dataset column (e.g. reference answers)
            comes repeated like the prompts.
        args (`TrainingArguments`): as for `Trainer`. `per_device_train_batch_size` counts prompts.
        train_dataset: rows with a text column `prompt_column` and whatever columns the reward needs.
        processing_class: the tokenizer; it needs a pad token (`tokenizer.pad_token = tokenizer.eos_token`).
        kl_coef (`float`, defaults to 0): weight of KL(πθ ‖ π_base). With 0 the KL is neither computed nor logged.
        num_samples_per_prompt (`int`, defaults to 4): completions sampled per prompt and step.
        max_new_tokens (`int`, defaults to 32): completion length limit.
        generation_kwargs (`dict`, *optional*): more `generate()` arguments. Sampling (`do_sample=True`) is the
            default. REINFORCE and the KL estimate assume the completions are drawn from πθ itself: a temperature
            other than 1 or top-k / top-p truncation trains towards a different objective.
        baseline (`str`, defaults to `"none"`): `"none"` uses the raw reward (the paper); `"mean"` subtracts the
            mean reward of the same prompt's samples (needs `num_samples_per_prompt >= 2`).
        prompt_column (`str`, defaults to `"prompt"`).

    Logged with each training loss: `reward` (mean), `reward_std`, `completion_length` (tokens) and, with
    `kl_coef > 0`, `kl` (mean per completion).
    """

    def __init__(
        self,
        model: PeftModel,
        reward_fn: Callable[..., Any],
        args: Optional[TrainingArguments] = None,
        train_dataset=None,
        processing_class=None,
        *,
        kl_coef: float = 0.0,
        num_samples_per_prompt: int = 4,
        max_new_tokens: int = 32,
        generation_kwargs: Optional[dict] = None,
        baseline: str = "none",
        prompt_column: str = "prompt",
        **trainer_kwargs,
    ):
        if not isinstance(model, PeftModel):
            raise TypeError(
                f"SVFReinforceTrainer(model=...) must be a PeftModel, got {type(model).__name__}: wrap it with "
                "add_svf_expert(model) or get_peft_model(model, SVFConfig(task_type='CAUSAL_LM')). The KL penalty's "
                "reference policy is that same model with its adapter disabled."
            )
        if not callable(reward_fn):
            raise TypeError(f"SVFReinforceTrainer(reward_fn=...) must be callable, got {type(reward_fn).__name__}.")
        if not (isinstance(kl_coef, (int, float)) and math.isfinite(kl_coef) and kl_coef >= 0):
            raise ValueError(f"SVFReinforceTrainer(kl_coef={kl_coef!r}) must be a finite number >= 0 (0: no penalty).")
        for name, value in (("num_samples_per_prompt", num_samples_per_prompt), ("max_new_tokens", max_new_tokens)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"SVFReinforceTrainer({name}={value!r}) must be an integer >= 1.")
        if baseline not in BASELINES:
            raise ValueError(f"SVFReinforceTrainer(baseline={baseline!r}) must be one of {BASELINES}.")
        if baseline == "mean" and num_samples_per_prompt < 2:
            raise ValueError(
                "SVFReinforceTrainer(baseline='mean') subtracts the mean reward of each prompt's samples, which "
                "needs num_samples_per_prompt >= 2 (with one sample every advantage would be 0)."
            )
        generation_kwargs = dict(generation_kwargs or {})
        reserved = {"num_return_sequences", "max_new_tokens", "input_ids", "attention_mask"}
        clashes = sorted(reserved & set(generation_kwargs))
        if clashes:
            raise ValueError(
                f"SVFReinforceTrainer(generation_kwargs=...) must not set {clashes}: use num_samples_per_prompt= "
                "and max_new_tokens=; the prompts come from the dataset."
            )
        if processing_class is None or getattr(processing_class, "pad_token_id", None) is None:
            raise ValueError(
                "SVFReinforceTrainer(processing_class=...) needs the tokenizer, with a pad token for batching the "
                "prompts (e.g. tokenizer.pad_token = tokenizer.eos_token)."
            )
        columns = getattr(train_dataset, "column_names", None)
        if columns is not None:
            if prompt_column not in columns:
                raise ValueError(
                    f"SVFReinforceTrainer: train_dataset has no prompt column {prompt_column!r} (its columns: "
                    f"{columns}). Name the text column with prompt_column=..."
                )
            reserved = sorted({"prompts", "completions", "completion_ids"} & set(columns) - {prompt_column})
            if reserved:
                raise ValueError(
                    f"SVFReinforceTrainer: train_dataset columns {reserved} clash with reward_fn's own arguments "
                    "(prompts, completions, completion_ids): rename them."
                )
        self.reward_fn = reward_fn
        self.kl_coef = float(kl_coef)
        self.num_samples_per_prompt = num_samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = {"do_sample": True, "pad_token_id": processing_class.pad_token_id, **generation_kwargs}
        self.baseline = baseline
        self.prompt_column = prompt_column
        self._step_metrics: dict[str, list[float]] = defaultdict(list)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=self._collate_prompts,
            **trainer_kwargs,
        )
        # compute_loss returns a per-batch mean, so Trainer must divide it by the gradient accumulation steps.
        self.model_accepts_loss_kwargs = False

    # The dataset's text columns are what this trainer needs, not what the model's forward accepts.
    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def _collate_prompts(self, rows: list[dict]) -> dict:
        return {
            "prompts": [row[self.prompt_column] for row in rows],
            "columns": {key: [row[key] for row in rows] for key in rows[0] if key != self.prompt_column},
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        prompts, columns = inputs["prompts"], inputs["columns"]
        rollout = self._sample_completions(model, prompts)
        rewards = self._score_completions(prompts, columns, rollout).to(rollout.completion_ids.device)
        advantages = rewards
        if self.baseline == "mean":
            per_prompt = rewards.view(-1, self.num_samples_per_prompt)
            advantages = (per_prompt - per_prompt.mean(-1, keepdim=True)).flatten()

        log_probs = self._forward_log_probs(model, rollout)  # (N, T, V), with gradient
        mask = rollout.completion_mask.to(log_probs.dtype)
        token_log_probs = log_probs.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
        loss = -(advantages * (token_log_probs * mask).sum(-1)).mean()

        metrics = self._step_metrics
        metrics["reward"].append(rewards.mean().item())
        metrics["reward_std"].append(rewards.std(unbiased=False).item())
        metrics["completion_length"].append(rollout.completion_mask.sum(-1).float().mean().item())
        if self.kl_coef > 0:
            kl = self._kl_to_base(model, rollout, log_probs, mask)
            loss = loss + self.kl_coef * kl.mean()
            metrics["kl"].append(kl.mean().item())
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        raise NotImplementedError(
            "SVFReinforceTrainer only trains. Measure an expert by sampling completions with generate() and "
            "scoring them with your reward function, or evaluate its next-token loss with a plain Trainer."
        )

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._step_metrics:  # a training log: add the means since the last one
            logs = {**logs, **{key: sum(values) / len(values) for key, values in self._step_metrics.items()}}
            self._step_metrics.clear()
        super().log(logs, start_time)

    # --- the pieces of one step ---
    @torch.no_grad()
    def _sample_completions(self, model, prompts: list[str]) -> _Rollout:
        tokenizer = self.processing_class
        padding_side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # generate() continues every row at its right end
        try:
            encoded = tokenizer(list(prompts), padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = padding_side
        prompt_ids = encoded["input_ids"].to(self.args.device)
        prompt_mask = encoded["attention_mask"].to(self.args.device)
        policy = self.accelerator.unwrap_model(model)
        with _eval_mode(policy):
            sequences = policy.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                num_return_sequences=self.num_samples_per_prompt,
                max_new_tokens=self.max_new_tokens,
                **self.generation_kwargs,
            )
        completion_ids = sequences[:, prompt_ids.shape[1] :]
        samples = self.num_samples_per_prompt  # generate() repeats each prompt row in place, sample by sample
        rollout = _Rollout(
            prompt_ids.repeat_interleave(samples, 0),
            prompt_mask.repeat_interleave(samples, 0),
            completion_ids,
            _mask_after_first_eos(completion_ids, self._eos_token_ids(policy)),
        )
        rollout.texts = tokenizer.batch_decode(rollout.completion_token_lists(), skip_special_tokens=True)
        return rollout

    def _eos_token_ids(self, policy) -> list[int]:
        eos = getattr(policy.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.processing_class.eos_token_id
        return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def _score_completions(self, prompts: list[str], columns: dict, rollout: _Rollout) -> torch.Tensor:
        samples = self.num_samples_per_prompt

        def repeated(values):
            return [value for value in values for _ in range(samples)]

        values = self.reward_fn(
            repeated(prompts),
            rollout.texts,
            completion_ids=rollout.completion_token_lists(),
            **{key: repeated(column) for key, column in columns.items()},
        )
        return _checked_rewards(values, rollout.texts)

    def _forward_log_probs(self, model, rollout: _Rollout) -> torch.Tensor:
        """log πθ(· | x, y<ₜ) at each completion position, (N, T, V) float32."""
        input_ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
        attention_mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if _accepts_position_ids(self.accelerator.unwrap_model(model)):
            kwargs["position_ids"] = _position_ids(attention_mask)
        logits = model(**kwargs).logits
        prompt_length = rollout.prompt_ids.shape[1]
        # The logits at position i predict token i + 1: the completion is predicted from the last prompt token on.
        return logits[:, prompt_length - 1 : -1].float().log_softmax(-1)

    def _kl_to_base(self, model, rollout: _Rollout, log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Σₜ KL(πθ ‖ π_base) per completion, exact over the vocabulary at each sampled position."""
        policy = self.accelerator.unwrap_model(model)
        with torch.no_grad(), _eval_mode(policy), policy.disable_adapter():
            base_log_probs = self._forward_log_probs(model, rollout)
        per_position = (log_probs.exp() * (log_probs - base_log_probs)).sum(-1)
        return (per_position * mask).sum(-1)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _mask_after_first_eos(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """1 for each token up to and including the first end-of-sequence token, 0 after it (the padding)."""
    if not eos_token_ids:
        return torch.ones_like(completion_ids)
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_token_ids), device=completion_ids.device)).long()
    eos_before = is_eos.cumsum(-1) - is_eos
    return (eos_before == 0).long()


# ---------------------------------------------------------------------------------------- CEM search ----
@dataclass
class CEMResult:
    """Outcome of `cem_search`: the best weights seen, their score, and the best score after each iteration."""

    alphas: torch.Tensor
    score: float
    best_scores: list[float]
    mean: torch.Tensor  # the search distribution's final mean
    std: torch.Tensor  # and standard deviation


def cem_search(
    score_fn: Callable[[torch.Tensor], float],
    num_experts: int,
    *,
    iterations: int = 10,
    population_size: int = 16,
    num_elites: int = 6,
    bounds: tuple[float, float] = (0.0, 1.0),
    init_mean: Optional[Union[Sequence[float], torch.Tensor]] = None,
    init_std: Optional[float] = None,
    smoothing: float = 0.3,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
) -> CEMResult:
    """Maximise `score_fn(alphas)` over mixing weights with the cross-entropy method (Transformer²'s few-shot search).

    Each iteration samples `population_size` weight vectors from a diagonal Gaussian (clamped to `bounds`), scores
    them, and moves the Gaussian towards the mean and spread of the `num_elites` best; `smoothing` is the share
    of the old mean and spread kept each time (like the released code's EMA option; without it a small lucky elite
    set tends to collapse the spread before the optimum is reached). The first population contains the start mean
    (uniform 1/K weights by default), so the result never scores below it. `init_std` defaults to half the width
    of `bounds`. Sampling uses `generator`, or a `torch.Generator` seeded with `seed`, so a search repeats
    exactly. `score_fn` gets a float64 tensor (num_experts,) and returns a number, higher is better.
    """
    if not (isinstance(num_experts, int) and num_experts >= 1):
        raise ValueError(f"cem_search(num_experts={num_experts!r}) must be an integer >= 1.")
    for name, value in (("iterations", iterations), ("population_size", population_size), ("num_elites", num_elites)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"cem_search({name}={value!r}) must be an integer >= 1.")
    if num_elites > population_size:
        raise ValueError(f"cem_search(num_elites={num_elites}) cannot exceed population_size={population_size}.")
    low, high = (float(bound) for bound in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"cem_search(bounds={bounds!r}) must be two finite numbers (low, high) with low < high.")
    if init_mean is None:
        mean = torch.full((num_experts,), 1.0 / num_experts, dtype=torch.float64)
    else:
        mean = torch.as_tensor(init_mean, dtype=torch.float64).flatten()
        if mean.numel() != num_experts or not torch.isfinite(mean).all():
            raise ValueError(f"cem_search(init_mean=...) must hold {num_experts} finite numbers, got {init_mean!r}.")
    mean = mean.clamp(low, high)
    std = torch.full((num_experts,), (high - low) / 2 if init_std is None else float(init_std), dtype=torch.float64)
    if not (torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"cem_search(init_std={init_std!r}) must be a finite number > 0.")
    if not 0 <= smoothing < 1:
        raise ValueError(f"cem_search(smoothing={smoothing!r}) must lie in [0, 1): the share of the old mean kept.")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)

    best_alphas, best_score, best_scores = mean.clone(), -math.inf, []
    for iteration in range(iterations):
        noise = torch.randn((population_size, num_experts), generator=generator, dtype=torch.float64)
        population = (mean + std * noise).clamp(low, high)
        if iteration == 0:
            population[0] = mean  # the start point is always scored
        scores = torch.tensor([_checked_score(score_fn, candidate) for candidate in population], dtype=torch.float64)
        top = int(scores.argmax())
        if scores[top] > best_score:
            best_alphas, best_score = population[top].clone(), float(scores[top])
        best_scores.append(best_score)
        elites = population[scores.topk(num_elites).indices]
        # Smoothing keeps part of the old distribution, so a lucky small elite set cannot collapse it at once.
        mean = smoothing * mean + (1 - smoothing) * elites.mean(0)
        std = smoothing * std + (1 - smoothing) * elites.std(0, unbiased=False)
    return CEMResult(
        alphas=best_alphas.float(), score=best_score, best_scores=best_scores, mean=mean.float(), std=std.float()
    )


def _checked_score(score_fn: Callable, alphas: torch.Tensor) -> float:
    value = score_fn(alphas.clone())
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise ValueError(
            f"score_fn returned {value!r} for alphas {[round(a, 4) for a in alphas.tolist()]}: it must return a "
            "finite number (higher is better)."
        )
    return score


# ------------------------------------------------------------------------------------ two-pass inference ----
def _few_shot_pairs(examples) -> list[tuple[str, str]]:
    pairs = []
    for index, example in enumerate(examples):
        if isinstance(example, Mapping) and "prompt" in example and "answer" in example:
            pairs.append((example["prompt"], example["answer"]))
        elif isinstance(example, Sequence) and not isinstance(example, str) and len(example) == 2:
            pairs.append((example[0], example[1]))
        else:
            raise ValueError(
                f"examples[{index}] is {example!r}: each few-shot example must be a (prompt, answer) pair or a dict "
                "with 'prompt' and 'answer'."
            )
        if not all(isinstance(text, str) and text for text in pairs[-1]):
            raise ValueError(f"examples[{index}]: prompt and answer must be non-empty strings, got {pairs[-1]!r}.")
    if not pairs:
        raise ValueError("examples is empty: pass a few (prompt, answer) examples of the task.")
    return pairs


class SelfAdaptiveModel:
    """Transformer²'s two-pass inference over SVF experts: pass 1 picks the adaptation, pass 2 generates with it.

    Args:
        model: a `PeftModel` that holds the experts (or will receive them), or a plain transformers causal LM (then
            every expert is loaded from a folder or Hub repo id; the first load wraps it into a PeftModel,
            available as `.model`). Call `model.eval()` first: generation keeps the model's mode.
        tokenizer: the model's tokenizer.
        experts: {label: adapter}. The label is the task name the classification prompt lists; the adapter is the
            name of an SVF adapter already on `model` or a folder / Hub repo id to load it from (under the label's
            name). The labels and `other_label` are what `dispatch` returns.
        strategy: `"prompt"` (the base model classifies), `"classifier"` (the `classifier` adapter classifies) or
            `"few_shot"` (a CEM-fitted mixture of all experts; call `fit_mixture` or `set_mixture` first).
        classifier: the classification expert for `strategy="classifier"`: an adapter name or folder / repo id.
        other_label: the label for prompts no expert fits; they run on the base weights (adapters disabled).
        classification_template: pass 1's prompt, with `{labels}` (the labels, comma-separated, `other_label`
            last) and `{prompt}` (the user's prompt as text).
        label_prefix: text between the classification prompt and a label when the label is scored (" " suits
            tokenizers that mark word starts).
        mixture_adapter_name: the adapter slot that holds the few-shot mixture z'.
        scoring_batch_size: rows per forward pass when scoring labels or few-shot answers.

    Batches: `generate` dispatches every row by itself and runs pass 2 once per label on that label's rows (with
    their common left padding removed), so rows are assumed left-padded, as decoder-only generation needs.
    """

    def __init__(
        self,
        model,
        tokenizer,
        experts: Mapping[str, str],
        strategy: str = "prompt",
        *,
        classifier: Optional[str] = None,
        other_label: str = DEFAULT_OTHER_LABEL,
        classification_template: str = DEFAULT_CLASSIFICATION_TEMPLATE,
        label_prefix: str = " ",
        mixture_adapter_name: str = DEFAULT_MIXTURE_ADAPTER,
        scoring_batch_size: int = 16,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"SelfAdaptiveModel(strategy={strategy!r}) must be one of {STRATEGIES}.")
        if not isinstance(experts, Mapping) or not experts:
            raise ValueError(
                "SelfAdaptiveModel(experts=...) must be a non-empty {label: adapter name or path} mapping, got "
                f"{experts!r}."
            )
        for label in experts:
            if not (isinstance(label, str) and label.strip()):
                raise ValueError(f"SelfAdaptiveModel(experts=...): expert label {label!r} must be a non-empty string.")
        if other_label in experts:
            raise ValueError(
                f"SelfAdaptiveModel(experts=...): {other_label!r} is reserved for prompts that fit no expert (they run "
                "on the base weights). Rename that expert or pass other_label=..."
            )
        for placeholder in ("{labels}", "{prompt}"):
            if placeholder not in classification_template:
                raise ValueError(f"SelfAdaptiveModel(classification_template=...) lacks the {placeholder} placeholder.")
        if strategy == "classifier" and classifier is None:
            raise ValueError(
                "SelfAdaptiveModel(strategy='classifier') needs classifier=<the classification expert: an adapter "
                "name on the model or a folder / Hub repo id>."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.other_label = other_label
        self.classification_template = classification_template
        self.label_prefix = label_prefix
        self.mixture_adapter_name = mixture_adapter_name
        self.scoring_batch_size = scoring_batch_size
        self.experts = {
            label: self._resolve_adapter(f"expert {label!r}", label, source) for label, source in experts.items()
        }
        self.classifier = (
            None if classifier is None else self._resolve_adapter("classifier", DEFAULT_CLASSIFIER_ADAPTER, classifier)
        )
        self.alphas: Optional[torch.Tensor] = None
        self.mixture_search: Optional[CEMResult] = None
        self.last_labels: Optional[list[str]] = None
        if strategy == "few_shot":
            self._check_mixable()

    # --- experts ---
    def _resolve_adapter(self, what: str, load_as: str, source) -> str:
        """The adapter name for `source` (an adapter of the model, or loaded from a folder / repo id)."""
        if not isinstance(source, str):
            raise TypeError(f"{what}: expected an adapter name, folder or Hub repo id (a string), got {source!r}.")
        if isinstance(self.model, PeftModel) and source in self.model.peft_config:
            adapter_name = source
        else:
            known = sorted(self.model.peft_config) if isinstance(self.model, PeftModel) else []
            if load_as in known:
                raise ValueError(
                    f"{what}: {source!r} is not an adapter of the model, and loading it as {load_as!r} would replace "
                    f"the model's adapter of that name. Name the adapter ({known}) instead."
                )
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(source, adapter_name=load_as)
                else:
                    self.model = PeftModel.from_pretrained(self.model, source, adapter_name=load_as)
            except Exception as err:
                where = f"an adapter of the model (its adapters: {known})" if known else "an adapter of the model"
                raise ValueError(
                    f"{what}: {source!r} is neither {where} nor a loadable adapter folder or Hub repo id "
                    f"({type(err).__name__}: {err}). Name an existing adapter, or check the path."
                ) from err
            adapter_name = load_as
        if not _is_svf_adapter(self.model, adapter_name):
            raise ValueError(
                f"{what}: adapter {adapter_name!r} is a {_peft_type(self.model, adapter_name)} adapter; "
                "Transformer² experts are SVF adapters (slam_hf.adapters.svf.SVFConfig)."
            )
        return adapter_name

    @property
    def labels(self) -> list[str]:
        """What pass 1 chooses from: the expert labels, then `other_label`."""
        return [*self.experts, self.other_label]

    def expert_z_vectors(self) -> dict[str, dict[str, torch.Tensor]]:
        """{expert label: {module name: z}} of every expert."""
        return {label: get_z_vectors(self.model, adapter) for label, adapter in self.experts.items()}

    def _check_mixable(self) -> dict[str, dict[str, torch.Tensor]]:
        scalings = {label: self.model.peft_config[adapter].scaling for label, adapter in self.experts.items()}
        first = next(iter(scalings))
        for label, scaling in scalings.items():
            if scaling != scalings[first]:
                raise ValueError(
                    f"Expert {label!r} (adapter {self.experts[label]!r}) uses SVF scaling {scaling!r} but expert "
                    f"{first!r} uses {scalings[first]!r}: z vectors of different forms cannot be mixed."
                )
        z_vectors = self.expert_z_vectors()
        mix_z_vectors(z_vectors, [1.0 / len(z_vectors)] * len(z_vectors))  # raises naming a mismatched expert
        return z_vectors

    # --- adapter switching ---
    @contextmanager
    def using(self, label: Optional[str]) -> Iterator[None]:
        """Run the block as pass 2 runs `label`: an expert label (its adapter active), `other_label` (adapters
        disabled), or None (the few-shot mixture)."""
        if label == self.other_label:
            with self.model.disable_adapter():
                yield
            return
        adapter = self.mixture_adapter_name if label is None else self._adapter_of(label)
        with self.using_adapter(adapter):
            yield

    @contextmanager
    def using_adapter(self, adapter_name: str) -> Iterator[None]:
        """Activate one adapter for the block, then restore the active adapters and which parameters train."""
        previous = list(self.model.active_adapters)
        if previous == [adapter_name]:
            yield
            return
        trainable = [(param, param.requires_grad) for param in self.model.parameters()]
        self.model.set_adapter(adapter_name)
        try:
            yield
        finally:
            if len(previous) == 1:
                self.model.set_adapter(previous[0])
            else:
                self.model.base_model.set_adapter(previous)
            for param, requires_grad in trainable:  # set_adapter marks the adapter trainable; undo that
                param.requires_grad_(requires_grad)

    def _adapter_of(self, label: str) -> str:
        if label not in self.experts:
            raise ValueError(f"{label!r} is not an expert of this SelfAdaptiveModel: use one of {self.labels}.")
        return self.experts[label]

    @contextmanager
    def _pass_one(self) -> Iterator[None]:
        if self.strategy == "prompt":
            with self.model.disable_adapter():
                yield
        elif self.strategy == "classifier":
            with self.using_adapter(self.classifier):
                yield
        else:
            raise ValueError(
                "SelfAdaptiveModel(strategy='few_shot') does not classify prompts: every prompt runs on the fitted "
                "mixture. Use strategy='prompt' or 'classifier' to dispatch."
            )

    # --- pass 1 ---
    def classification_prompt(self, prompt: str) -> str:
        return self.classification_template.format(labels=", ".join(self.labels), prompt=prompt)

    @torch.no_grad()
    def label_scores(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), len(labels)) log-likelihood of each label's tokens after the classification prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        labels = self.labels
        contexts = [self.classification_prompt(prompt) for prompt in prompts for _ in labels]
        continuations = [self.label_prefix + label for _ in prompts for label in labels]
        with self._pass_one():
            totals, _ = self._continuation_log_likelihoods(contexts, continuations)
        return totals.view(len(prompts), len(labels))

    def dispatch(self, prompts: Union[str, Sequence[str]]) -> list[str]:
        """Pass 1: the label (an expert's or `other_label`) of each prompt, the one with the highest log-likelihood."""
        scores = self.label_scores(prompts)
        return [self.labels[index] for index in scores.argmax(-1).tolist()]

    def _continuation_log_likelihoods(self, contexts: Sequence[str], continuations: Sequence[str]):
        """Σ log p(continuation tokens | context) per row and the token counts, under the active weights."""
        rows = []
        for context, continuation in zip(contexts, continuations):
            context_ids = self.tokenizer(context)["input_ids"]
            continuation_ids = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not context_ids or not continuation_ids:
                raise ValueError(f"{(context if not context_ids else continuation)!r} tokenizes to no tokens.")
            rows.append((context_ids, continuation_ids))
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        totals, counts = [], []
        for start in range(0, len(rows), self.scoring_batch_size):
            chunk = rows[start : start + self.scoring_batch_size]
            width = max(len(context) + len(continuation) for context, continuation in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (context, continuation) in enumerate(chunk):  # right padding: a causal LM's real positions
                tokens = context + continuation  # never see it
                input_ids[row, : len(tokens)] = torch.tensor(tokens)
                attention_mask[row, : len(tokens)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            log_probs = logits.float().log_softmax(-1).cpu()
            for row, (context, continuation) in enumerate(chunk):
                predicted_at = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
                token_log_probs = log_probs[row, predicted_at, torch.tensor(continuation)]
                totals.append(token_log_probs.sum())
                counts.append(len(continuation))
        return torch.stack(totals), torch.tensor(counts)

    # --- few-shot mixture ---
    def set_mixture(self, alphas: Union[Sequence[float], torch.Tensor, Mapping[str, float]]) -> torch.Tensor:
        """Load z' = Σₖ αₖ zₖ (one weight per expert, in `experts` order, or {label: weight}) into the mixture slot."""
        return self._load_mixture(self._check_mixable(), alphas)

    def _load_mixture(self, expert_z: dict, alphas) -> torch.Tensor:
        mixed = mix_z_vectors(expert_z, alphas)
        if self.mixture_adapter_name not in self.model.peft_config:
            config = copy.deepcopy(self.model.peft_config[next(iter(self.experts.values()))])
            config.inference_mode = True
            self.model.add_adapter(self.mixture_adapter_name, config)
        set_z_vectors(self.model, mixed, adapter_name=self.mixture_adapter_name)
        if isinstance(alphas, Mapping):
            alphas = [alphas[label] for label in self.experts]
        self.alphas = torch.as_tensor(alphas, dtype=torch.float32).detach().clone()
        return self.alphas

    @torch.no_grad()
    def few_shot_score(self, examples, alphas=None) -> float:
        """Mean over `examples` of the answer's mean token log-likelihood given its prompt, under the mixture
        (`alphas`, loaded for the call only, or the current one)."""
        pairs = _few_shot_pairs(examples)
        if alphas is None:
            if self.alphas is None:
                raise ValueError("few_shot_score: no mixture is loaded; pass alphas=... or call fit_mixture first.")
            return self._answer_score(pairs)
        previous = self.alphas
        expert_z = self._check_mixable()
        self._load_mixture(expert_z, alphas)
        try:
            return self._answer_score(pairs)
        finally:
            if previous is not None:
                self._load_mixture(expert_z, previous)
            else:
                self.alphas = None  # nothing was loaded before: generate() still asks for a fitted mixture

    def _answer_score(self, pairs: list[tuple[str, str]]) -> float:
        with self.using(None):
            totals, counts = self._continuation_log_likelihoods([p for p, _ in pairs], [a for _, a in pairs])
        return (totals / counts).mean().item()

    @torch.no_grad()
    def fit_mixture(
        self, examples, score_fn: Optional[Callable[[PeftModel], float]] = None, **cem_kwargs
    ) -> torch.Tensor:
        """Find mixing weights α with `cem_search`, load the best mixture, and return α (float32, one per expert).

        `examples` are a few (prompt, answer) pairs (or dicts with "prompt" and "answer") of the task at hand.
        The default score is `few_shot_score`: the answers' mean token log-likelihood (write each answer with the
        separator that follows its prompt, e.g. a leading space). `score_fn(model) -> float` replaces it with your
        own metric (e.g. exact-match accuracy from `model.generate`), evaluated with the candidate mixture active.
        `cem_kwargs` go to `cem_search` (iterations, population_size, num_elites, bounds, seed, ...). The search
        itself is kept as `.mixture_search`.
        """
        pairs = _few_shot_pairs(examples)
        expert_z = self._check_mixable()

        def score(alphas: torch.Tensor) -> float:
            self._load_mixture(expert_z, alphas)
            if score_fn is None:
                return self._answer_score(pairs)
            with self.using(None):
                return score_fn(self.model)

        self.mixture_search = cem_search(score, len(self.experts), **cem_kwargs)
        return self._load_mixture(expert_z, self.mixture_search.alphas)

    # --- pass 2 ---
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[Sequence[str]] = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Two-pass generation: classify each row (or use `labels`), then generate it with its adaptation.

        Returns the sequences (prompt + new tokens) like `PeftModel.generate`, rows in input order; rows whose
        label finished early are padded with the pad token. The labels used are kept in `.last_labels`.
        `labels` skips pass 1 (one expert label or `other_label` per row). With `strategy="few_shot"` every row
        runs on the fitted mixture.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.strategy == "few_shot":
            if self.alphas is None:
                raise ValueError(
                    "SelfAdaptiveModel(strategy='few_shot'): call fit_mixture(examples) or "
                    "set_mixture(alphas) before generate()."
                )
            self.last_labels = [self.mixture_adapter_name] * len(input_ids)
            with self.using(None):
                return self._sequences(
                    self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
                )
        if labels is None:
            labels = self.dispatch(self._prompt_texts(input_ids, attention_mask))
        labels = self._checked_labels(labels, len(input_ids))
        self.last_labels = labels
        rows_by_label: dict[str, list[int]] = {}
        for row, label in enumerate(labels):
            rows_by_label.setdefault(label, []).append(row)
        if len(rows_by_label) == 1:  # one adaptation for the whole batch: exactly the adapted model's generate()
            with self.using(labels[0]):
                return self._sequences(
                    self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
                )
        new_tokens = {}
        for label, rows in rows_by_label.items():
            ids, mask = _drop_shared_left_padding(input_ids[rows], attention_mask[rows])
            with self.using(label):
                output = self._sequences(self.model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs))
            new_tokens[label] = output[:, ids.shape[1] :]
        return self._assemble(input_ids, rows_by_label, new_tokens, generate_kwargs)

    def _checked_labels(self, labels: Sequence[str], batch_size: int) -> list[str]:
        labels = [labels] if isinstance(labels, str) else list(labels)
        if len(labels) != batch_size:
            raise ValueError(f"generate(labels=...) has {len(labels)} labels for {batch_size} rows: give one per row.")
        for row, label in enumerate(labels):
            if label not in self.labels:
                raise ValueError(
                    f"generate(labels=...): labels[{row}] = {label!r} is not an expert of this SelfAdaptiveModel; "
                    f"use one of {self.labels}."
                )
        return labels

    def _prompt_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        return [
            self.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            for ids, mask in zip(input_ids, attention_mask)
        ]

    @staticmethod
    def _sequences(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.sequences

    def _assemble(self, input_ids, rows_by_label, new_tokens, generate_kwargs) -> torch.Tensor:
        # generate() pads finished rows with this same id
        candidates = (
            generate_kwargs.get("pad_token_id"),
            getattr(self.model.generation_config, "pad_token_id", None),
            self.tokenizer.pad_token_id,
            self.tokenizer.eos_token_id,
            0,
        )
        pad_id = next(candidate for candidate in candidates if candidate is not None)
        longest = max(tokens.shape[1] for tokens in new_tokens.values())
        output = torch.full(
            (len(input_ids), input_ids.shape[1] + longest), int(pad_id), dtype=input_ids.dtype, device=input_ids.device
        )
        output[:, : input_ids.shape[1]] = input_ids
        for label, rows in rows_by_label.items():
            tokens = new_tokens[label]
            output[rows, input_ids.shape[1] : input_ids.shape[1] + tokens.shape[1]] = tokens.to(output.device)
        return output


def _drop_shared_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Remove leading columns that are padding in every row (a sub-batch then looks as if it was padded alone)."""
    real_columns = attention_mask.bool().any(0).nonzero()
    first = int(real_columns[0]) if len(real_columns) else 0
    return input_ids[:, first:], attention_mask[:, first:]


__all__ = [
    "CEMResult",
    "DEFAULT_CLASSIFICATION_TEMPLATE",
    "SVFReinforceTrainer",
    "SelfAdaptiveModel",
    "add_svf_expert",
    "cem_search",
    "train_svf_expert",
]
