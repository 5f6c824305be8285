"""The latent-loop transformer (slam_loop) vs. Llama under the bench's mid-size protocol (benchmarks/bench_loop.py).

Both models get the tokenizer, rows and rules of `slam-hf bench` (runner.prepare_data, models.COMMON_NOTES): the
same BPE, the same Shakespeare training rows in the same order, the same held-out rows, AdamW with a cosine schedule
and warm-up, grad-norm clipping, fp32, the same seed. Llama has L layers; the loop model has the same L unique layers
as prelude + core + coda, the core applied up to N times; a control is the same loop model, from the same initial
weights, trained with one iteration. All train step by step in one process, interleaved (one step of each on the
same batch, order reversed every other step), so their step times share the machine's slow periods.

This module holds the settings, data, models and training; `loop_exits` the exit curves and calibration,
`loop_decode` decoding, the caches and the shared-cache loss, `loop_report` the targets and the tables.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slam_hf.bench.measure import count_parameters

# The second confidence head's part of the loop model; everything else is the trunk (frozen while it trains).
CONFIDENCE_MODULES = ("confidence_head", "confidence_norm")


@dataclass
class MidsizeProtocol:
    """The settings of the bench's mid-size protocol (configs/bench/midsize.yaml) that every benchmark built on it
    shares: data, optimisation, model shape, held-out rows; each benchmark's settings add their own fields."""

    steps: int = 300
    seed: int = 0
    vocab_size: int = 10000
    sequence_length: int = 128
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    hidden_size: int = 256
    num_heads: int = 8
    intermediate_size: int = 1024
    eval_rows: int = 128  # the bench's held-out rows (evenly spaced over the six held-out works)
    threads: int = 1
    log_every: int = 25
    work_dir: str | None = None  # tokenizer and rows (default: a temporary folder)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.sequence_length


@dataclass
class LoopBenchSettings(MidsizeProtocol):
    """Everything the benchmark's numbers depend on (the defaults are the recorded run)."""

    llama_layers: int = 4
    prelude_layers: int = 1
    core_layers: int = 2
    coda_layers: int = 1
    loop_max_iterations: int = 4
    calibration_rows: int = 64  # other held-out rows, for choosing thresholds (never scored in the curves)
    confidence_steps: int = 200  # the second ("absolute") confidence head, on the frozen trunk
    loss_budget: float = 0.005
    budgets: tuple = (0.0025, 0.005, 0.01, 0.02, 0.05)
    prompt_tokens: int = 32
    new_tokens: int = 64
    decode_repeats: int = 5
    teacher_forced_rows: int = 64  # rows of the cached teacher-forced decode (both cache modes)
    teacher_forced_prefix: int = 32

    def shape(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.llama_layers,
            "max_position_embeddings": self.sequence_length,
        }


# --------------------------------------------------------------------------------------------------------------
# data


def bench_data(settings: LoopBenchSettings, work_dir: Path) -> dict:
    """The bench's tokenizer and rows (runner.prepare_data): training rows, the bench's held-out rows and, from the
    held-out works' other rows, evenly spaced calibration rows."""
    from slam_hf.bench.runner import prepare_data

    config = {"vocab_size": settings.vocab_size, "sequence_length": settings.sequence_length, "eval_rows": 10**9}
    data = prepare_data(config, work_dir)  # every held-out row; the bench's subset is picked below
    rows = torch.load(work_dir / "rows.pt")
    heldout = rows["eval"]
    count = min(settings.eval_rows, len(heldout))
    picks = torch.linspace(0, len(heldout) - 1, count).round().long()  # the runner's choice of held-out rows
    rest = torch.ones(len(heldout), dtype=torch.bool)
    rest[picks] = False
    others = heldout[rest]
    calibration = torch.linspace(0, len(others) - 1, min(settings.calibration_rows, len(others))).round().long()
    data.update(eval_rows=count, eval_tokens=count * settings.sequence_length)
    return {
        "meta": data,
        "train": rows["train"],
        "eval": heldout[picks],
        "calibration": others[calibration],
        "special_ids": data["special_ids"],
        "vocab_size": data["tokenizer_size"],
    }


