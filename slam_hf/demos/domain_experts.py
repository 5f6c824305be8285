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
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch

from .common import show_demo_progress
from .domain_measures import (
    Experts,
    dispatch_accuracy,
    few_shot,
    loss_matrix,
    pair_losses,
    sums_exact_match,
    targets,
    two_pass,
)
from .domain_report import render_markdown
from .domain_scales import DISPATCH_TARGET, MIXTURE_BOUNDS, SCALE_SETTINGS, SCALES, Scale
from .domain_training import (
    DemoData,
    DemoRun,
    classifier_prompts,
    load_data,
    packed_blocks,
    pretrain,
    train_classifier,
    train_experts,
)


def _check_arguments(scale, seed, num_threads, expert_steps):
    if scale not in SCALE_SETTINGS:
        raise ValueError(f"scale={scale!r} is not a known scale: use one of {SCALES}.")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed={seed!r} must be an integer >= 0.")
    if num_threads is not None and not (
        isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1
    ):
        raise ValueError(f"num_threads={num_threads!r} must be an integer >= 1 (or None: leave torch's setting).")
    if expert_steps is not None and not (
        isinstance(expert_steps, int) and not isinstance(expert_steps, bool) and expert_steps >= 1
    ):
        raise ValueError(f"expert_steps={expert_steps!r} must be an integer >= 1 (or None: the scale's setting).")


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
    _check_arguments(scale, seed, num_threads, expert_steps)
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

    from ..training.trainer import using_torch_threads

    previous_verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        # Trainer wants an output_dir even with saving off; keep its (empty) folders out of the results folder.
        with using_torch_threads(num_threads), tempfile.TemporaryDirectory(prefix="trainer_") as scratch:
            demo = DemoRun(folder, Path(scratch), scale, seed, verbose)
            results = _stages(demo, scale_name)
    finally:
        transformers_logging.set_verbosity(previous_verbosity)
    if keep:
        (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (folder / "report.md").write_text(render_markdown(results))
    return results


def _stages(demo: DemoRun, scale_name: str) -> dict:
    """Train the base model, the experts and the classifier, then measure (see the module docstring)."""
    from ..adapters.svf import SVFConfig, svf_target_modules
    from ..adapters.transformer2 import SelfAdaptiveModel
    from ..data.domains import DOMAINS, OTHER_DOMAIN
    from ..processing_slam import train_bpe_tokenizer

    random.seed(demo.seed)
    with demo.clock.stage("data"):
        data = load_data(demo.scale, demo.seed)
    demo.say(f"data ready ({demo.clock.seconds['data']} s)")
    with demo.clock.stage("tokenizer"):
        tokenizer = train_bpe_tokenizer(data.training_documents(), vocab_size=demo.scale.vocab_size)
    blocks = packed_blocks(tokenizer, data.training_documents(), demo.scale.block_size, demo.seed)

    model, pretrain_loss = pretrain(demo, tokenizer, blocks)
    svf_config = SVFConfig(task_type="CAUSAL_LM", target_modules=svf_target_modules(model, attention=True))
    peft_model, expert_training = train_experts(demo, model, tokenizer, data, svf_config)
    labels = [*DOMAINS, OTHER_DOMAIN]
    labelled = classifier_prompts(demo, data)
    classifier_loss = train_classifier(demo, peft_model, tokenizer, labelled, labels, svf_config)

    adaptive = SelfAdaptiveModel(
        peft_model,
        tokenizer,
        {name: name for name in DOMAINS},
        strategy="classifier",
        classifier="classifier",
        scoring_batch_size=32,
    )
    experts = Experts(peft_model, tokenizer, adaptive)
    matrix, per_pair = loss_matrix(demo, experts, data)
    dispatch, chosen_labels = dispatch_accuracy(demo, experts, data, labels)
    two_pass_rows = two_pass(data, matrix, per_pair, chosen_labels)
    exact_match = sums_exact_match(demo, experts, data)
    few_shot_rows = few_shot(demo, experts, data, labels)

    training = {
        "pretrain_last_loss": pretrain_loss,
        "experts": expert_training,
        "classifier_last_loss": classifier_loss,
    }
    return {
        "spec": _spec(demo, scale_name, experts, data, len(blocks), len(labelled), training),
        "loss_matrix": matrix,
        "dispatch": {**dispatch, "chance": round(1 / len(labels), 4), "labels": labels},
        "two_pass": two_pass_rows,
        "arithmetic_exact_match": exact_match,
        "few_shot": few_shot_rows,
        "targets": targets(matrix, dispatch, two_pass_rows, exact_match, few_shot_rows),
    }


_SPEC_MODEL_KEYS = (
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


def _spec(demo: DemoRun, scale_name, experts: Experts, data: DemoData, blocks, labelled, training) -> dict:
    """What ran: sizes, model, adapters, data, training losses, software, machine and stage times."""
    from ..adapters.svf import get_z_vectors
    from ..bench.machine import software_versions
    from ..data.domains import DOMAINS

    base_model = experts.peft_model.get_base_model()
    expert_z = get_z_vectors(experts.peft_model, DOMAINS[0])
    scale = demo.scale
    return {
        "scale": scale_name,
        "seed": demo.seed,
        "settings": asdict(scale),
        "model": {key: getattr(base_model.config, key) for key in _SPEC_MODEL_KEYS},
        "parameters": sum(p.numel() for n, p in base_model.named_parameters() if "svf_" not in n),
        "svf_adapted_projections": sorted({module.rsplit(".", 1)[-1] for module in expert_z}),
        "svf_adapted_modules": len(expert_z),
        "z_entries_per_expert": sum(z.numel() for z in expert_z.values()),
        "tokenizer_vocab_size": len(experts.tokenizer),
        "data": {
            **{name: _domain_sizes(data, name) for name in DOMAINS},
            "pretraining_tokens_seen": scale.pretrain_steps * scale.batch_size * scale.block_size,
            "pretraining_blocks": blocks,
            "other_held_out_prompts": scale.other_pairs,
            "classifier_training_prompts": labelled,
            "stdlib": _stdlib_sizes(),
        },
        "training": training,
        "software": {
            **software_versions("peft"),
            "python_full": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seconds": {**demo.clock.seconds, "total": round(time.perf_counter() - demo.started, 2)},
    }


def _domain_sizes(data: DemoData, name: str) -> dict:
    domain = data.domains[name]
    return {
        "train_documents": len(domain.documents["train"]),
        "expert_training_pairs": len(domain.pairs["train"]),
        "held_out_pairs": len(data.eval_pairs[name]),
        "train_sources": len(domain.sources["train"]),
        "held_out_sources": len(domain.sources["held_out"]),
    }


def _stdlib_sizes() -> dict:
    from ..data.domains import stdlib_files, stdlib_root

    return {"root": str(stdlib_root()), "library_files": len(stdlib_files())}


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
    show_demo_progress("demo_domain_experts")
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


__all__ = [
    "DISPATCH_TARGET",
    "MIXTURE_BOUNDS",
    "SCALES",
    "SCALE_SETTINGS",
    "Scale",
    "main",
    "pair_losses",
    "render_markdown",
    "run",
]
