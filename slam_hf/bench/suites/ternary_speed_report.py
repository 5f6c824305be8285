"""The tables of benchmarks/bench_ternary.py's results (slam_hf.bench.suites.ternary_speed): speed, projection
kernels, weights and memory; speed over fp32; the projection microbenchmark; the targets; correctness and the
ceiling. Not remote code."""

from __future__ import annotations

from .ternary_speed import EQUALITY_KEYS, LABELS, mib, speed_ratios


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _head(cells, text_columns: int = 1) -> list[str]:
    """A table's head: the first `text_columns` columns left-aligned, the others (numbers) right-aligned."""
    return [_row(cells), "|---" * text_columns + "|---:" * (len(cells) - text_columns) + "|"]


def markdown_table(r: dict) -> str:
    """The run's tables: speed, weights and memory; speed over fp32; the projection microbenchmark; targets; notes."""
    s, env, la, model = r["settings"], r["environment"], r["load_average"], r["model"]
    length, clock = s["prefill_length"], s["timer"]
    batches = list(r["prefill"]["fp32"])  # ints here, strings after a JSON round trip
    lines = [
        f"Command: `{r['command']}`; run time {r['duration_seconds'] / 60:.1f} min; {env['cpu']}, "
        f"{env['logical_cores']} logical cores, torch {env['software']['torch']} with {s['threads']} thread; "
        f"{model['variant']} {model['preset']} preset (hidden {model['hidden_size']}, FFN "
        f"{model['intermediate_size']}, {model['num_hidden_layers']} layers, vocab {model['vocab_size']}), random "
        f"init (seed {s['seed']}, initializer_range {s['initializer_range']}); fp32 holds the dequantised ternary "
        f"weights. Medians of {s['repeats']} interleaved rounds, {clock} clock. Load average (1 min) at start "
        f"{la['at_start'][0]:.2f}, median over the timed rounds {la['timed_rounds_1min_median']:.2f}, at end "
        f"{la['at_end'][0]:.2f}.",
        "",
    ]
    head = ["implementation", *[f"prefill tok/s {b}x{length}" for b in batches]]
    head += [
        f"decode tok/s (b{s['decode_batch']}, {s['prompt_length']}+{s['new_tokens']})",
        "decode forward-only tok/s",
    ]
    head += ["projections (kernel)", "projection weights MiB (B/weight)", "all tensors MiB"]
    lines += _head([*head, "peak RSS MiB (own process)", "peak RSS - after imports MiB"])
    for name, decode in r["decode"].items():
        cells = [LABELS[name], *[f"{r['prefill'][name][b]['tokens_per_s']:,.0f}" for b in batches]]
        cells += [f"{decode['decode_tokens_per_s']:,.1f}", f"{decode['decode_forward_tokens_per_s']:,.1f}"]
        w, mem = r["weights"].get(name), r["memory"].get(name)
        if w:
            cells.append(" + ".join(f"{n} {k}" for k, n in w["kernels"].items()))
            cells.append(f"{w['bytes'] / 2**20:,.2f} ({w['bytes_per_weight']:g})")
        else:
            cells += ["n/a", "n/a"]
        if mem:
            peak = mem["peak_rss_bytes"]
            cells += [mib(mem["state_bytes"]), mib(peak), mib(peak - mem["rss_after_imports_bytes"])]
        else:
            cells += ["n/a"] * 3
        lines.append(_row(cells))
    if r["memory"]:
        imports = [m["rss_after_imports_bytes"] for m in r["memory"].values()]
        lines += [
            "",
            "Projections (kernel): (b)'s matmul is oneDNN's int8 linear on a weight packed once for layers of at least "
            f"{model['onednn_min_weights']:,} weights (Int8TernaryLinear.onednn_min_weights), torch._int_mm below. "
            "Memory: each implementation alone in a "
            "fresh process (load, one prefill of the largest batch, one `generate`); peak RSS = the kernel's VmHWM of "
            "that process, which holds the Python + torch + transformers runtime "
            f"({mib(min(imports))}-{mib(max(imports))} MiB after the imports) besides the model; `all tensors` = "
            "every parameter and buffer (and packed weight). (ru_maxrss, in the .json, is no use here: Linux carries "
            "the launching process's peak into the child.)",
        ]
    lines += ["", "Speed relative to (a) fp32 (tokens/s ratio, same run):", ""]
    lines += _head(["implementation", *[f"prefill {b}x{length}" for b in batches], "decode"])
    for name in r["decode"]:
        q = speed_ratios(r, name, "fp32")
        lines.append(_row([LABELS[name], *[f"{v:.2f}x" for v in q["prefill"].values()], f"{q['decode']:.2f}x"]))
    lines += ["", f"Projection microbenchmark (the 7 projections of one layer alone, us per call, {clock} clock):", ""]
    lines += _head(["implementation", *[f"M={m}" for m in r["layer"]]])
    for name in next(iter(r["layer"].values())):
        lines.append(_row([LABELS[name], *[f"{1e6 * by_name[name]['layer']:,.0f}" for by_name in r["layer"].values()]]))
    bl = r["load"]["bitlinear"]["first_calls"]
    cache = "an empty inductor cache" if s["fresh_compile_cache"] else "the inductor cache as found"
    compiled = "torch.compile" if s["compile_bitlinear"] else "eager (--no-compile-bitlinear)"
    loads = ", ".join(f"{n} {v['load_seconds']:.2f} s" for n, v in r["load"].items())
    lines += [
        "",
        f"BitLinear ({compiled}, {cache}): first prefill calls + first generate {bl['first_calls_s']:.1f} s wall, "
        f"{bl['overhead_s']:.1f} s more than the same calls warm (compile + warm-up); loads (wall): {loads}.",
        "",
        *_head(["target", "measured", "result"], text_columns=3),
    ]
    for t in r["targets"]:
        measured = t["measured"] if isinstance(t["measured"], bool) else f"{t['measured']:.2f}x"
        lines.append(_row([t["target"], measured, "met" if t["met"] else "MISSED"]))
    c, ceiling = r["correctness"], r["ratios"]["ceiling_vs_fp32"]
    equal = "; ".join(
        f"{n}: " + ", ".join(f"{k.removesuffix('_equal').replace('_', ' ')} {c[k][n]}" for k in EQUALITY_KEYS)
        for n in c["tokens_equal"]
    )
    lines += [
        "",
        f"Correctness vs ternary-int8 (bit for bit): {equal}. fp32 (no activation quantisation) picks the same new "
        f"token at {c['fp32_same_new_tokens']} of {s['new_tokens'] * s['decode_batch']} steps (the random-init "
        f"model's greedy output has {c['distinct_new_tokens']} distinct new tokens).",
        "Ceiling (Amdahl): with the projections costing nothing, (z) runs at "
        + ", ".join(f"prefill {b}x{length} {v:.2f}x" for b, v in ceiling["prefill"].items())
        + f", decode {ceiling['decode']:.2f}x fp32's tokens/s: no projection kernel can beat that.",
    ]
    return "\n".join(lines)


__all__ = ["markdown_table"]
