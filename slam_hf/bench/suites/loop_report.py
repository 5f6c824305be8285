"""The loop benchmark's run, targets and tables (benchmarks/bench_loop.py): `run_loop_bench` runs every section in
order and returns one results dict; `targets` checks the issue's targets against it; `markdown_tables` and
`write_results` give the README block and the recorded files."""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from slam_hf.bench import script
from slam_hf.bench.machine import cpu_name, git_state, load_average, software_versions

from .loop import (
    LoopBenchSettings,
    batches,
    bench_data,
    build_models,
    parameter_counts,
    train_absolute_head,
    train_interleaved,
)
from .loop_decode import batch_equivalence, cache_bytes_per_token, cache_modes, decode_speed
from .loop_exits import CALIBRATED, UNTRAINED, absolute_target_share, exit_curves, heldout_loss

REPORT_KEYS = ("title", "created", "command", "duration_seconds", "environment", "settings", "data", "parameters")
REPORT_KEYS += ("training", "heldout", "exits", "decode", "batch_equivalence", "cache", "targets", "section_seconds")
CURVE_LABELS = {
    "confidence_improvement": "confidence (improvement)",
    "confidence_absolute": "confidence (absolute)",
    "hidden_change": "hidden change",
    "kl": "KL",
    "fixed_depth": "fixed depth",
}


def run_loop_bench(settings: LoopBenchSettings, log=print, command: str = "") -> dict:
    """Every section, in order; returns the results (REPORT_KEYS, targets included)."""
    torch.set_num_threads(settings.threads)
    started, section, env = time.perf_counter(), script.Sections(log), environment(settings)

    with tempfile.TemporaryDirectory() as scratch:
        data = section("data", lambda: bench_data(settings, Path(settings.work_dir or scratch)))
    models = build_models(settings, data)
    counts = parameter_counts(models)
    log(
        f"parameters: llama {counts['llama']:,}, slam_loop {counts['loop']:,} ({counts['loop_confidence']:,} in the "
        f"confidence head; {counts['loop_without_confidence']:,} without it)"
    )
    training = section("train", lambda: train_interleaved(settings, models, data["train"], log))
    absolute, curve = section(
        "absolute head", lambda: train_absolute_head(settings, models["loop"], data["train"], log)
    )
    training["absolute_head"] = {"steps": len(curve), "final_confidence_loss": curve[-1][1], "curve": curve}
    eval_batches = batches(data["eval"], settings.batch_size)
    plain = section("held-out", lambda: {n: heldout_loss(models[n], eval_batches) for n in ("llama", "loop_depth1")})
    plain.update(absolute_target_share(models["loop"], eval_batches))
    exits = section(
        "exits",
        lambda: exit_curves(
            {**models, "absolute": absolute},
            eval_batches,
            batches(data["calibration"], settings.batch_size),
            settings,
            log,
        ),
    )
    prompts = data["eval"][: settings.batch_size, : settings.prompt_tokens]
    pad = data["special_ids"]["pad_token_id"]
    decode = section("decode", lambda: decode_speed(models, prompts, settings, pad))
    equivalence = section("batch equivalence", lambda: batch_equivalence(models["loop"], prompts, settings, pad))
    cache = section("cache modes", lambda: cache_modes(models["loop"], eval_batches, settings))
    cache["bytes_per_token"]["llama"] = cache_bytes_per_token(models["llama"], eval_batches[0])
    results = {
        "title": "slam_loop (latent loop, prelude 1 + core 2 x 4 + coda 1) vs. Llama (4 layers), mid-size protocol",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": env,
        "settings": {**asdict(settings), "budgets": list(settings.budgets)},
        "data": data["meta"],
        "parameters": counts,
        "training": training,
        "heldout": heldout_summary(plain, exits),
        "exits": exits,
        "decode": decode,
        "batch_equivalence": equivalence,
        "cache": cache,
        "section_seconds": section.seconds,
    }
    results["targets"] = targets(results, settings)
    results["duration_seconds"] = time.perf_counter() - started
    results["environment"]["load_average_at_end"] = load_average()
    return results


