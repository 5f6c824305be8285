"""Where a model spends its time and memory, part by part: module-hook timers, the tensors a forward saves for
backward, and torch.profiler tables. `parts` is a list of (label, module); an indented label ("  L1 attention")
names a part nested in the one above it. Used by benchmarks/bench_slam_vs_llama.py (--breakdown,
--breakdown-generate, --saved-memory, --profile). Not remote code.

    with PartTimer(parts, clock="process") as timer:
        step()            # warm-up (hooks attached)
        timer.reset()
        total = timed(step, "process")
    timer.times["  L1 attention"]   # {"forward": s, "backward": s, "calls": n}
"""

from __future__ import annotations

import torch

from .measure import CLOCKS, synchronize


class PartTimer:
    """Forward and backward seconds of every part while attached (a context manager), from module hooks.

    Backward times run from a module's backward pre-hook (gradient w.r.t. its output ready) to its backward hook
    (gradients w.r.t. its inputs ready), so they are approximate; the hooks add a little overhead of their own."""

    def __init__(self, parts, clock: str = "wall", device="cpu", backward: bool = True):
        self.parts, self.clock, self.device, self.backward = list(parts), CLOCKS[clock], device, backward
        self.times = {}
        self.handles = []
        self.reset()

    def reset(self):
        self.times = {label: {"forward": 0.0, "backward": 0.0, "calls": 0} for label, _ in self.parts}

    def _now(self):
        synchronize(self.device)
        return self.clock()

    def _hooks(self, label):
        starts = {"forward": [], "backward": []}  # a stack each: a part may run inside itself

        def start(kind):
            return lambda *_: starts[kind].append(self._now())

        def stop(kind):
            def hook(*_):
                self.times[label][kind] += self._now() - starts[kind].pop()
                self.times[label]["calls"] += kind == "forward"

            return hook

        return start, stop

    def __enter__(self):
        for label, module in self.parts:
            start, stop = self._hooks(label)
            self.handles += [
                module.register_forward_pre_hook(start("forward")),
                module.register_forward_hook(stop("forward")),
            ]
            if self.backward:
                self.handles.append(module.register_full_backward_pre_hook(start("backward")))
                self.handles.append(module.register_full_backward_hook(stop("backward")))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def top_level_seconds(self) -> float:
        """Forward + backward of the parts that are not nested in another (their sum never counts time twice)."""
        return sum(v["forward"] + v["backward"] for label, v in self.times.items() if not label.startswith(" "))


def saved_for_backward(model, parts, forward, rest_label: str) -> dict[str, float]:
    """MiB of tensors that `forward()` saves for backward, by the innermost part running when each was saved (each
    storage counted once; `model`'s parameters under "parameters", tensors saved outside every part under
    `rest_label`). What a training step holds at its peak besides weights, optimizer states and short-lived
    temporaries."""
    stack, seen = [rest_label], {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen[key] = ("parameters" if key in params else stack[-1], tensor.untyped_storage().nbytes())
        return tensor

    def enter(label):
        def hook(module, args):  # a forward hook's return value would replace the module's inputs / output
            stack.append(label)

        return hook

    def leave(module, args, output):
        stack.pop()

    handles = []
    for label, module in parts:
        handles += [module.register_forward_pre_hook(enter(label)), module.register_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    totals = {}
    for label, nbytes in seen.values():
        totals[label] = totals.get(label, 0) + nbytes / 2**20
    return totals


def profile_table(fn, device="cpu", rows: int = 25) -> tuple[str, str]:
    """(torch.profiler table of one call of `fn`, the column it is sorted by: self device time on CUDA, else self
    CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = str(device).startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    with profile(activities=activities, record_shapes=False) as prof:
        fn()
        synchronize(device)
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60), sort_by
