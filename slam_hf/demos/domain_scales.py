"""The sizes of the domain-experts demo (`slam_hf.demos.domain_experts`): "full" is the reported run, "tiny" runs
every stage in seconds for the tests (its numbers mean nothing)."""

from __future__ import annotations

from dataclasses import dataclass

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


# Every Scale field at (full, tiny). "full" is sized to finish in about 15 minutes on a 2-core CPU (pretraining is
# most of it).
_SIZES = {
    "documents": (6000, 120),
    "eval_pairs": (200, 12),
    "expert_pairs": (3200, 48),
    "classifier_prompts": (600, 24),
    "other_pairs": (100, 8),
    "few_shot_examples": (16, 4),
    "mixed_held_out": (150, 8),
    "generate_examples": (200, 8),
    "vocab_size": (2048, 400),
    "hidden_size": (128, 32),
    "intermediate_size": (512, 64),
    "num_attention_heads": (4, 2),
    "ef_cycles": (2, 1),
    "ef_segment_length": (64, 32),
    "ef_segment_overlap": (16, 8),
    "block_size": (128, 64),
    "batch_size": (16, 8),
    "pretrain_steps": (1100, 30),
    "pretrain_lr": (3e-3, 3e-3),
    "expert_steps": (200, 6),
    "expert_lr": (0.1, 0.1),
    "classifier_steps": (120, 6),
    "classifier_lr": (0.2, 0.2),
    "cem_iterations": (8, 2),
    "cem_population": (12, 4),
    "cem_elites": (4, 2),
}
SCALE_SETTINGS = {
    name: Scale(**{field: sizes[index] for field, sizes in _SIZES.items()}) for index, name in enumerate(SCALES)
}
