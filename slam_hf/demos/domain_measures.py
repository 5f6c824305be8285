"""The measurements of the domain-experts demo (`slam_hf.demos.domain_experts`), on the trained experts: the loss
matrix, dispatch accuracy, two-pass inference, greedy sums, the few-shot mixtures and the targets they meet."""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

import torch

from .domain_scales import DISPATCH_TARGET, MIXTURE_BOUNDS
from .domain_training import DemoData, DemoRun


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


def pooled(losses) -> float:
    return round(sum(nll for nll, _ in losses) / sum(count for _, count in losses), 4)


def _answer_number(text: str) -> Optional[int]:
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


def _dispatch_accuracy(labels_by_prompt, truth) -> float:
    return round(sum(got == want for got, want in zip(labels_by_prompt, truth)) / len(truth), 4)


def _confusion(predicted, truth, labels) -> dict[str, dict[str, int]]:
    table = {want: {got: 0 for got in labels} for want in dict.fromkeys(truth)}
    for got, want in zip(predicted, truth):
        table[want][got] += 1
    return table


@torch.no_grad()
def greedy_sums(generate, tokenizer, pairs, batch_size=32) -> list[Optional[int]]:
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


class Experts(NamedTuple):
    """The trained model with its adapters, and the classifier-dispatch SelfAdaptiveModel over them."""

    peft_model: object
    tokenizer: object
    adaptive: object  # SelfAdaptiveModel(strategy="classifier")

    def losses_under(self, setting: str, pairs) -> list[tuple[float, int]]:
        """pair_losses with one setting's weights: "base" (no expert) or a domain's expert."""
        from ..data.domains import OTHER_DOMAIN

        with self.adaptive.using(OTHER_DOMAIN if setting == "base" else setting):
            return pair_losses(self.peft_model, self.tokenizer, pairs)

    def losses_as_set(self, pairs) -> list[tuple[float, int]]:
        """pair_losses with the weights as they are set now (a mixture)."""
        with self.adaptive.using(None):
            return pair_losses(self.peft_model, self.tokenizer, pairs)


def loss_matrix(demo: DemoRun, experts: Experts, data: DemoData) -> tuple[dict, dict]:
    """Held-out loss of every setting (base, each expert) on every domain: (pooled matrix, per-pair losses kept for
    the two-pass scores)."""
    from ..data.domains import DOMAINS

    settings = ["base", *DOMAINS]
    with demo.clock.stage("loss_matrix"):
        per_pair = {
            setting: {name: experts.losses_under(setting, data.eval_pairs[name]) for name in DOMAINS}
            for setting in settings
        }
    matrix = {setting: {name: pooled(per_pair[setting][name]) for name in DOMAINS} for setting in settings}
    demo.say(f"loss matrix ({demo.clock.seconds['loss_matrix']} s)")
    return matrix, per_pair


def dispatch_accuracy(demo: DemoRun, experts: Experts, data: DemoData, labels) -> tuple[dict, list]:
    """Accuracy and confusion of classifier and prompt dispatch on the held-out prompts (with and without prose).
    Returns (those numbers, the classifier's labels of the three domains' prompts)."""
    from ..adapters.transformer2 import SelfAdaptiveModel
    from ..data.domains import DOMAINS, OTHER_DOMAIN

    with demo.clock.stage("dispatch"):
        prompts = [prompt for name in DOMAINS for prompt, _ in data.eval_pairs[name]]
        truth = [name for name in DOMAINS for _ in data.eval_pairs[name]]
        other_prompts = [prompt for prompt, _ in data.other.pairs["held_out"][: demo.scale.other_pairs]]
        all_truth = truth + [OTHER_DOMAIN] * len(other_prompts)
        dispatch, dispatched = {}, {}
        for strategy in ("classifier", "prompt"):
            dispatcher = (
                experts.adaptive
                if strategy == "classifier"
                else SelfAdaptiveModel(
                    experts.peft_model,
                    experts.tokenizer,
                    {name: name for name in DOMAINS},
                    strategy="prompt",
                    scoring_batch_size=32,
                )
            )
            got = dispatcher.dispatch(prompts + other_prompts)
            dispatched[strategy] = got[: len(prompts)]
            dispatch[strategy] = {
                "accuracy_three_domains": _dispatch_accuracy(got[: len(prompts)], truth),
                "accuracy_with_other": _dispatch_accuracy(got, all_truth),
                "confusion": _confusion(got, all_truth, labels),
            }
    demo.say(f"dispatch ({demo.clock.seconds['dispatch']} s): {dispatch['classifier']['accuracy_three_domains']}")
    return dispatch, dispatched["classifier"]


