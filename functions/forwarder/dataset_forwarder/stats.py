"""Per-invocation delivery counters, flushed as CloudWatch EMF metrics: per `target`, and per event `kind`
(`asset_event`, `dag_run`) for the counts of what happened to events."""

from __future__ import annotations

import threading
from collections import defaultdict

DELIVERED = "Delivered"
DEAD_LETTERED = "DeadLettered"
RETRIED = "Retried"
UNROUTED = "Unrouted"
DUPLICATE = "DuplicateSkipped"
LOOP_SKIPPED = "LoopSkipped"
INVALID_TARGET_CONFIG = "InvalidTargetConfig"
LATENCY = "DeliveryLatency"

NAMESPACE = "DatasetForwarder"


class Stats:
    """Thread-safe; deliveries record from worker threads, the handler flushes once per invocation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str | None, str], int] = defaultdict(int)
        self._kind_counts: dict[tuple[str, str], int] = defaultdict(int)
        self._latencies: dict[str, list[float]] = defaultdict(list)

    def count(self, metric: str, target: str | None = None, value: int = 1, *, kind: str | None = None) -> None:
        with self._lock:
            self._counts[(target, metric)] += value
            if kind is not None:
                self._kind_counts[(kind, metric)] += value

    def latency(self, target: str, milliseconds: float) -> None:
        with self._lock:
            self._latencies[target].append(round(milliseconds, 3))

    def snapshot(self) -> tuple[dict[tuple[str | None, str], int], dict[str, list[float]]]:
        with self._lock:
            return dict(self._counts), {k: list(v) for k, v in self._latencies.items()}

    def drain(self) -> tuple[dict[tuple[str | None, str], int], dict[str, list[float]]]:
        with self._lock:
            counts, latencies = dict(self._counts), {k: list(v) for k, v in self._latencies.items()}
            self._counts.clear()
            self._latencies.clear()
        return counts, latencies

    def _drain_kinds(self) -> dict[tuple[str, str], int]:
        with self._lock:
            kinds = dict(self._kind_counts)
            self._kind_counts.clear()
        return kinds

    def flush(self) -> None:
        """Print one EMF document per target (and one without) through Powertools' EphemeralMetrics."""
        from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

        counts, latencies = self.drain()
        kinds = self._drain_kinds()
        for kind in sorted({kind for kind, _ in kinds}):
            metrics = EphemeralMetrics(namespace=_namespace())
            metrics.add_dimension(name="kind", value=kind)
            for (metric_kind, name), count in sorted(kinds.items()):
                if metric_kind == kind:
                    metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
            metrics.flush_metrics()
        targets = {target for target, _ in counts} | set(latencies)
        for target in sorted(targets, key=lambda t: t or ""):
            metrics = EphemeralMetrics(namespace=_namespace())
            if target is not None:
                metrics.add_dimension(name="target", value=target)
            for (metric_target, name), count in sorted(counts.items(), key=lambda kv: kv[0][1]):
                if metric_target == target:
                    metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
            for latency in latencies.get(target, []) if target is not None else []:
                metrics.add_metric(name=LATENCY, unit=MetricUnit.Milliseconds, value=latency)
            metrics.flush_metrics()


def _namespace() -> str:
    import os

    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE
