"""BitNet b1.58 ternary vs. full precision, SLAM v1 and Llama, under the bench's mid-size protocol
(benchmarks/bench_ternary_quality.py; issue 19, item 6).

Four models get the tokenizer, rows and rules of `slam-hf bench` (runner.prepare_data, models.COMMON_NOTES): the
same BPE, the same Shakespeare training rows in the same order, the same held-out rows, AdamW with a cosine schedule
and warm-up, grad-norm clipping, fp32, the same seed and the same hyper-parameters:

    slam_v1           SLAM v1 (models.build_model("slam_v1")), full precision
    slam_v1_ternary   the same config with `ternary_linear=True` (every attention and MLP projection a TernaryLinear)
    llama             transformers' LlamaForCausalLM (models.build_model("llama")), full precision
    llama_ternary     the same Llama with q/k/v/o/gate/up/down swapped for TernaryLinear (weights copied)

Ternary = slam_hf.slam_ternary.TernaryLinear: per-tensor absmean ternary weights, per-token absmax int8 activations,
straight-through gradients, full-precision master weights; embeddings, the LM head and the norms stay full
precision, no SubLN (`ternary_subln` off), so every ternary model has its full-precision twin's parameters and, from
the same seed, its initial weights. All four train step by step in one process, interleaved (loop.train_interleaved:
one step of each on the same batch, order reversed every other step), so their step times share the machine's slow
periods. Optionally (`extra_learning_rate`) all four are trained once more at another learning rate (BitNet usually
wants a higher one; the fp32 models get it too, as a control): an extra beside the protocol, labelled so.

The step-time ratio is that of training with fake quantisation (quantise, dequantise, fp32 matmul), not of an int8 or
ternary kernel: it prices the training recipe, not BitNet inference.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from slam_hf.bench import script
from slam_hf.bench.machine import load_average
from slam_hf.bench.measure import count_parameters
from slam_hf.slam_ternary import TernaryLinear, ternary_weight

from .loop import MidsizeProtocol, batches, train_interleaved
from .loop_exits import heldout_loss
from .loop_report import environment

# Every attention and MLP projection (Llama's names, which SLAM uses too).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARCHITECTURES = ("slam_v1", "llama")
LABELS = {
    "slam_v1": "SLAM v1 fp32",
    "slam_v1_ternary": "SLAM v1 ternary (b1.58)",
    "llama": "Llama fp32",
    "llama_ternary": "Llama ternary (b1.58)",
}
REPORT_KEYS = ("title", "created", "command", "duration_seconds", "environment", "settings", "data", "models")
REPORT_KEYS += ("parameters", "ternary", "training", "heldout", "comparison", "extra", "section_seconds")


@dataclass
class TernaryQualitySettings(MidsizeProtocol):
    """Everything the benchmark's numbers depend on (the defaults are the recorded run)."""

    num_layers: int = 4  # Llama's layers; SLAM v1: 2 full-attention layers + (L - 2) / 2 encoder-fusion cycles
    extra_learning_rate: float = 3e-3  # all four once more at this lr, an extra beside the protocol (0: none)
    param_tolerance: float = 0.03  # largest relative parameter difference to Llama fp32 allowed

    def shape(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "max_position_embeddings": self.sequence_length,
        }


# --------------------------------------------------------------------------------------------------------------
# data


def bench_data(settings: TernaryQualitySettings, work_dir: Path) -> dict:
    """The bench's tokenizer, training rows and held-out rows (runner.prepare_data, its own choice of held-out rows)."""
    from slam_hf.bench.runner import prepare_data

    config = {"vocab_size": settings.vocab_size, "sequence_length": settings.sequence_length}
    meta = prepare_data({**config, "eval_rows": settings.eval_rows}, work_dir)
    rows = torch.load(work_dir / "rows.pt")
    return {
        "meta": meta,
        "train": rows["train"],
        "eval": rows["eval"],
        "special_ids": meta["special_ids"],
        "vocab_size": meta["tokenizer_size"],
    }


# --------------------------------------------------------------------------------------------------------------
# models


