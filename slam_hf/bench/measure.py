"""How `slam-hf bench` and the scripts in benchmarks/ measure: clocks and interleaved timing loops, peak memory of a
phase (the process's peak resident set on CPU, the allocator's peak on CUDA), parameter counts and cache bytes.

    stats = interleaved({"slam": step_a, "llama": step_b}, warmup=2, repeats=5, clock="process")
    stats["slam"]["median_s"], stats["slam"]["min_s"]

    memory = PeakMemory("cpu", reset=True).start()   # gc + malloc_trim + VmHWM reset, then the baseline
    step()
    memory.read()                                     # {"before": ..., "peak": ..., "delta": ..., "exact": True}

Not remote code.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping

import torch

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
# For a memory-measuring subprocess on glibc: tensors above 64 KiB are mmap'ed and go back to the OS when freed, so
# the resident set follows the live tensors instead of keeping freed heap pages.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# --------------------------------------------------------------------------------------------------------------
# timing


def synchronize(device) -> None:
    """Wait for queued CUDA work, so that a clock read after it covers the work (a no-op elsewhere)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], clock: str = "wall", device="cpu") -> float:
    """Seconds one call of `fn` takes on `clock` ("wall": perf_counter, "process": CPU time of this process)."""
    now = CLOCKS[clock]
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def summarize(times) -> dict:
    """median_s, min_s, max_s and the samples (times_s) of a list of seconds."""
    times = list(times)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def interleave(samplers: Mapping[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list]:
    """Call every sampler `warmup` times untimed, then `repeats` rounds of all of them, in the given order and reversed
    every other round, so that a slow period of a shared machine hits every variant alike. A sampler returns one
    sample or a list of samples (e.g. one per decode step); returns {name: every sample of the timed rounds}."""
    for sample in samplers.values():
        for _ in range(warmup):
            sample()
    samples = {name: [] for name in samplers}
    order = list(samplers)
    for round_index in range(repeats):
        for name in order if round_index % 2 == 0 else reversed(order):
            result = samplers[name]()
            samples[name].extend(result if isinstance(result, list) else [result])
    return samples


def interleaved(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int, *, clock="wall", device="cpu"):
    """`interleave` of one timed call per sample: {name: summarize(seconds)}."""
    samplers = {name: (lambda fn=fn: timed(fn, clock, device)) for name, fn in fns.items()}
    for fn in fns.values():  # warm-up untimed, then settle the device before the first timed call
        for _ in range(warmup):
            fn()
    synchronize(device)
    return {name: summarize(times) for name, times in interleave(samplers, 0, repeats).items()}


# --------------------------------------------------------------------------------------------------------------
# memory


def rss_status() -> dict | None:
    """VmRSS (resident now) and VmHWM (peak resident) of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}
    except (OSError, KeyError, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM := VmRSS) with `echo 5 > /proc/self/clear_refs`; False where the
    kernel does not allow it (not Linux, or restricted)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc malloc_trim), so RSS counts live memory."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def max_rss_bytes() -> int:
    """The process's peak resident set since it started (ru_maxrss, KiB on Linux), in bytes."""
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory of a phase above the baseline taken at `start()`.

    CUDA: the allocator's peak (`max_memory_allocated`, reset at start) above `memory_allocated` at start. CPU: the
    process's peak resident set (VmHWM) above its resident set at start. With `reset=True` the start also collects
    garbage and trims the heap (and empties the CUDA cache), and on CPU resets VmHWM, so the peak belongs to the
    phase alone; where VmHWM cannot be reset, before and peak are both `ru_maxrss` and the delta is a lower bound
    (`exact` False)."""

    def __init__(self, device: str, *, reset: bool = False):
        self.device = str(device)
        self.reset = reset
        self.baseline = None
        self.exact = True

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def start(self):
        if self.cuda:
            synchronize(self.device)
            if self.reset:
                gc.collect()
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return self
        if self.reset:
            trim_heap()
            self.exact = reset_peak_rss()
        if not self.exact:
            self.baseline = max_rss_bytes()
            return self
        status = rss_status()
        self.baseline = None if status is None else status["VmRSS"]
        return self

    def _peak_bytes(self):
        if self.cuda:
            synchronize(self.device)
            return torch.cuda.max_memory_allocated()
        if not self.exact:
            return max_rss_bytes()
        status = rss_status()
        return None if status is None else status["VmHWM"]

    def peak(self):
        """(bytes above the baseline, None), or (None, the reason it cannot be read)."""
        peak = self._peak_bytes()
        if peak is None or self.baseline is None:
            return None, "needs /proc/self/status (Linux) to read the peak resident set"
        return peak - self.baseline, None

    def read(self) -> dict:
        """{"before", "peak", "delta"} in bytes and whether the peak is exact; raises where it cannot be read."""
        delta, reason = self.peak()
        if delta is None:
            raise RuntimeError(reason)
        return {"before": self.baseline, "peak": self.baseline + delta, "delta": delta, "exact": self.exact}


# --------------------------------------------------------------------------------------------------------------
# sizes


def count_parameters(module: torch.nn.Module) -> int:
    """Parameters of a module; `parameters()` yields a tied weight once, so tied embeddings count once."""
    return sum(p.numel() for p in module.parameters())


def _tensors_held(obj, found: dict, seen: set, depth: int = 0):
    """Every tensor reachable from a cache object through its attributes, lists, tuples and dicts, keyed by the
    storage it lives in (so views and repeated references count once)."""
    if depth > 8 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        # A 0-dim tensor is bookkeeping, not state (cache state has a batch dimension): a position counter that
        # does not grow with the tokens, e.g. the int64 `cumulative_length_linear` every LinearAttentionLayer
        # (Jamba's Mamba layers) holds in newer transformers (5.25; not 5.10.1), StaticLayer.cumulative_length.
        if obj.dim() == 0:
            return
        storage = obj.untyped_storage()
        key = (obj.device, storage.data_ptr()) if storage.data_ptr() else ("empty", id(obj))
        found[key] = max(found.get(key, 0), storage.nbytes())
        return
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.nn.Module, torch.dtype, torch.device)):
        return
    from transformers import PretrainedConfig

    if isinstance(obj, PretrainedConfig):
        return
    if isinstance(obj, Mapping):
        items = obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return
    for item in items:
        _tensors_held(item, found, seen, depth + 1)


def cache_nbytes(cache) -> int:
    """Bytes of every distinct tensor storage a cache object holds (its state tensors; 0-dim counters excluded)."""
    found = {}
    _tensors_held(cache, found, set())
    return sum(found.values())
