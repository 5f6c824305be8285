"""Decoding the loop model (benchmarks/bench_loop.py): greedy `generate` speed with the calibrated exit vs. full
depth (and Llama for context), batch-vs-alone equality, cache bytes per token in both cache modes, and the held-out
loss of a cached, teacher-forced decode in both modes (the cost of the "shared" cache's approximation).

Timings interleave the variants (order reversed every other round) and report medians.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from slam_hf.bench.measure import cache_nbytes, interleave, timed
from slam_hf.slam_compat import output_cache

from .loop import with_cache_mode

FULL_DEPTH = {"loop_exit_criterion": "none"}


def _generate(model, prompts, new_tokens, pad_token_id, **kwargs):
    return model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id,
        **kwargs,
    )


def decode_speed(models: dict, prompts: torch.Tensor, settings, pad_token_id: int) -> dict:
    """Greedy generation of settings.new_tokens tokens per row at batch len(prompts), cache on: the loop model with
    its config's (calibrated) exit, the loop model at full depth, Llama. Median tokens/s over interleaved repeats
    (one warm-up each) and the loop's `loop_statistics` of its last call."""
    variants = {
        "loop_adaptive": (models["loop"], {}),
        "loop_full_depth": (models["loop"], FULL_DEPTH),
        "llama": (models["llama"], {}),
    }
    statistics = {}

    def sampler(name):
        model, kwargs = variants[name]

        def sample():
            seconds = timed(lambda: _generate(model, prompts, settings.new_tokens, pad_token_id, **kwargs))
            statistics[name] = getattr(model, "loop_statistics", None)
            return seconds

        return sample

    samples = interleave({name: sampler(name) for name in variants}, 1, settings.decode_repeats)
    tokens = prompts.shape[0] * settings.new_tokens
    result = {}
    for name, seconds in samples.items():
        median = sorted(seconds)[len(seconds) // 2]
        result[name] = {
            "median_seconds": median,
            "seconds": seconds,
            "tokens_per_second": tokens / median,
            "loop_statistics": None if variants[name][0] is models["llama"] else dict(statistics[name]),
        }
    result["adaptive_speedup"] = result["loop_full_depth"]["median_seconds"] / result["loop_adaptive"]["median_seconds"]
    result.update(batch_size=prompts.shape[0], prompt_tokens=prompts.shape[1], new_tokens=settings.new_tokens)
    return result


@torch.no_grad()
def batch_equivalence(model, prompts: torch.Tensor, settings, pad_token_id: int) -> dict:
    """Greedy output of the whole batch vs. each row generated alone, with the model's config exit (adaptive)."""
    batched = _generate(model, prompts, settings.new_tokens, pad_token_id)
    batched_stats = dict(model.loop_statistics)
    rows = []
    for index in range(prompts.shape[0]):
        alone = _generate(model, prompts[index : index + 1], settings.new_tokens, pad_token_id)[0]
        differ = (alone != batched[index]).nonzero()
        rows.append(None if len(differ) == 0 else int(differ[0]) - prompts.shape[1])
    return {
        "rows": len(rows),
        "rows_equal": sum(r is None for r in rows),
        "first_differing_new_token": rows,  # per row: None, or the index of the first new token that differs
        "batched_loop_statistics": batched_stats,
    }


@torch.no_grad()
def cache_bytes_per_token(model, rows: torch.Tensor, **kwargs) -> float:
    """Cache bytes per token and sequence, from the cache tensors after a forward at two lengths (their growth)."""
    model.eval()
    length = rows.shape[1]
    measured = []
    for tokens in (length // 2, length):
        outputs = model(input_ids=rows[:, :tokens], use_cache=True, **kwargs)
        measured.append(cache_nbytes(output_cache(outputs)))
    return (measured[1] - measured[0]) / (length - length // 2) / rows.shape[0]


@torch.no_grad()
def teacher_forced(model, batches, prefix: int, **kwargs) -> dict:
    """Cached decode of held-out rows: prefill `prefix` tokens, then feed the true tokens one at a time with the
    cache; mean next-token loss of every prediction from position prefix - 1 on, the mean core iterations of the
    decoded tokens, and the same predictions' loss from one parallel uncached forward."""
    model.eval()
    total, parallel, count, iterations, decoded = 0.0, 0.0, 0, 0, 0
    for batch in batches:
        outputs = model(input_ids=batch[:, :prefix], use_cache=True, **kwargs)
        cache, logits = output_cache(outputs), [outputs.logits[:, -1]]
        for position in range(prefix, batch.shape[1] - 1):
            outputs = model(input_ids=batch[:, position : position + 1], cache=cache, use_cache=True, **kwargs)
            cache = output_cache(outputs)
            logits.append(outputs.logits[:, -1])
            iterations += int(outputs.loop_iterations.sum())
            decoded += outputs.loop_iterations.numel()
        targets = batch[:, prefix:]
        total += F.cross_entropy(torch.stack(logits, 1).float().flatten(0, 1), targets.flatten(), reduction="sum")
        full = model(input_ids=batch, use_cache=False, **kwargs).logits[:, prefix - 1 : -1].float()
        parallel += F.cross_entropy(full.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return {
        "loss": float(total) / count,
        "parallel_loss": parallel / count,
        "mean_iterations": iterations / max(decoded, 1),
        "tokens": count,
    }


def cache_modes(model, eval_batches, settings) -> dict:
    """Cache bytes per token and teacher-forced loss of the same weights in "per_iteration" and "shared" mode, at
    full depth and with the model's config exit; and the shared mode's loss gap over per_iteration."""
    modes = {"per_iteration": model.eval(), "shared": with_cache_mode(model, "shared")}
    exits = {"full_depth": FULL_DEPTH, "adaptive": {}}
    rows = eval_batches[0]
    batches = eval_batches[: max(1, settings.teacher_forced_rows // settings.batch_size)]
    result = {"bytes_per_token": {}, "teacher_forced": {}}
    for mode, mode_model in modes.items():
        result["bytes_per_token"][mode] = cache_bytes_per_token(mode_model, rows)
        result["teacher_forced"][mode] = {
            name: teacher_forced(mode_model, batches, settings.teacher_forced_prefix, **kwargs)
            for name, kwargs in exits.items()
        }
    per_iteration, shared = result["teacher_forced"]["per_iteration"], result["teacher_forced"]["shared"]
    result["shared_loss_gap"] = {name: shared[name]["loss"] / per_iteration[name]["loss"] - 1 for name in exits}
    result["rows"] = sum(len(b) for b in batches)
    result["prefix"] = settings.teacher_forced_prefix
    return result


__all__ = ["batch_equivalence", "cache_bytes_per_token", "cache_modes", "decode_speed", "teacher_forced"]