def ternarize(model: nn.Module, names=PROJECTIONS) -> nn.Module:
    """Swap every plain `nn.Linear` child called one of `names` for a `TernaryLinear` holding the same weights (in
    place; returns the model). The caller's random state is untouched (nothing is initialised)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in names and type(child) is nn.Linear:
                ternary = torch.nn.utils.skip_init(
                    TernaryLinear,
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    device=child.weight.device,
                    dtype=child.weight.dtype,
                )
                ternary.load_state_dict(child.state_dict())
                ternary.train(child.training)
                setattr(parent, child_name, ternary)
    return model


def slam_v1_config(settings: TernaryQualitySettings, data: dict, **overrides):
    """SLAM v1's bench config (models.build_config: the common rules, v1's window geometry), with `overrides`."""
    from slam_hf.bench.models import build_config

    config = build_config("slam_v1", settings.shape(), data["vocab_size"], **data["special_ids"])
    if not overrides:
        return config
    fields = config.to_dict()
    for key in ("num_hidden_layers", "model_type", "transformers_version", "architectures"):
        fields.pop(key, None)  # derived or bookkeeping
    return type(config)(**{**fields, **overrides})


def build_models(settings: TernaryQualitySettings, data: dict) -> dict:
    """{"slam_v1", "slam_v1_ternary", "llama", "llama_ternary"}, each initialised from the seed alone (train mode).
    SLAM v1 ternary is its config with `ternary_linear=True` (the field's default modules: every attention and MLP
    projection, no SubLN); Llama ternary is Llama with its projections swapped (`ternarize`)."""
    from slam_hf import SlamV1ForCausalLM
    from slam_hf.bench.models import build_model

    shape, vocab, ids = settings.shape(), data["vocab_size"], data["special_ids"]
    models = {"slam_v1": build_model("slam_v1", shape, vocab, seed=settings.seed, **ids)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        models["slam_v1_ternary"] = SlamV1ForCausalLM(slam_v1_config(settings, data, ternary_linear=True)).train()
    models["llama"] = build_model("llama", shape, vocab, seed=settings.seed, **ids)
    models["llama_ternary"] = ternarize(build_model("llama", shape, vocab, seed=settings.seed, **ids))
    return models


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same parameters and buffers (names and values)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def ternary_census(model: nn.Module) -> dict:
    """Which linear layers are ternary: every projection named in PROJECTIONS, how many are TernaryLinear, the
    TernaryLinear modules that are not projections (should be none) and, over the ternary ones, the shares of
    effective weights at -1, 0 and +1 (W_q = RoundClip(W / mean|W|, -1, 1)) and whether all are in {-1, 0, 1}."""
    projections, ternary, stray = 0, 0, []
    counts = torch.zeros(3, dtype=torch.long)
    all_ternary = True
    for name, module in model.named_modules():
        is_projection = name.rsplit(".", 1)[-1] in PROJECTIONS and isinstance(module, nn.Linear)
        projections += is_projection
        if isinstance(module, TernaryLinear):
            if not is_projection:
                stray.append(name)
            ternary += 1
            with torch.no_grad():
                weight_q, _ = ternary_weight(module.weight)
            all_ternary &= bool(((weight_q == -1) | (weight_q == 0) | (weight_q == 1)).all())
            counts += torch.stack([(weight_q == v).sum() for v in (-1, 0, 1)])
    total = int(counts.sum())
    shares = {str(v): (int(c) / total if total else None) for v, c in zip((-1, 0, 1), counts)}
    return {
        "projections": projections,
        "ternary_linear": ternary,
        "stray_ternary": stray,
        "effective_weights_ternary": all_ternary,
        "ternary_weights": total,
        "weight_shares": shares,
    }


def check_parameters(counts: dict, tolerance: float, reference: str = "llama") -> dict:
    """Each model's relative parameter difference to `reference`; ValueError beyond `tolerance`."""
    ref = counts[reference]
    differences = {name: count / ref - 1 for name, count in counts.items()}
    worst = max(abs(d) for d in differences.values())
    if worst > tolerance:
        raise ValueError(f"parameter counts differ by more than ±{100 * tolerance:g} % from {reference}: {counts}")
    return {"reference": reference, "relative_difference": differences, "max_abs": worst, "tolerance": tolerance}


# --------------------------------------------------------------------------------------------------------------
# the run


