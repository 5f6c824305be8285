"""The text report of benchmarks/bench_slam_vs_llama.py: the table of every measurement with the ratios over Llama
and PASS/FAIL against the issues' targets, the parameter counts, the cost model, the MoA and held-out sections, and
the ratios recorded in the JSON file."""

from .memory import MEMORY_METHOD
from .slam_vs_llama import BASELINE, MOA_TARGET, TARGETS, describe_sizes

_OPS = {">=": lambda r, t: r >= t, "<=": lambda r, t: r <= t, "<": lambda r, t: r < t}


def fmt_ratio(x):
    return f"{x:6.3f}x" if x is not None else "    n/a"


def _check(ratio, target, op):
    if target is None or ratio is None:
        return None
    return _OPS[op](ratio, target)


def _others(args):
    return [n for n in args.models if n != BASELINE]


def train_rows(args, train, verdicts):
    """(metric, values per model, ratios per non-baseline model, notes) of each training length."""
    has_base, rows = BASELINE in args.models, []
    for seq, stats in (train or {}).items():
        values = {n: f"{stats[n]['tokens_per_s']:.1f}" for n in args.models}
        ratios, notes = {}, []
        for n in _others(args) if has_base else []:
            r = stats[n]["tokens_per_s"] / stats[BASELINE]["tokens_per_s"]
            ratios[n] = r
            best = stats[BASELINE]["min_s"] / stats[n]["min_s"]
            target = TARGETS.get(n, {}).get("speed", {}).get(seq)
            ok = _check(r, target, ">=")
            if ok is not None:
                verdicts[f"{n}_train_speed@{seq} (>={target:.2f})"] = ok
                notes.append(f"{n} >={target:.2f} {'PASS' if ok else 'FAIL'}")
            notes.append(f"{n} min-time {best:.3f}")
        rows.append((f"train tok/s @{seq}", values, ratios, "  ".join(notes)))
    return rows


def memory_rows(args, memory, verdicts):
    has_base, rows = BASELINE in args.models, []
    for seq, stats in (memory or {}).items():
        label = "generate" if seq == "gen" else f"train @{seq}"
        for key, title in (("step_delta_mib", "step mem MiB"), ("peak_mib", "  process peak MiB")):
            values = {n: f"{stats[n][key]:.1f}" for n in args.models}
            ratios, notes = {}, []
            for n in _others(args):
                if not has_base or stats[BASELINE][key] <= 0:
                    continue
                r = stats[n][key] / stats[BASELINE][key]
                ratios[n] = r
                target = TARGETS.get(n, {}).get("memory", {}).get(int(seq)) if seq != "gen" else None
                if target is not None and key == "step_delta_mib":
                    ok = _check(r, *target)
                    verdicts[f"{n}_train_memory@{seq} ({target[1]}{target[0]:.2f})"] = ok
                    notes.append(f"{n} {target[1]}{target[0]:.2f} {'PASS' if ok else 'FAIL'}")
            if key == "peak_mib" and seq == "gen":
                continue
            rows.append((f"{title} {label}", values, ratios, "  ".join(notes)))
    return rows


def generation_rows(args, gen):
    rows = []
    for key, title in (
        ("tokens_per_s", "generate tok/s"),
        ("prefill_tokens_per_s", "  prompt prefill tok/s"),
        ("decode_tokens_per_s", "  decode-only tok/s (est.)"),
    ):
        if not gen or not all(gen[n][key] for n in args.models):
            continue
        values = {n: f"{gen[n][key]:.1f}" for n in args.models}
        ratios = {n: gen[n][key] / gen[BASELINE][key] for n in _others(args) if BASELINE in args.models}
        rows.append((title, values, ratios, ""))
    return rows


def print_table(args, rows):
    names, others, has_base = args.models, _others(args), BASELINE in args.models
    width = 30 + 12 * len(names) + 10 * (len(others) if has_base else 0)
    print("\n" + "=" * width)
    print("SLAM vs Llama at equal parameter count  (ratio = model / llama; >1 is better for tok/s, <1 for memory)")
    print("=" * width)
    header = f"{'metric':<30}" + "".join(f"{n:>12}" for n in names)
    if has_base:
        header += "".join(f"{n + '/llama':>10}" for n in others)
    print(header + "  targets")
    print("-" * width)
    for metric, values, ratios, notes in rows:
        line = f"{metric:<30}" + "".join(f"{values[n]:>12}" for n in names)
        if has_base:
            line += "".join(f"{fmt_ratio(ratios.get(n)):>10}" for n in others)
        print(line + ("  " + notes if notes else ""))
    print("-" * width)


def print_params(args, params, memory):
    ref = params[args.match_params_to] if args.match_params_to in params else None
    counts = []
    for n in args.models:
        diff = f" ({100 * (params[n] - ref) / ref:+.2f} %)" if ref and n != args.match_params_to else ""
        counts.append(f"{n} {params[n]:,}{diff}")
    tolerance = f"   (reference {args.match_params_to}, tolerance ±{100 * args.param_tolerance:.0f} %)"
    print("params: " + ",  ".join(counts) + tolerance)
    print("sizes: " + describe_sizes(args))
    if memory:
        print(f"memory method ({args.device}): {MEMORY_METHOD[args.device]}")
        print("memory targets compare the step delta (activations, gradients, temporaries); weights and AdamW states")
        print("are equal up to the parameter difference, and the process peak adds the Python + torch runtime.")


