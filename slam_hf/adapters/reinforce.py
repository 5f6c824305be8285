"""REINFORCE training of an SVF expert, as Transformer² trains its experts (DESIGN §7).

`SVFReinforceTrainer` is a `Trainer` whose step samples completions of the batch's prompts with `generate()` (no
gradient), scores each with `reward_fn` and minimises

    mean over samples of  −(r − b) · Σₜ log πθ(yₜ | x, y<ₜ)  +  kl_coef · Σₜ KL(πθ(· | x, y<ₜ) ‖ π_base(· | x, y<ₜ))

where the sums run over the completion tokens (up to and including the first end-of-sequence token), r is the
reward, b the baseline (`baseline="none"`: b = 0, as in the paper and its released code; `"mean"`: the mean
reward of the same prompt's samples) and π_base is the same PeftModel under `disable_adapter()`, so no second
copy of the weights is held. The KL of each position is computed exactly over the vocabulary along the sampled
completions (the released code computes it the other way round, KL(π_base ‖ πθ)); summed over a completion
sampled from πθ it is an unbiased estimate of the sequence-level KL(πθ ‖ π_base). Rewards must lie in [-1, 1]:
the paper's ±1 for a right or wrong answer, or partial credit in between. Progress is Trainer's: its logs carry
the reward, its spread, the completion length and the KL.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from peft import PeftModel
from transformers import Trainer, TrainingArguments

BASELINES = ("none", "mean")
REWARD_RANGE = (-1.0, 1.0)


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
        _check_reinforce_settings(model, reward_fn, kl_coef, num_samples_per_prompt, max_new_tokens, baseline)
        generation_kwargs = dict(generation_kwargs or {})
        _check_generation_and_data(generation_kwargs, processing_class, train_dataset, prompt_column)
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


def _check_reinforce_settings(model, reward_fn, kl_coef, num_samples_per_prompt, max_new_tokens, baseline) -> None:
    """Raise naming the first `SVFReinforceTrainer` argument that cannot work (the model, reward and sampling)."""
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


def _check_generation_and_data(generation_kwargs: dict, processing_class, train_dataset, prompt_column: str) -> None:
    """Raise naming the first `SVFReinforceTrainer` argument that cannot work (generation, tokenizer and data)."""
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
