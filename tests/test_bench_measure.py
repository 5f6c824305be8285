"""slam_hf.bench.measure and slam_hf.bench.machine: the timing loops, peak-memory probes, parameter and cache counts
that `slam-hf bench` and the scripts in benchmarks/ share. Small and fast: no model is built."""

import re
import time
from pathlib import Path

import pytest
import torch

from slam_hf.bench.machine import cpu_name, git_state, load_average, software_versions
from slam_hf.bench.measure import (
    PeakMemory,
    cache_nbytes,
    count_parameters,
    interleave,
    interleaved,
    reset_peak_rss,
    rss_status,
    summarize,
    timed,
)

MIB = 2**20


def test_summarize():
    stats = summarize([3.0, 1.0, 2.0, 10.0])
    assert stats == {"median_s": 2.5, "min_s": 1.0, "max_s": 10.0, "times_s": [3.0, 1.0, 2.0, 10.0]}


def test_interleave_warms_up_then_alternates_the_order():
    calls = []

    def sampler(name, samples):
        return lambda: calls.append(name) or samples

    samples = interleave({"a": sampler("a", 1.0), "b": sampler("b", [2.0, 3.0])}, warmup=2, repeats=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [1.0, 1.0, 1.0], "b": [2.0, 3.0] * 3}  # a list of samples is one sample per element


def test_interleaved_times_each_call():
    stats = interleaved({"short": lambda: time.sleep(0.005), "long": lambda: time.sleep(0.03)}, 1, 3)
    assert len(stats["short"]["times_s"]) == len(stats["long"]["times_s"]) == 3
    assert 0.004 < stats["short"]["median_s"] < stats["long"]["median_s"]
    assert stats["long"]["min_s"] >= 0.029
    # process time does not count sleeping
    assert timed(lambda: time.sleep(0.03), clock="process") < 0.02 < timed(lambda: time.sleep(0.03), clock="wall")


needs_peak_reset = pytest.mark.skipif(
    rss_status() is None or not reset_peak_rss(), reason="needs /proc/self/status and clear_refs (Linux)"
)


@needs_peak_reset
def test_peak_memory_of_a_phase_on_cpu():
    big = torch.ones(256 * MIB // 4)  # an earlier, larger peak
    del big
    kept = []
    reset = PeakMemory("cpu", reset=True).start()
    # After the reset: a heap trim at the reset's start may drop the resident set below a baseline taken before it.
    plain = PeakMemory("cpu").start()
    kept.append(torch.ones(64 * MIB // 4))  # touched, so resident
    reading = reset.read()
    assert reading["exact"] and reading["peak"] == reading["before"] + reading["delta"]
    assert 60 * MIB < reading["delta"] < 128 * MIB, reading  # the phase alone: the freed 256 MiB does not count
    delta, reason = plain.peak()
    assert reason is None and delta >= 60 * MIB
    del kept


def test_peak_memory_reports_why_it_cannot_measure(monkeypatch):
    import slam_hf.bench.measure as measure

    monkeypatch.setattr(measure, "rss_status", lambda: None)
    memory = PeakMemory("cpu").start()
    delta, reason = memory.peak()
    assert delta is None and "/proc/self/status" in reason
    with pytest.raises(RuntimeError, match="/proc/self/status"):
        memory.read()


def test_count_parameters_counts_a_tied_weight_once():
    embed, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    assert count_parameters(torch.nn.ModuleList([embed, head])) == 40
    assert count_parameters(torch.nn.Linear(4, 3)) == 15


def test_cache_nbytes_counts_each_storage_once():
    keys = torch.zeros(2, 4, 8)  # 256 bytes
    values = torch.zeros(2, 4, 8, dtype=torch.float64)  # 512 bytes

    class Layer:
        def __init__(self):
            self.keys, self.values = keys, values
            self.view = keys[:, :2]  # a view of the keys' storage
            self.position = torch.tensor(7)  # a 0-dim counter, not state

    cache = {"layers": [Layer(), Layer()], "name": "cache", "again": (keys,)}
    assert cache_nbytes(cache) == 256 + 512
    assert cache_nbytes(None) == 0


def test_machine_description():
    versions = software_versions()
    assert versions["torch"] == torch.__version__ and versions["python"].count(".") == 2
    assert cpu_name() and isinstance(cpu_name(), str)
    load = load_average()
    assert load is None or (len(load) == 3 and min(load) >= 0)
    state = git_state(Path(__file__).resolve().parent.parent)
    assert state == "unknown" or state == "" or re.match(r"[0-9a-f]{4,}", state), state