def run_ternary_quality(settings: TernaryQualitySettings, log=print, command: str = "") -> dict:
    """Data, the four models, interleaved training, held-out loss, (optionally) the extra ternary learning rate;
    returns the results (REPORT_KEYS)."""
    torch.set_num_threads(settings.threads)
    started, section, env = time.perf_counter(), script.Sections(log), environment(settings)

    with tempfile.TemporaryDirectory() as scratch:
        data = section("data", lambda: bench_data(settings, Path(settings.work_dir or scratch)))
    models = build_models(settings, data)
    counts = {name: count_parameters(model) for name, model in models.items()}
    parameter_check = check_parameters(counts, settings.param_tolerance)
    initial = {arch: same_weights(models[arch], models[f"{arch}_ternary"]) for arch in ARCHITECTURES}
    census = {name: ternary_census(model) for name, model in models.items()}
    log("parameters: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))
    log(
        "ternary projections: "
        + ", ".join(f"{n} {c['ternary_linear']}/{c['projections']}" for n, c in census.items())
        + "; same initial weights as fp32: "
        + ", ".join(f"{arch} {'yes' if same else 'NO'}" for arch, same in initial.items())
    )
    eval_batches = batches(data["eval"], settings.batch_size)
    training = section("train", lambda: train_interleaved(settings, models, data["train"], log))
    heldout = section("held-out", lambda: {name: heldout_loss(model, eval_batches) for name, model in models.items()})
    log("held-out loss: " + ", ".join(f"{name} {loss:.4f}" for name, loss in heldout.items()))
    census_after = {name: ternary_census(model) for name, model in models.items() if "ternary" in name}
    extra = None
    if settings.extra_learning_rate:
        extra = section("extra lr", lambda: extra_learning_rate(settings, data, eval_batches, heldout, log))
    results = {
        "title": "BitNet b1.58 ternary vs. full precision: SLAM v1 and Llama, mid-size protocol",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": env,
        "settings": asdict(settings),
        "data": {**data["meta"], "train_tokens_per_model": settings.steps * settings.tokens_per_step},
        "models": {name: LABELS[name] for name in models},
        "parameters": {"counts": counts, "check": parameter_check},
        "ternary": {"initial_weights_equal_fp32": initial, "before_training": census, "after_training": census_after},
        "training": training,
        "heldout": heldout,
        "comparison": compare(heldout, training),
        "extra": extra,
        "section_seconds": section.seconds,
    }
    results["duration_seconds"] = time.perf_counter() - started
    results["environment"]["load_average_at_end"] = load_average()
    return results


def compare(heldout: dict, training: dict) -> dict:
    """Per architecture: the ternary/fp held-out loss gap and step-time ratio; and SLAM v1 vs. Llama at each
    precision."""
    step = {name: t["median_step_seconds"] for name, t in training.items()}
    out = {}
    for arch in ARCHITECTURES:
        fp, tern = arch, f"{arch}_ternary"
        out[arch] = {
            "ternary_vs_fp_loss_gap": heldout[tern] / heldout[fp] - 1,
            "ternary_vs_fp_step_time_ratio": step[tern] / step[fp],
            "step_time_vs_llama_fp32": {fp: step[fp] / step["llama"], tern: step[tern] / step["llama"]},
        }
    out["slam_v1_vs_llama_loss_gap"] = {
        "fp32": heldout["slam_v1"] / heldout["llama"] - 1,
        "ternary": heldout["slam_v1_ternary"] / heldout["llama_ternary"] - 1,
    }
    return out


def extra_learning_rate(settings, data, eval_batches, heldout: dict, log=print) -> dict:
    """All four models again, from the same initial weights, on the same batches, at `extra_learning_rate`
    (everything else as the protocol). BitNet usually wants a higher lr than full precision; the fp32 models are
    trained at it too, so that a ternary gain there is not just the higher lr. Not the protocol's lr."""
    lr = settings.extra_learning_rate
    models = build_models(settings, data)
    training = train_interleaved(replace(settings, learning_rate=lr), models, data["train"], log)
    losses = {name: heldout_loss(model, eval_batches) for name, model in models.items()}
    log(f"held-out loss at lr {lr:g}: " + ", ".join(f"{name} {loss:.4f}" for name, loss in losses.items()))
    return {
        "learning_rate": lr,
        "note": "all four models at a learning rate other than the protocol's; an extra, not the recorded protocol",
        "heldout": losses,
        "comparison": compare(losses, training),
        "ternary_vs_fp32_at_protocol_lr": {
            arch: losses[f"{arch}_ternary"] / heldout[arch] - 1 for arch in ARCHITECTURES
        },
        "vs_same_model_at_protocol_lr": {name: losses[name] / heldout[name] - 1 for name in losses},
        "training": training,
    }


# --------------------------------------------------------------------------------------------------------------
# report


def _preamble(r: dict) -> str:
    s, d = r["settings"], r["data"]
    cycles = (s["num_layers"] - 2) // 2
    cycles = f"{cycles} encoder-fusion cycle{'s' if cycles > 1 else ''}"
    return (
        f"Command: `{r['command']}`; run time {r['duration_seconds'] / 60:.1f} min ({r['environment']['cpu']}, "
        f"{s['threads']} torch thread). {s['steps']} steps x {s['batch_size']} x {s['sequence_length']} = "
        f"{d['train_tokens_per_model']:,} training tokens per model, seed {s['seed']}, AdamW lr "
        f"{s['learning_rate']:g} (all four), cosine, {100 * s['warmup_ratio']:g}% warm-up, clip "
        f"{s['max_grad_norm']:g}, fp32 master weights; held-out: {d['eval_rows']} rows ({d['eval_tokens']:,} "
        f"tokens). Hidden {s['hidden_size']}, {s['num_heads']} heads, SwiGLU {s['intermediate_size']}, "
        f"{s['num_layers']} layers (SLAM v1: 2 full-attention layers + {cycles} of 2 blocks each)."
    )


def markdown_table(results: dict) -> str:
    """The results table: per model the parameters, held-out loss, the ternary/fp gap, the step time and its ratio."""
    r = results
    h, c, counts, train = r["heldout"], r["comparison"], r["parameters"]["counts"], r["training"]
    lines = [
        _preamble(r),
        "",
        "| model | parameters | held-out loss | ternary vs fp32 | median train step (s) | step time vs fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arch in ARCHITECTURES:
        for name in (arch, f"{arch}_ternary"):
            ternary = name != arch
            gap = f"{100 * c[arch]['ternary_vs_fp_loss_gap']:+.2f}%" if ternary else ""
            ratio = f"{c[arch]['ternary_vs_fp_step_time_ratio']:.2f}x" if ternary else "1.00x"
            lines.append(
                f"| {LABELS[name]} | {counts[name]:,} | {h[name]:.4f} | {gap} | "
                f"{train[name]['median_step_seconds']:.3f} | {ratio} |"
            )
    extra = r.get("extra")
    if extra:
        lr, e = extra["learning_rate"], extra["comparison"]
        for arch in ARCHITECTURES:
            for name in (arch, f"{arch}_ternary"):
                ternary = name != arch
                gap = f"{100 * e[arch]['ternary_vs_fp_loss_gap']:+.2f}%" if ternary else ""
                ratio = f"{e[arch]['ternary_vs_fp_step_time_ratio']:.2f}x" if ternary else "1.00x"
                lines.append(
                    f"| extra, lr {lr:g} (not the protocol's): {LABELS[name]} | {counts[name]:,} | "
                    f"{extra['heldout'][name]:.4f} | {gap} | {extra['training'][name]['median_step_seconds']:.3f} | "
                    f"{ratio} |"
                )
    v = c["slam_v1_vs_llama_loss_gap"]
    after = r["ternary"]["after_training"]
    zeros = ", ".join(f"{LABELS[n]} {100 * a['weight_shares']['0']:.1f}%" for n, a in after.items())
    lines += [
        "",
        f"SLAM v1 vs Llama held-out loss: fp32 {100 * v['fp32']:+.2f}%, ternary {100 * v['ternary']:+.2f}%. "
        f"Ternary projections: {after['slam_v1_ternary']['ternary_linear']} (SLAM v1), "
        f"{after['llama_ternary']['ternary_linear']} (Llama); zero share of the trained ternary weights: {zeros}. "
        "Step times are fake-quantised training (quantise, dequantise, fp32 matmul), not a ternary kernel.",
    ]
    if extra:
        cross = extra["ternary_vs_fp32_at_protocol_lr"]
        own = extra["vs_same_model_at_protocol_lr"]
        lines += [
            "",
            f"Extra (lr {extra['learning_rate']:g}, all four; not the protocol): ternary at lr "
            f"{extra['learning_rate']:g} vs fp32 at lr {r['settings']['learning_rate']:g}: SLAM v1 "
            f"{100 * cross['slam_v1']:+.2f}%, Llama {100 * cross['llama']:+.2f}%; each model at lr "
            f"{extra['learning_rate']:g} vs itself at the protocol's lr: "
            + ", ".join(f"{LABELS[n]} {100 * g:+.2f}%" for n, g in own.items())
            + ".",
        ]
    return "\n".join(lines)


def write_results(results: dict, log_lines: list[str], out_prefix) -> list[Path]:
    """<prefix>.json (everything) and <prefix>.txt (the run's log, then the table)."""
    return script.write_results(results, log_lines, out_prefix, markdown_table(results))


__all__ = [
    "LABELS",
    "PROJECTIONS",
    "REPORT_KEYS",
    "TernaryQualitySettings",
    "bench_data",
    "build_models",
    "check_parameters",
    "compare",
    "markdown_table",
    "run_ternary_quality",
    "same_weights",
    "slam_v1_config",
    "ternarize",
    "ternary_census",
    "write_results",
]