def two_pass(data: DemoData, matrix: dict, per_pair: dict, chosen_labels: list) -> dict:
    """Per domain: the loss when each held-out prompt is scored by the expert the classifier chose ("other": the
    base weights), next to the base model and the domain's own expert."""
    from ..data.domains import DOMAINS, OTHER_DOMAIN

    rows, offset = {}, 0
    for name in DOMAINS:
        chosen = chosen_labels[offset : offset + len(data.eval_pairs[name])]
        offset += len(data.eval_pairs[name])
        losses = [
            per_pair["base" if label == OTHER_DOMAIN else label][name][index] for index, label in enumerate(chosen)
        ]
        rows[name] = {
            "base": matrix["base"][name],
            "two_pass": pooled(losses),
            "own_expert": matrix[name][name],
            "dispatched_to_own_expert": _dispatch_accuracy(chosen, [name] * len(chosen)),
        }
    return rows


def sums_exact_match(demo: DemoRun, experts: Experts, data: DemoData) -> dict:
    """Greedy sums on held-out operands: the base model's generate() vs SelfAdaptiveModel.generate()."""
    from ..data.domains import evenly_spread

    tokenizer = experts.tokenizer
    with demo.clock.stage("generate"):
        sums = evenly_spread(data.domains["arithmetic"].pairs["held_out"], demo.scale.generate_examples)
        wanted = [int(answer) for _, answer in sums]
        with experts.peft_model.disable_adapter():
            base_answers = greedy_sums(experts.peft_model.generate, tokenizer, sums)
        adaptive_answers = greedy_sums(experts.adaptive.generate, tokenizer, sums)
    exact_match = {
        "examples": len(sums),
        "base": round(sum(a == w for a, w in zip(base_answers, wanted)) / len(sums), 4),
        "two_pass": round(sum(a == w for a, w in zip(adaptive_answers, wanted)) / len(sums), 4),
        "samples": [
            {"prompt": p, "want": w, "base": b, "two_pass": t}
            for (p, _), w, b, t in list(zip(sums, wanted, base_answers, adaptive_answers))[:5]
        ],
    }
    demo.say(f"generate ({demo.clock.seconds['generate']} s): {exact_match['base']} -> {exact_match['two_pass']}")
    return exact_match


def few_shot(demo: DemoRun, experts: Experts, data: DemoData, labels) -> dict:
    """On each unseen mixed domain: held-out loss of the base model, each expert, classifier dispatch, the uniform
    mixture and the mixtures fit_mixture finds on a few examples (`_fitted_mixtures`, `_fitted_strengths`)."""
    from ..adapters.transformer2 import SelfAdaptiveModel
    from ..data.domains import DOMAINS, MIXED_DOMAINS

    results = {}
    with demo.clock.stage("few_shot"):
        mixer = SelfAdaptiveModel(
            experts.peft_model,
            experts.tokenizer,
            {name: name for name in DOMAINS},
            strategy="few_shot",
            scoring_batch_size=32,
        )
        for name in MIXED_DOMAINS:
            results[name] = _few_shot_entry(demo, experts, mixer, data.mixed[name], labels)
    demo.say(f"few-shot ({demo.clock.seconds['few_shot']} s)")
    return results


