"""Prometheus metrics of a running service, read from the Hub at scrape time.

Counters and gauges are collected when ``/metrics`` is scraped, from the Hub's own counters, so the
fan-out path pays nothing for them. The one histogram, publish-to-send latency, is observed once per
flush of the sockets that have messages (the age of the oldest message written), not once per delivery.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .service import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServiceCollector(Collector):
    def __init__(self, service: Service[Any]) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        hub = svc.hub
        stats = hub.stats
        yield GaugeMetricFamily("xia_connections", "Open WebSocket connections", value=svc.connection_count)
        yield GaugeMetricFamily("xia_subscriptions", "Active subscriptions (connection x class)",
                                value=sum(len(c.members) for c in hub.connections.values()))
        yield GaugeMetricFamily("xia_views", "Distinct views (subscribers sharing scope, catalog, ACL)",
                                value=hub.view_count())
        yield GaugeMetricFamily("xia_queue_depth", "Messages waiting in outbound queues",
                                value=sum(len(c.queue) for c in hub.connections.values()))
        yield CounterMetricFamily("xia_changes", "Changes published", value=stats.changes)
        yield CounterMetricFamily("xia_deliveries", "Messages queued to subscribers", value=stats.deliveries)
        yield CounterMetricFamily("xia_encodings", "Messages encoded (once per view and change)",
                                  value=stats.encodings)
        yield CounterMetricFamily("xia_lags", "Times a subscriber's queue overflowed and it went on from the journal",
                                  value=stats.lags)
        yield CounterMetricFamily("xia_replayed", "Messages replayed from the journal", value=stats.replayed)
        yield CounterMetricFamily("xia_history_gone", "Replays that found the journal no longer reaching back",
                                  value=stats.history_gone)
        yield CounterMetricFamily("xia_snapshot_passes", "Reads of a class's document store for a snapshot "
                                  "(each shared by the subscribers of one view asking together)",
                                  value=stats.snapshot_passes)
        yield CounterMetricFamily("xia_snapshot_documents", "Snapshot documents queued to subscribers",
                                  value=stats.snapshot_documents)
        yield CounterMetricFamily("xia_snapshot_resets", "Snapshot subscribers whose position was gone, sent reset "
                                  "and a fresh snapshot", value=stats.resets)
        yield CounterMetricFamily("xia_view_errors", "Changes a view failed to evaluate", value=stats.view_errors)
        yield GaugeMetricFamily("xia_gc_frozen_objects", "Objects in the garbage collector's permanent generation "
                                "(gc_freeze_interval): they follow connections and journal; growth without bound "
                                "means something leaks reference cycles", value=gc.get_freeze_count())
        yield CounterMetricFamily("xia_gc_freezes", "Moves of long-lived objects out of the collector's passes",
                                  value=svc.collector.freezes)
        collections = CounterMetricFamily("python_gc_collections", "Collections of each generation",
                                          labels=["generation"])
        for generation, stat in enumerate(gc.get_stats()):
            collections.add_metric([str(generation)], stat["collections"])
        yield collections
        yield CounterMetricFamily("xia_refusals", "Connections refused or closed with an error code",
                                  value=svc.refusals)


class Metrics:
    """The registry of one service: collected counters plus the latency histogram."""

    def __init__(self, service: Service[Any]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ServiceCollector(service))
        # the standard process_* (CPU, memory, open files) and python_info metrics every exporter offers
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.send_latency = Histogram(
            "xia_publish_to_send_seconds",
            "Time from publish to the socket writes carrying it (oldest message of each flush)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
