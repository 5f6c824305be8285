"""Transformer² (arXiv 2501.06252) on SVF adapters: expert training and two-pass self-adaptive inference (DESIGN §7).

An expert is an SVF adapter (`slam_hf.adapters.svf`): one z vector per adapted `nn.Linear` that rescales its singular
values. What the paper does with experts, for any Hugging Face causal LM and tokenizer, is importable from here:

* **Next-token training** (`experts`). `train_svf_expert(model, train_dataset, args, processing_class=tokenizer)`
  wraps the model with an SVF adapter (or adds one to a PeftModel) and trains it with `Trainer`.
* **REINFORCE** (`reinforce`). `SVFReinforceTrainer` is a `Trainer` whose step samples completions of the batch's
  prompts with `generate()`, scores each with `reward_fn` (rewards in [-1, 1]) and minimises the REINFORCE loss
  plus `kl_coef` times the KL to the same model with its adapter disabled (the formula: `reinforce`'s docstring).
* **Two-pass inference** (this module). `SelfAdaptiveModel` wraps a PeftModel and its experts. Pass 1 picks the
  adaptation for each prompt, pass 2 runs `generate()` with it:
  - `strategy="prompt"`: the base model (adapters disabled) reads a classification prompt that lists the expert
    names and "other"; the label is the one whose tokens get the highest log-likelihood after that prompt (no
    free-text parsing, so the answer is always a valid label);
  - `strategy="classifier"`: the same scoring, run with a classification expert (an SVF adapter trained on such
    prompts) active;
  - `strategy="few_shot"`: `fit_mixture(examples)` searches mixing weights α with the cross-entropy method
    (`cem_search`, module `cem`) so that the experts' mixture z' = Σₖ αₖ zₖ, loaded into a dedicated adapter slot,
    best explains a handful of (prompt, answer) examples; pass 2 generates with that mixture.
  A prompt labelled "other" is generated with the base weights (adapters disabled).

Imports: torch, transformers, peft and slam_hf.adapters only; this is not remote code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Callable, Optional, Union

import torch
from peft import PeftModel

from .cem import CEMResult, cem_search
from .experts import _is_svf_adapter, _peft_type, add_svf_expert, train_svf_expert
from .reinforce import BASELINES, REWARD_RANGE, SVFReinforceTrainer
from .svf import get_z_vectors, mix_z_vectors, set_z_vectors

STRATEGIES = ("prompt", "classifier", "few_shot")
DEFAULT_OTHER_LABEL = "other"
DEFAULT_MIXTURE_ADAPTER = "transformer2_mixture"
DEFAULT_CLASSIFIER_ADAPTER = "transformer2_classifier"
DEFAULT_CLASSIFICATION_TEMPLATE = (
    "Classify the task of the following prompt into one of these categories: {labels}.\nPrompt: {prompt}\nCategory:"
)


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
    "BASELINES",
    "CEMResult",
    "DEFAULT_CLASSIFICATION_TEMPLATE",
    "REWARD_RANGE",
    "SVFReinforceTrainer",
    "SelfAdaptiveModel",
    "add_svf_expert",
    "cem_search",
    "train_svf_expert",
]
