"""slam_hf.bench.diagnostics: part timers from module hooks, tensors saved for backward by part, profiler tables.
Small and fast: a two-layer MLP stands in for a model."""

import time

import torch
from torch import nn

from slam_hf.bench.diagnostics import PartTimer, profile_table, saved_for_backward


class Slow(nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        time.sleep(self.seconds)
        return self.linear(x)


def model():
    torch.manual_seed(0)
    return nn.Sequential(Slow(0.01), nn.ReLU(), Slow(0.03))


def test_part_timer_times_each_part_and_detaches():
    net = model()
    parts = [("first", net[0]), ("  first linear", net[0].linear), ("second", net[2])]
    x = torch.randn(4, 8, requires_grad=True)
    with PartTimer(parts, clock="wall") as timer:
        net(x).sum().backward()
        timer.reset()
        net(x).sum().backward()
        net(x)
    times = timer.times
    assert [times[label]["calls"] for label, _ in parts] == [2, 2, 2]
    assert 0.02 <= times["first"]["forward"] < times["second"]["forward"]
    assert times["second"]["forward"] >= 0.06
    assert times["first"]["backward"] > 0 and times["second"]["backward"] > 0
    assert times["  first linear"]["forward"] < times["first"]["forward"]
    assert timer.top_level_seconds() == sum(times[p]["forward"] + times[p]["backward"] for p in ("first", "second"))
    net(x)  # hooks removed on exit: nothing more is counted
    assert times["first"]["calls"] == 2


def test_part_timer_forward_only_under_inference_mode():
    net = model()
    with torch.inference_mode(), PartTimer([("all", net)], clock="process", backward=False) as timer:
        net(torch.randn(2, 8))
    assert timer.times["all"]["calls"] == 1 and timer.times["all"]["backward"] == 0.0
    assert timer.times["all"]["forward"] < 0.03  # process time does not count the sleeps


def test_saved_for_backward_by_part():
    net = model()
    x = torch.randn(1024, 8)
    saved = saved_for_backward(net, [("first", net[0]), ("second", net[2])], lambda: net(x).sum(), "rest")
    mib = 1024 * 8 * 4 / 2**20
    # The first linear saves its input x (its weight is not needed: x needs no gradient); the ReLU, outside every
    # part, saves its output, which the second linear saves again (one storage, counted once, where first saved),
    # together with its weight (needed for the gradient of its input).
    assert saved == {"first": mib, "rest": mib, "parameters": 8 * 8 * 4 / 2**20}


def test_profile_table():
    table, sort_by = profile_table(lambda: torch.randn(64, 64) @ torch.randn(64, 64), rows=3)
    assert sort_by == "self_cpu_time_total" and "aten::mm" in table