def environment(settings) -> dict:
    return {
        "cpu": f"{cpu_name()}, {os.cpu_count()} logical cores",
        "torch_threads": settings.threads,
        "software": software_versions("tokenizers"),
        "git": git_state(Path(__file__).resolve().parents[3]),
        "load_average_at_start": load_average(),
    }


def heldout_summary(plain: dict, exits: dict) -> dict:
    """Held-out losses: Llama, the one-iteration control, the loop at every depth; the loop's full-depth loss
    relative to each; and how many predictions the "absolute" confidence target can call good (loss < 2 nats)."""
    fixed = exits["curves"]["fixed_depth"]
    full = exits["full_depth"]["loss"]
    return {
        **plain,
        "loop_full_depth": full,
        "loop_by_depth": [p["loss"] for p in fixed],
        "loop_vs_llama": full / plain["llama"] - 1,
        "loop_vs_depth1_control": full / plain["loop_depth1"] - 1,
        "full_depth_vs_depth_1": full / fixed[0]["loss"] - 1,
        "best_depth": min(fixed, key=lambda p: p["loss"])["mean_iterations"],
    }


# --------------------------------------------------------------------------------------------------------------
# targets


def targets(results: dict, settings: LoopBenchSettings) -> dict:
    """Each target: {"met": bool, "value": the measured number(s), "target": the rule}."""
    exits, calibrated = results["exits"], results["exits"]["calibrations"]["confidence_improvement"]
    frontiers = exits["frontiers"]
    budgets = [str(b) for b in settings.budgets]
    iterations = {name: {b: frontiers[name][b]["mean_iterations"] for b in budgets} for name in frontiers}
    beats = {b: all(iterations["confidence_improvement"][b] <= iterations[u][b] for u in UNTRAINED) for b in budgets}
    gaps = results["cache"]["shared_loss_gap"]
    heldout = results["heldout"]
    return {
        "loop_below_llama": {
            "met": heldout["loop_vs_llama"] < 0,
            "value": heldout["loop_vs_llama"],
            "target": "loop at full depth below Llama's held-out loss (equal unique parameters)",
        },
        "looping_buys_depth": {
            "met": heldout["loop_vs_depth1_control"] < 0 and heldout["full_depth_vs_depth_1"] < 0,
            "value": {
                "vs_control": heldout["loop_vs_depth1_control"],
                "vs_own_depth_1": heldout["full_depth_vs_depth_1"],
                "best_depth": heldout["best_depth"],
            },
            "target": "full depth below the one-iteration control (same init, data) and below its own depth 1",
        },
        "calibrated_exit_saving": {
            "met": calibrated["heldout_iteration_saving"] >= 0.30
            and calibrated["heldout_loss_increase"] <= settings.loss_budget,
            "value": {
                "threshold": calibrated["threshold"],
                "iteration_saving": calibrated["heldout_iteration_saving"],
                "loss_increase": calibrated["heldout_loss_increase"],
            },
            "target": f">= 30% fewer mean core iterations at <= {100 * settings.loss_budget:g}% higher held-out loss",
        },
        "confidence_beats_untrained": {
            "met": all(beats.values()),
            "value": {"per_budget": beats, "mean_iterations": iterations},
            "target": "confidence (improvement) frontier at or below hidden-change and KL at every budget",
        },
        "improvement_vs_absolute": {
            "met": None,  # a comparison, not a target
            "value": {
                b: _winner(iterations["confidence_improvement"][b], iterations["confidence_absolute"][b])
                for b in budgets
            },
            "target": "which confidence target needs fewer iterations at equal loss budget",
        },
        "decode_speedup": {
            "met": results["decode"]["adaptive_speedup"] >= 1.2,
            "value": results["decode"]["adaptive_speedup"],
            "target": ">= 1.2x decode tokens/s with the calibrated exit vs. full depth (batch 8, greedy, cache)",
        },
        "batch_equals_alone": {
            "met": results["batch_equivalence"]["rows_equal"] == results["batch_equivalence"]["rows"],
            "value": results["batch_equivalence"]["rows_equal"],
            "target": "greedy output at batch 8 == each row alone (adaptive exit on)",
        },
        "shared_cache_gap": {
            "met": all(gap <= settings.loss_budget for gap in gaps.values()),
            "value": gaps,
            "target": f"shared cache within {100 * settings.loss_budget:g}% held-out loss of per_iteration",
        },
    }