def _print_geometry(seq, geometry):
    if "v1" in geometry:
        v = geometry["v1"]
        print(
            f"  seq {seq:<6} v1 EF windows/cycle {v['windows']} x {v['window_tokens']} tokens "
            f"(stride {v['stride']}, coverage {v['coverage']:.3f})"
        )
        if v["windows"] < 2:
            print(f"  NOTE: at seq {seq} one v1 window holds the whole sequence: EF block B gets no tokens.")
    if "v2" in geometry:
        v = geometry["v2"]
        print(
            f"  seq {seq:<6} v2 segments {v['segments']} x {v['segment_tokens']} tokens, computed segment slots "
            f"{v['computed_segments']} per cycle (coverage {v['coverage']:.3f}, "
            f"{'one batched computation' if v['batched'] else 'slots run one block at a time'})"
        )
        if v["segments"] < 2:
            print(f"  NOTE: at seq {seq} one v2 segment holds the whole sequence: Level 2 attends globally.")


def print_costs(args, costs):
    print("\nanalytic forward cost per token (MACs; backward ~2x with the same mix). coverage = token slots one EF")
    print("cycle runs o_proj + MLP on / tokens (1.0: each token through one block once):")
    for seq, c in costs.items():
        for n in args.cost_models:
            fr = c[n]["fractions"]
            pred = ""
            if "predicted_speedup" in c[n] and n != BASELINE:
                pred = f"  predicted speedup {c[n]['predicted_speedup']:.3f}x"
            print(
                f"  seq {seq:<6} {n:5s} {c[n]['macs_per_token'] / 1e6:7.2f} M  "
                f"attention {100 * fr['attention']:4.1f} %  mlp {100 * fr['mlp']:4.1f} %  "
                f"qkv/o {100 * fr['qkv_o_proj']:4.1f} %  lm_head {100 * fr['lm_head']:4.1f} %{pred}"
            )
        _print_geometry(seq, c["geometry"])


def print_moa(moa, verdicts):
    print(
        f"\nMoA micro-benchmark (forward + backward; {moa['experts']} experts, top-{moa['top_k']}, shared K/V; "
        f"params MoA attention {moa['params']['moa_attention']:,} vs dense {moa['params']['dense_attention']:,}):"
    )
    for seq, r in moa["seq"].items():
        ok = r["attention_ratio"] <= MOA_TARGET
        verdicts[f"moa_vs_dense_attention@{seq} (<={MOA_TARGET:.2f})"] = ok
        print(
            f"  seq {seq:<6} attention MoA/dense {r['attention_ratio']:.3f}x  <={MOA_TARGET:.2f} "
            f"{'PASS' if ok else 'FAIL'}   whole layer (attention + MLP) MoA/dense {r['layer_ratio']:.3f}x"
        )


def print_heldout(heldout):
    cfg = heldout["config"]
    print(
        f"\nheld-out LM loss (validation works, {cfg['eval_tokens']:,} tokens) after {cfg['training_tokens']:,} "
        f"training tokens ({cfg['steps']} steps x {cfg['batch_size']} x {cfg['seq_len']}), hidden "
        f"{cfg['hidden_size']}; v2 without the router aux term:"
    )
    hm = heldout["models"]
    for n, r in hm.items():
        delta = ""
        if n != BASELINE and BASELINE in hm:
            delta = f"  ({r['heldout_loss'] - hm[BASELINE]['heldout_loss']:+.4f} vs llama)"
        print(
            f"  {n:5s} params {r['params']:,}  held-out loss {r['heldout_loss']:.4f}  ppl {r['heldout_ppl']:.1f}{delta}"
        )


def print_spread_warning(args, train, gen):
    spreads = [st["max_s"] / st["min_s"] for stats in (train or {}).values() for st in stats.values()]
    if gen:
        parts = ("generate", "prefill")
        spreads += [gen[n][part]["max_s"] / gen[n][part]["min_s"] for n in args.models for part in parts]
    if spreads and max(spreads) > 1.5:
        print(
            f"\nWARNING: repeated timings differ by up to {max(spreads):.1f}x (max/min): the machine was disturbed and "
            "the medians are unreliable. Rerun on an idle machine, with more --repeats, or (CPU) --threads 1 "
            "--timer process."
        )


def report(args, params, costs, train, memory, gen, moa, heldout):
    """Prints the report; returns its rows and the verdicts {target: passed}."""
    verdicts = {}
    rows = train_rows(args, train, verdicts) + memory_rows(args, memory, verdicts) + generation_rows(args, gen)
    print_table(args, rows)
    print_params(args, params, memory)
    print_costs(args, costs)
    if moa:
        print_moa(moa, verdicts)
    if heldout:
        print_heldout(heldout)
    print_spread_warning(args, train, gen)
    if verdicts:
        print("\ntargets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items()))
    return rows, verdicts


def ratios_over_llama(args, train, memory, gen):
    """Every measured ratio model / llama, by metric, for the JSON file."""
    ratios = {}
    if BASELINE not in args.models:
        return ratios
    for n in _others(args):
        r = ratios[n] = {}
        for seq, stats in (train or {}).items():
            r[f"train_tokens_per_s@{seq}"] = stats[n]["tokens_per_s"] / stats[BASELINE]["tokens_per_s"]
            r[f"train_tokens_per_s_min_time@{seq}"] = stats[BASELINE]["min_s"] / stats[n]["min_s"]
        for seq, stats in (memory or {}).items():
            if stats[BASELINE]["step_delta_mib"] > 0:
                r[f"step_memory@{seq}"] = stats[n]["step_delta_mib"] / stats[BASELINE]["step_delta_mib"]
        for key in ("tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s") if gen else ():
            if gen[n][key] and gen[BASELINE][key]:
                r[f"generate_{key}"] = gen[n][key] / gen[BASELINE][key]
    return ratios
