"""pruning.measure's latency: warm-up excluded, repeats until the median is stable, spread recorded.

Timed against a fake clock that each forward pass advances by a scripted number of milliseconds, so the
stopping rule is checked exactly (real timings on a shared machine would make these tests flaky).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from pruning.measure import latency_ms, measure_latency


class Scripted:
    """A model whose forward passes take the given milliseconds on ``self.clock`` (seconds)."""

    def __init__(self, durations_ms):
        self.durations, self.now, self.calls = iter(durations_ms), 0.0, 0

    def clock(self) -> float:
        return self.now

    def __call__(self, batch):
        self.calls += 1
        self.now += next(self.durations) / 1e3


BATCH = torch.zeros(1, 3, 8, 8)


def test_warmup_is_untimed_and_a_steady_model_needs_only_the_minimum():
    model = Scripted(itertools.chain([500.0] * 5, itertools.cycle([10.0, 10.1, 10.2, 10.3])))
    stats = measure_latency(model, BATCH, clock=model.clock)
    assert stats["latency_repeats"] == 10 and model.calls == 15
    assert stats["latency_ms"] == pytest.approx(10.1) and stats["latency_iqr_ms"] == pytest.approx(0.175)  # quartiles 10.025, 10.2


def test_repeats_until_the_medians_confidence_interval_is_within_2_percent():
    """10 and 11 ms alternating: median 10.5, IQR 1; 1.57 * 1 / sqrt(n) <= 0.21 first holds at n = 56."""
    model = Scripted(itertools.cycle([10.0, 11.0]))
    stats = measure_latency(model, BATCH, warmup=0, clock=model.clock)
    assert stats["latency_repeats"] == 56
    assert stats["latency_ms"] == pytest.approx(10.5) and stats["latency_iqr_ms"] == pytest.approx(1.0)


def test_a_noisy_or_slow_model_stops_at_max_repeats_or_the_time_budget():
    noisy = Scripted(itertools.cycle([10.0, 20.0]))
    assert measure_latency(noisy, BATCH, warmup=0, max_repeats=50, clock=noisy.clock)["latency_repeats"] == 50
    slow = Scripted(itertools.cycle([1000.0, 1300.0]))  # 4 passes: 4.6 s, 5: 5.6 s, 6: 6.9 s >= 6 s
    assert measure_latency(slow, BATCH, warmup=0, min_repeats=4, budget_s=6.0, clock=slow.clock)["latency_repeats"] == 6


def test_latency_ms_keeps_its_fixed_repeats():
    model = Scripted([100.0, 100.0, 5.0, 7.0, 6.0])
    assert latency_ms(model, BATCH, warmup=2, repeats=3, clock=model.clock) == pytest.approx(6.0)
    assert model.calls == 5
