"""What every section of benchmarks/bench_slam_v3.py shares: the report that prints and keeps its lines, the two
clocks read together, torch's thread count, and the top profiler ops of a call."""

import time

import torch

TIMERS = {"proc": "process", "wall": "wall"}  # these sections' clock names -> slam_hf.bench.measure's


class Report:
    """Prints and keeps every line, for the results file."""

    def __init__(self):
        self.lines = []

    def __call__(self, text=""):
        print(text, flush=True)
        self.lines.append(text)


def clock_pair():
    return time.perf_counter(), time.process_time()


def elapsed(start):
    wall, proc = clock_pair()
    return {"wall": wall - start[0], "proc": proc - start[1]}


def set_threads(n):
    torch.set_num_threads(n)


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.3f}"


def top_ops(fn, rows=6):
    """(op, calls, self CPU ms, share %) of the ops that take the most self CPU time in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [(e.key, e.count, e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / total) for e in events[:rows]]


def format_ops(ops):
    return ";  ".join(f"{key} {ms:.1f} ms x{calls:g} ({pct:.0f}%)" for key, calls, ms, pct in ops)