def batches(rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(rows.split(batch_size))


# --------------------------------------------------------------------------------------------------------------
# models


def loop_config(settings: LoopBenchSettings, vocab_size: int, special_ids: dict, **overrides):
    """SlamLoopConfig under the bench's common rules (models.COMMON_NOTES: MHA, SwiGLU, RMSNorm pre-norm, RoPE 1e4,
    untied embeddings, init 0.02, no biases, no dropout)."""
    from slam_hf import SlamLoopConfig

    fields = {
        "vocab_size": vocab_size,
        "hidden_size": settings.hidden_size,
        "num_attention_heads": settings.num_heads,
        "num_key_value_heads": settings.num_heads,
        "intermediate_size": settings.intermediate_size,
        "max_position_embeddings": settings.sequence_length,
        "mlp_type": "swiglu",
        "norm_type": "rmsnorm",
        "norm_position": "pre",
        "position_embedding_type": "rope",
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "prelude_layers": settings.prelude_layers,
        "core_layers": settings.core_layers,
        "coda_layers": settings.coda_layers,
        "loop_max_iterations": settings.loop_max_iterations,
        "loop_iteration_sampling": "lognormal_poisson",
        "loop_backprop_iterations": settings.loop_max_iterations,
        "loop_confidence_target": "improvement",
        "loop_confidence_loss_weight": 1.0,
        "loop_cache": "per_iteration",
        **special_ids,
    }
    return SlamLoopConfig(**{**fields, **overrides})


def build_models(settings: LoopBenchSettings, data: dict) -> dict:
    """{"llama": LlamaForCausalLM, "loop": SlamLoopForCausalLM, "loop_depth1": the control}, each initialised from
    the seed alone. The control is the loop model with loop_max_iterations=1 (a plain P + C + D layer transformer
    in the same code): the same modules, so the same initial weights as "loop", and it trains on the same batches;
    the loop's gain over it is what looping itself buys."""
    from slam_hf.bench.models import build_model

    llama = build_model("llama", settings.shape(), data["vocab_size"], seed=settings.seed, **data["special_ids"])
    loop = _seeded_loop(settings, data)
    control = _seeded_loop(settings, data, loop_max_iterations=1)
    return {"llama": llama, "loop": loop, "loop_depth1": control}


def _seeded_loop(settings, data, **overrides):
    from slam_hf import SlamLoopForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = SlamLoopForCausalLM(loop_config(settings, data["vocab_size"], data["special_ids"], **overrides))
    return model.train()


def with_cache_mode(model, loop_cache: str):
    """The same weights under another `loop_cache` (num_hidden_layers is derived, so the config is rebuilt)."""
    config = model.config.to_dict()
    for key in ("num_hidden_layers", "model_type", "transformers_version", "architectures"):
        config.pop(key, None)
    other = type(model)(type(model.config)(**{**config, "loop_cache": loop_cache}))
    other.load_state_dict(model.state_dict())
    return other.eval()


def parameter_counts(models: dict) -> dict:
    counts = {name: count_parameters(model) for name, model in models.items() if name != "loop_depth1"}
    loop = models["loop"].model
    counts["loop_confidence"] = sum(count_parameters(getattr(loop, name)) for name in CONFIDENCE_MODULES)
    counts["loop_without_confidence"] = counts["loop"] - counts["loop_confidence"]
    return counts


# --------------------------------------------------------------------------------------------------------------
# training


def _optimizer(settings, parameters, steps):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    warmup = round(settings.warmup_ratio * steps)
    return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def _parameter_groups(name, model) -> list[list]:
    """Parameters clipped together. The loop's confidence head is clipped apart from its trunk: with one global
    norm, the head's gradient would scale the LM's update, and the head is meant to leave the LM unchanged."""
    if not name.startswith("loop"):
        return [list(model.parameters())]
    head = [p for module in CONFIDENCE_MODULES for p in getattr(model.model, module).parameters()]
    ids = {id(p) for p in head}
    return [[p for p in model.parameters() if id(p) not in ids], head]


def _step(name, model, optimizer, scheduler, groups, batch, max_grad_norm) -> dict:
    start = time.perf_counter()
    outputs = model(input_ids=batch, labels=batch)
    outputs.loss.backward()
    for group in groups:
        torch.nn.utils.clip_grad_norm_(group, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    record = {"seconds": time.perf_counter() - start, "loss": outputs.loss.item()}
    if name.startswith("loop"):
        lm = outputs.lm_loss if outputs.lm_loss is not None else outputs.loss
        record.update(loss=lm.item(), depth=int(outputs.loop_iterations.max()))
        record["confidence_loss"] = None if outputs.confidence_loss is None else outputs.confidence_loss.item()
    return record


def train_interleaved(settings: LoopBenchSettings, models: dict, train_rows: torch.Tensor, log=print) -> dict:
    """Train every model on the same batches in the same order (the runner's seed-only data order), one step of
    each in turn. Returns per model: the train-loss curve, step seconds and, for the loop, depths and confidence
    losses."""
    steps, batch_size = settings.steps, settings.batch_size
    states = {}
    for name, model in models.items():
        model.train()
        optimizer, scheduler = _optimizer(settings, model.parameters(), steps)
        states[name] = (optimizer, scheduler, _parameter_groups(name, model))
    history = {name: [] for name in models}
    order_gen = torch.Generator().manual_seed(settings.seed)
    per_epoch = len(train_rows) // batch_size
    order = torch.randperm(len(train_rows), generator=order_gen)
    torch.manual_seed(settings.seed)  # the loop's sampled depths
    for step in range(steps):
        if step and step % per_epoch == 0:
            order = torch.randperm(len(train_rows), generator=order_gen)
        batch = train_rows[order[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size]]
        names = list(models) if step % 2 == 0 else list(reversed(models))
        for name in names:
            history[name].append(_step(name, models[name], *states[name], batch, settings.max_grad_norm))
        if settings.log_every and ((step + 1) % settings.log_every == 0 or step + 1 == steps):
            log(_progress(step + 1, steps, history))
    for model in models.values():
        model.eval()
    return {name: _summarize_training(records) for name, records in history.items()}


def _progress(done, steps, history) -> str:
    parts = []
    for name, records in history.items():
        recent = records[-10:]
        loss = sum(r["loss"] for r in recent) / len(recent)
        seconds = sum(r["seconds"] for r in records)
        parts.append(f"{name} loss {loss:.3f} ({seconds:.0f} s)")
    return f"  step {done}/{steps}: " + ", ".join(parts)


def _summarize_training(records: list[dict]) -> dict:
    seconds = [r["seconds"] for r in records]
    summary = {
        "steps": len(records),
        "train_seconds": sum(seconds),
        "median_step_seconds": sorted(seconds)[len(seconds) // 2],
        "final_train_loss": sum(r["loss"] for r in records[-10:]) / len(records[-10:]),
        "loss_curve": [[i + 1, r["loss"]] for i, r in enumerate(records)],
    }
    if "depth" in records[0]:
        depths = [r["depth"] for r in records]
        summary["mean_sampled_depth"] = sum(depths) / len(depths)
        summary["depth_counts"] = {str(d): depths.count(d) for d in sorted(set(depths))}
        summary["confidence_loss_curve"] = [[i + 1, r["confidence_loss"]] for i, r in enumerate(records)]
    return summary


def train_absolute_head(settings: LoopBenchSettings, model, train_rows: torch.Tensor, log=print):
    """A copy of the trained loop model with a fresh confidence head trained on the frozen trunk with
    loop_confidence_target="absolute" (full depth every step, so every iteration has a target), on the training
    rows in the runner's seed order. Returns (the copy, its confidence-loss curve)."""
    absolute = copy.deepcopy(model)
    absolute.config.loop_confidence_target = "absolute"
    trunk = absolute.model
    for parameter in absolute.parameters():
        parameter.requires_grad_(False)
    head = [p for name in CONFIDENCE_MODULES for p in getattr(trunk, name).parameters()]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        torch.nn.init.normal_(trunk.confidence_head.weight, std=absolute.config.initializer_range)
        torch.nn.init.zeros_(trunk.confidence_head.bias)
        trunk.confidence_norm.weight.fill_(1.0)
    for parameter in head:
        parameter.requires_grad_(True)
    steps = settings.confidence_steps
    optimizer, scheduler = _optimizer(settings, head, steps)
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(settings.seed + 1))
    curve = []
    absolute.train()
    per_epoch = len(train_rows) // settings.batch_size
    for step in range(steps):
        start = (step % per_epoch) * settings.batch_size
        index = order[start : start + settings.batch_size]
        outputs = absolute(
            input_ids=train_rows[index], labels=train_rows[index], loop_iterations=settings.loop_max_iterations
        )
        outputs.confidence_loss.backward()
        torch.nn.utils.clip_grad_norm_(head, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append([step + 1, outputs.confidence_loss.item()])
        if settings.log_every and ((step + 1) % (4 * settings.log_every) == 0 or step + 1 == steps):
            log(f"  absolute head step {step + 1}/{steps}: confidence loss {curve[-1][1]:.4f}")
    absolute.eval()
    return absolute, curve


__all__ = [
    "LoopBenchSettings",
    "batches",
    "bench_data",
    "build_models",
    "loop_config",
    "parameter_counts",
    "train_absolute_head",
    "train_interleaved",
    "with_cache_mode",
]
