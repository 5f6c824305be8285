"""The summary of the SLAM v3 benchmark: every measured ratio against its target, PASS or MISS."""

from .v3_models import CACHE_TARGET, DECODE_TARGET, PATHS_TARGET
from .v3_timing import fmt_ratio


def summary(args, report, results):
    report("\n" + "=" * 100)
    report("summary (targets)")
    report("=" * 100)
    rows = []
    if "cache" in results:
        r = results["cache"]
        rows.append(("KV-cache B/token, SLAM v3 / MHA", r["ratio"], f"<= {CACHE_TARGET:.2f}", r["pass"]))
    if "decode" in results:
        r = results["decode"]
        target = f"<= {DECODE_TARGET:.2f}"
        rows.append((f"decode step @{args.context}, absorbed MLA / MHA", r["ratio"], target, r["pass"]))
        rows.append(
            (
                "  same, both caches preallocated",
                r["ratio_preallocated"],
                f"<= {DECODE_TARGET:.2f}",
                r["pass_preallocated"],
            )
        )
        mla_e = r["median_s"]["MLA expanded (absorb=False)"] / r["median_s"]["MHA, same decoder"]
        rows.append(("  (reference) expanded MLA / MHA", mla_e, "", None))
    if "encoder" in results:
        rows += encoder_rows(results["encoder"])
    for name, ratio, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        report(f"{name:<56}{fmt_ratio(ratio):>8}  {target:<8} {verdict}")
    walls = [t for t in args.encoder_threads if t > 1 or args.timer == "wall"]
    if "encoder" in results and walls:
        loads = ", ".join(f"{t} threads: {results['encoder'].get(f'load_{t}t') or 0:.2f}" for t in walls)
        report(
            f"(multi-thread encoder rows are wall-clock times, only meaningful on an idle machine; load average when "
            f"they started: {loads})"
        )


def encoder_rows(encoder):
    """(name, ratio, target text, verdict) of every encoder shape and part; the whole encoder has no target."""
    rows = []
    for key, shape in encoder.items():
        if not isinstance(shape, dict) or "paths_forward" not in shape:
            continue
        for part, label in (
            ("paths_forward", "paths fwd"),
            ("paths_train", "paths fwd+bwd"),
            ("encoder_forward", "whole encoder fwd"),
        ):
            if part not in shape:
                continue
            ratio = shape[part]["ratio"]
            target = part != "encoder_forward"
            name = f"seq/batched {label}, {key} (min {shape[part]['min_ratio']:.2f})"
            verdict = ratio >= PATHS_TARGET if target else None
            rows.append((name, ratio, f">= {PATHS_TARGET:.2f}" if target else "", verdict))
    return rows
