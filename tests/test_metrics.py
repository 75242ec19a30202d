"""The buffered per-request metrics (frontend/metrics.py): a flush writes exactly what writing
each observation at once would have written."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from frontend import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 7.5, 0.0, 0.001]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_flush_writes_what_observing_each_value_writes() -> None:
    direct, buffered = CollectorRegistry(), CollectorRegistry()
    series = {}
    for registry in (direct, buffered):
        series[id(registry)] = (
            Histogram("lat", "latency", ["model"], buckets=BUCKETS, registry=registry),
            Counter("answers", "answers", ["model"], registry=registry),
            Gauge("inflight", "in flight", ["model"], registry=registry),
        )
    hist, count, gauge = series[id(direct)]
    for value in VALUES:
        hist.labels("m").observe(value)
        count.labels("m").inc()
    gauge.labels("m").inc(3)
    gauge.labels("m").dec(1)
    hist, count, gauge = series[id(buffered)]
    for value in VALUES:
        metrics.observe(hist.labels("m"), value)
        metrics.add(count.labels("m"))
    metrics.add(gauge.labels("m"), 3)
    metrics.add(gauge.labels("m"), -1)
    assert _samples(buffered)[("answers_total", (("model", "m"),))] == 0.0  # not yet written
    metrics.flush()
    assert _samples(buffered) == _samples(direct)
    metrics.flush()  # nothing left: a second flush writes nothing twice
    assert _samples(buffered) == _samples(direct)


class _Plain:
    """A histogram child without prometheus-client's internals: observed one by one."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, value: float) -> None:
        self.seen.append(value)


def test_a_histogram_without_the_expected_internals_is_observed_value_by_value() -> None:
    child = _Plain()
    for value in VALUES:
        metrics.observe(child, value)
    metrics.flush()
    assert child.seen == VALUES