def _winner(improvement: float, absolute: float) -> str:
    if improvement == absolute:
        return f"tie ({improvement:.3f} iterations)"
    best = "improvement" if improvement < absolute else "absolute"
    return f"{best} ({improvement:.3f} vs {absolute:.3f} iterations)"


# --------------------------------------------------------------------------------------------------------------
# tables


def _mark(met) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def _curve_table(exits: dict) -> list[str]:
    lines = ["| exit | threshold | mean core iterations | held-out loss | vs full depth |", "|---|---:|---:|---:|---:|"]
    full = exits["full_depth"]["loss"]
    for name, points in exits["curves"].items():
        for p in points:
            threshold = "-" if p["threshold"] is None else f"{p['threshold']:.4g}"
            change = f"{100 * (p['loss'] / full - 1):+.3f}%"
            lines.append(
                f"| {CURVE_LABELS[name]} | {threshold} | {p['mean_iterations']:.3f} | {p['loss']:.4f} | {change} |"
            )
    return lines


def _frontier_table(exits: dict, budgets) -> list[str]:
    names = list(CURVE_LABELS)
    lines = ["| loss budget | " + " | ".join(CURVE_LABELS[n] for n in names) + " |", "|---|" + "---:|" * len(names)]
    for budget in budgets:
        cells = [f"{exits['frontiers'][n][str(budget)]['mean_iterations']:.3f}" for n in names]
        lines.append(f"| +{100 * budget:g}% | " + " | ".join(cells) + " |")
    return lines


def _preamble(r: dict) -> str:
    s, loop = r["settings"], r["training"]["loop"]
    tokens = loop["steps"] * s["batch_size"] * s["sequence_length"]
    return (
        f"Command: `{r['command']}`; run time {r['duration_seconds'] / 60:.1f} min ({r['environment']['cpu']}, "
        f"{s['threads']} torch thread). {loop['steps']} steps x {s['batch_size']} x {s['sequence_length']} = "
        f"{tokens:,} training tokens per model, seed {s['seed']}; held-out: {r['data']['eval_rows']} rows "
        f"({r['data']['eval_tokens']:,} tokens); thresholds calibrated on {s['calibration_rows']} other held-out rows."
    )


def _model_rows(r: dict) -> list[str]:
    h, p, train = r["heldout"], r["parameters"], r["training"]
    loop_loss = f"{h['loop_full_depth']:.4f} ({100 * h['loop_vs_llama']:+.2f}%)"
    return [
        "| | Llama (4 layers) | slam_loop (1 + 2 x 4 + 1) |",
        "|---|---:|---:|",
        f"| parameters | {p['llama']:,} | {p['loop']:,} (confidence head {p['loop_confidence']:,}) |",
        f"| median train step (s) | {train['llama']['median_step_seconds']:.3f} | "
        f"{train['loop']['median_step_seconds']:.3f} (mean sampled depth {train['loop']['mean_sampled_depth']:.2f}) |",
        f"| held-out loss, full depth | {h['llama']:.4f} | {loop_loss} |",
        f"| held-out loss, control: same model and init trained with loop_max_iterations=1 | | {h['loop_depth1']:.4f} "
        f"(loop at full depth {100 * h['loop_vs_depth1_control']:+.2f}%) |",
        "| held-out loss at depth 1 / 2 / 3 / 4 | | " + " / ".join(f"{x:.4f}" for x in h["loop_by_depth"]) + " |",
    ]


