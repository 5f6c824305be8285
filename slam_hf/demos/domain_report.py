"""The Markdown report of the domain-experts demo (`slam_hf.demos.domain_experts`): spec, then one table per
measurement, then which targets were met."""

from __future__ import annotations


def render_markdown(results: dict) -> str:
    """The report: spec, then one table per measurement, then which targets were met."""
    domains = list(results["two_pass"])
    lines = [
        *_summary(results["spec"]),
        *_loss_matrix(results, domains),
        *_dispatch(results, domains),
        *_two_pass(results),
        *_few_shot(results, domains),
        "## Targets",
        "",
        *(f"- {key.replace('_', ' ')}: {_met(value)}" for key, value in results["targets"].items()),
    ]
    return "\n".join(lines) + "\n"


def _met(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {'met' if ok else 'NOT met'}" for key, ok in value.items())
    return "met" if value else "NOT met"


def _summary(spec: dict) -> list[str]:
    software = spec["software"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in spec["seconds"].items() if k != "total")
    return [
        f"# Transformer² domain experts on SLAM v1 ({spec['scale']} scale, seed {spec['seed']})",
        "",
        f"Model: SLAM v1, hidden {spec['model']['hidden_size']}, {spec['model']['num_hidden_layers']} layers, "
        f"{spec['parameters']:,} parameters; byte-level BPE of {spec['tokenizer_vocab_size']} tokens; "
        f"pretrained {spec['settings']['pretrain_steps']} steps ({spec['data']['pretraining_tokens_seen']:,} tokens) "
        "on "
        f"the three domains. SVF experts: {spec['z_entries_per_expert']:,} z entries each "
        f"on {spec['svf_adapted_modules']} projections ({', '.join(spec['svf_adapted_projections'])}), "
        f"{spec['settings']['expert_steps']} steps on the domain's training pairs. "
        f"torch {software['torch']}, transformers {software['transformers']}, peft "
        f"{software['peft']}, Python {software['python_full']}, {spec['torch_threads']} torch "
        f"thread(s); wall time {spec['seconds']['total']:.0f} s ({stages}).",
        "",
    ]


def _loss_matrix(results: dict, domains: list) -> list[str]:
    lines = [
        "## 1. Held-out continuation loss (nats/token), every setting on every domain",
        "",
        "| weights | " + " | ".join(domains) + " |",
        "|---|" + "---:|" * len(domains),
    ]
    for setting, row in results["loss_matrix"].items():
        cells = [f"**{row[d]:.4f}**" if setting == d else f"{row[d]:.4f}" for d in domains]
        lines.append(f"| {'base' if setting == 'base' else setting + ' expert'} | " + " | ".join(cells) + " |")
    return lines + [""]


def _dispatch(results: dict, domains: list) -> list[str]:
    spec, dispatch = results["spec"], results["dispatch"]
    lines = [
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
    return lines + [""]


def _two_pass(results: dict) -> list[str]:
    lines = [
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
    return lines + [
        "",
        f"Greedy sums, exact match on {match['examples']} held-out operand pairs: base `generate()` "
        f"{match['base']:.3f}, `SelfAdaptiveModel.generate()` {match['two_pass']:.3f}.",
        "",
    ]


def _few_shot(results: dict, domains: list) -> list[str]:
    lines = [
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
    examples = "; ".join(
        f"{name}: `{entry['example']['prompt']!r}` → `{entry['example']['continuation']!r}`"
        for name, entry in results["few_shot"].items()
    )
    return lines + ["", "Examples: " + examples, ""]