def _few_shot_entry(demo: DemoRun, experts: Experts, mixer, pairs, labels) -> dict:
    from ..data.domains import DOMAINS, OTHER_DOMAIN

    scale = demo.scale
    examples, held_out = pairs[: scale.few_shot_examples], pairs[scale.few_shot_examples :]
    entry = {
        "examples": len(examples),
        "held_out": len(held_out),
        "example": {"prompt": examples[0][0], "continuation": examples[0][1]},
    }
    held_out_losses = {setting: experts.losses_under(setting, held_out) for setting in ["base", *DOMAINS]}
    entry["loss"] = {setting: pooled(losses) for setting, losses in held_out_losses.items()}
    routed = experts.adaptive.dispatch([prompt for prompt, _ in held_out])
    entry["classifier_two_pass"] = pooled(
        [held_out_losses["base" if label == OTHER_DOMAIN else label][index] for index, label in enumerate(routed)]
    )
    entry["classifier_labels"] = {label: routed.count(label) for label in labels}
    mixer.set_mixture([1 / len(DOMAINS)] * len(DOMAINS))
    entry["loss"]["uniform_mixture"] = pooled(experts.losses_as_set(held_out))
    search = dict(
        iterations=scale.cem_iterations,
        population_size=scale.cem_population,
        num_elites=scale.cem_elites,
        seed=demo.seed,
    )
    _fitted_mixtures(entry, experts, mixer, examples, held_out, search)
    _fitted_strengths(entry, experts, mixer, examples, held_out, search)
    singles = [*DOMAINS, *(f"{label}_fitted_strength" for label in DOMAINS)]
    entry["best_single_expert"] = min(singles, key=lambda setting: entry["loss"][setting])
    return entry


def _fitted_mixtures(entry: dict, experts: Experts, mixer, examples, held_out, search: dict) -> None:
    """fit_mixture within each of MIXTURE_BOUNDS: its α, CEM's best scores and the held-out loss, into `entry`."""
    from ..data.domains import DOMAINS

    entry["alphas"], entry["cem_best_scores"] = {}, {}
    for setting, bounds in MIXTURE_BOUNDS.items():
        alphas = mixer.fit_mixture(examples, bounds=bounds, **search)
        entry["loss"][setting] = pooled(experts.losses_as_set(held_out))
        entry["alphas"][setting] = {label: round(float(a), 4) for label, a in zip(DOMAINS, alphas)}
        entry["cem_best_scores"][setting] = [round(s, 4) for s in mixer.mixture_search.best_scores]


def _fitted_strengths(entry: dict, experts: Experts, mixer, examples, held_out, search: dict) -> None:
    """Each expert alone at a strength fitted the same way (α ∈ [0, 2] on one expert), into `entry`: does the
    amplified mixture win by mixing, or only by amplifying one expert?"""
    from ..adapters.transformer2 import cem_search
    from ..data.domains import DOMAINS

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
        entry["loss"][f"{label}_fitted_strength"] = pooled(experts.losses_as_set(held_out))
        entry["single_expert_strength"][label] = round(float(found.alphas[0]), 4)


def targets(matrix: dict, dispatch: dict, two_pass_rows: dict, exact_match: dict, few_shot_rows: dict) -> dict:
    """Which targets the numbers meet (judged from them, never assumed)."""
    from ..data.domains import DOMAINS

    def mixture_beats_single_experts(setting):
        return {
            name: entry["loss"][setting] < entry["loss"][entry["best_single_expert"]]
            for name, entry in few_shot_rows.items()
        }

    return {
        "each_expert_lowers_own_domain_loss": {name: matrix[name][name] < matrix["base"][name] for name in DOMAINS},
        "dispatcher_accuracy_at_least_%g" % DISPATCH_TARGET: dispatch["classifier"]["accuracy_three_domains"]
        >= DISPATCH_TARGET,
        "two_pass_beats_base_on_every_domain": {
            name: two_pass_rows[name]["two_pass"] < two_pass_rows[name]["base"] for name in DOMAINS
        },
        "two_pass_beats_base_exact_match": exact_match["two_pass"] > exact_match["base"],
        "few_shot_mixture_beats_every_single_expert": mixture_beats_single_experts("amplified_mixture"),
        "few_shot_mixture_in_[0,1]_beats_every_single_expert": mixture_beats_single_experts("fitted_mixture"),
    }