def _exit_rows(r: dict) -> list[str]:
    lines = []
    for name in CALIBRATED:
        k = r["exits"]["calibrations"][name]
        saving, increase = 100 * k["heldout_iteration_saving"], 100 * k["heldout_loss_increase"]
        lines.append(
            f"| {CURVE_LABELS[name]} exit, threshold {k['threshold']} (calibrated for +{100 * k['loss_budget']:g}%) | "
            f"| {k['heldout']['mean_iterations']:.3f} iterations ({saving:.1f}% fewer), loss {increase:+.3f}% |"
        )
    h = r["heldout"]
    lines.append(
        f"| held-out predictions with loss < 2 nats (where the absolute target is > 0), full depth | | "
        f"{100 * h['share_loss_below_2']:.1f}% (mean absolute target {h['mean_absolute_target']:.3f}) |"
    )
    return lines


def _decode_rows(r: dict) -> list[str]:
    d, c, eq = r["decode"], r["cache"], r["batch_equivalence"]
    adaptive, full = d["loop_adaptive"], d["loop_full_depth"]
    gap = c["shared_loss_gap"]
    per_token = {
        name: d[name]["loop_statistics"]["new_mean_iterations"] for name in ("loop_adaptive", "loop_full_depth")
    }
    return [
        f"| decode tok/s, batch {d['batch_size']}, {d['prompt_tokens']} + {d['new_tokens']} tokens, greedy, cache | "
        f"{d['llama']['tokens_per_second']:.0f} | full depth {full['tokens_per_second']:.0f}, adaptive "
        f"{adaptive['tokens_per_second']:.0f} ({d['adaptive_speedup']:.2f}x) |",
        f"| core iterations per new token (loop_statistics) | | adaptive {per_token['loop_adaptive']:.3f}, full "
        f"{per_token['loop_full_depth']:.3f} |",
        f"| batch {d['batch_size']} == each row alone (adaptive) | | {eq['rows_equal']} / {eq['rows']} rows |",
        f"| cache bytes / token | {c['bytes_per_token']['llama']:,.0f} | per_iteration "
        f"{c['bytes_per_token']['per_iteration']:,.0f}, shared {c['bytes_per_token']['shared']:,.0f} |",
        f"| cached teacher-forced loss, shared vs per_iteration ({c['rows']} rows, prefix {c['prefix']}) | | "
        f"full depth {100 * gap['full_depth']:+.3f}%, adaptive {100 * gap['adaptive']:+.3f}% |",
    ]


def markdown_tables(results: dict) -> str:
    """The README block: the headline table, the frontier per budget and the targets."""
    r = results
    lines = [_preamble(r), "", *_model_rows(r), *_exit_rows(r), *_decode_rows(r), ""]
    lines += ["Mean core iterations at the best point within each held-out loss budget (over full depth):", ""]
    lines += [
        *_frontier_table(r["exits"], r["settings"]["budgets"]),
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for target in r["targets"].values():
        lines.append(f"| {target['target']} | {_format_value(target['value'])} | {_mark(target['met'])} |")
    return "\n".join(lines)


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and "per_budget" in value:
        return ", ".join(f"+{100 * float(b):g}%: {'yes' if ok else 'no'}" for b, ok in value["per_budget"].items())
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    return str(value)


def full_text(results: dict) -> str:
    """The markdown block plus every curve point."""
    return (
        markdown_tables(results)
        + "\n\nEvery curve point (held-out rows):\n\n"
        + "\n".join(_curve_table(results["exits"]))
    )


def write_results(results: dict, log_lines: list[str], out_prefix) -> list[Path]:
    """<prefix>.json (everything) and <prefix>.txt (the run's log, then the tables and every curve point)."""
    return script.write_results(results, log_lines, out_prefix, full_text(results))


__all__ = ["REPORT_KEYS", "full_text", "markdown_tables", "run_loop_bench", "targets", "write_results"]
