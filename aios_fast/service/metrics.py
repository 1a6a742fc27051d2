"""Prometheus metrics without per-task locks: state lives in plain counters and
``Histogram`` objects updated on the event loop; a collector turns them into metric
families only when ``/metrics`` is scraped (prometheus_client's text format).

``merge_expositions`` adds up the expositions of several worker processes, so a block
with N executor workers serves one ``/metrics`` whose figures are the whole block's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Histogram",
    "Registry",
    "counter",
    "gauge",
    "histogram",
    "merge_expositions",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: sub-millisecond hops up to slow model calls.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    """Counts per bucket (upper bounds inclusive, as Prometheus' ``le``) and a sum.
    ``observe`` is a bisect and two additions: cheap enough to call per task."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs, ending with +Inf."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


def counter(name: str, doc: str, labels: tuple[str, ...], rows: Iterable[tuple]) -> Metric:
    """A counter family; each row is (*label values, value)."""
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for *values, value in rows:
        family.add_metric(list(values), value)
    return family


def gauge(name: str, doc: str, labels: tuple[str, ...], rows: Iterable[tuple]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for *values, value in rows:
        family.add_metric(list(values), value)
    return family


def histogram(name: str, doc: str, labels: tuple[str, ...], rows: Iterable[tuple]) -> Metric:
    """A histogram family; each row is (*label values, Histogram)."""
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for *values, hist in rows:
        family.add_metric(list(values), hist.buckets(), hist.sum)
    return family


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect


class Registry:
    """A private registry (so several servers can share a process, as tests do) whose
    families come from ``collect`` callables, evaluated at scrape time."""

    def __init__(self, *collects: Callable[[], Iterable[Metric]], process: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for collect in collects:
            self.registry.register(_Collector(collect))
        if process:  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            ProcessCollector(registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def merge_expositions(texts: Iterable[str], max_gauges: frozenset[str] = frozenset()) -> bytes:
    """One exposition adding up several processes' ones, sample by sample (same name and
    labels). Counters, histograms and gauges add up; gauges named in ``max_gauges``
    (states every worker reports alike, such as "instance up") take the maximum."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)  # the first one gives type and help
            table = values.setdefault(family.name, {})
            keep_max = family.name in max_gauges
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in table and keep_max:
                    table[key] = max(table[key], sample.value)
                else:
                    table[key] = table.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name, family in families.items():
        shown = f"{name}_total" if family.type == "counter" else name  # as generate_latest
        lines.append(f"# HELP {shown} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {shown} {family.type}")
        for (sample_name, labels), value in values[name].items():
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            body = f"{sample_name}{{{label_text}}}" if label_text else sample_name
            lines.append(f"{body} {_number(value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value == int(value) and abs(value) < 2**53:
        return f"{int(value)}.0"
    return repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
