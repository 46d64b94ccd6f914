"""``GET /metrics``: Prometheus text format (prometheus-client), read live from the counters.

Nothing is counted twice: a custom collector reads the engine's plain integer counters
(``engine.stats``), the MI request counts, the event bus and the loop-lag monitor at scrape
time, so the SIP hot path only bumps ints.  Metric families:

* ``sipdlg_dialogs_active``, ``sipdlg_dialogs_early`` (gauges, OpenSIPS active/early_dialogs),
  ``sipdlg_dialogs_in_memory`` (the hash table, state-5 dialogs in ``delete_delay`` included),
  ``sipdlg_dialogs_processed_total``, ``..._expired_total``, ``..._failed_total``;
* ``sipdlg_dialogs_ended_total{reason}`` (from the ended-call records; "none" for failed calls
  and silent expiries), ``sipdlg_ended_records`` (records held in memory);
* ``sipdlg_sip_requests_total{direction,method}``, ``sipdlg_sip_replies_total{direction,class}``
  (``in``: received, ``out``: sent, retransmissions included; unusual methods are "other"),
  ``sipdlg_sip_retransmissions_total``, ``sipdlg_sip_parse_errors_total`` and the other core
  counters as ``sipdlg_sip_<name>_total``;
* ``sipdlg_mi_requests_total{method,outcome}`` (outcome ok, error, bad_params, failed,
  not_found);
* ``sipdlg_events_published_total``, ``sipdlg_event_consumers{kind}``,
  ``sipdlg_events_{delivered,dropped,failed}_total{kind,consumer}``;
* ``sipdlg_event_loop_lag_seconds`` (last sample), ``..._lag_max_seconds`` and a histogram
  of samples;
* and what each subsystem adds itself (a ``MetricSource``): the collector policy
  (app/gc_policy.py) ``sipdlg_gc_pause_seconds`` (histogram), ``sipdlg_gc_pause_max_seconds``,
  ``sipdlg_memory_allocated_blocks`` and its ``..._budget``, ``sipdlg_gc_rescans_total``,
  ``sipdlg_gc_rescan_freed_objects_total``; the store (app/store/persistence.py), with a
  database, ``sipdlg_db_commits_total``, ``sipdlg_db_rows_written_total``,
  ``sipdlg_db_write_failures_total``, ``sipdlg_db_commit_seconds`` (histogram),
  ``sipdlg_db_uncommitted_dialogs``, ``sipdlg_db_held_messages``, ``sipdlg_db_writer{kind}``
  and ``sipdlg_db_writer_restarts_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from engine.message import KNOWN_METHODS

from .histogram import LOOP_BUCKETS, Histogram

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_INTERVAL = 0.25


class LoopLag:
    """Samples how late the event loop wakes a sleeper: the wait any SIP message would see."""

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self.hist = Histogram(LOOP_BUCKETS)
        self._task: asyncio.Task[None] | None = None

    def observe(self, lag: float) -> None:
        self.hist.observe(lag)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, loop.time() - start - self.interval))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc)
    fam.add_metric([], hist.cumulative(), hist.total)
    return fam


def _method(name: str | bytes) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text if text in KNOWN_METHODS else "other"


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class MetricSource(Protocol):
    """A subsystem that exports its own metrics (the store, the collector policy)."""

    def metrics(self) -> Iterator[Metric]: ...


class SipdlgCollector(Collector):
    def __init__(self, life: Lifecycle) -> None:
        self.life = life

    def collect(self) -> Iterator[Metric]:
        life = self.life
        engine = life.engine
        st = engine.stats

        yield gauge(
            "sipdlg_dialogs_active",
            "Confirmed dialogs (OpenSIPS active_dialogs)",
            st.active_dialogs,
        )
        yield gauge(
            "sipdlg_dialogs_early", "Early dialogs (OpenSIPS early_dialogs)", st.early_dialogs
        )
        yield gauge(
            "sipdlg_dialogs_in_memory",
            "Dialogs in the table, state-5 ones kept by delete_delay included",
            len(engine.dialogs),
        )
        yield counter("sipdlg_dialogs_processed", "Dialogs created", st.processed_dialogs)
        yield counter(
            "sipdlg_dialogs_unexpected_transitions",
            "(state, event) pairs the dialog table neither allows nor expects",
            st.unexpected_transitions,
        )
        yield counter(
            "sipdlg_dialogs_expired", "Dialogs whose lifetime ran out", st.expired_dialogs
        )
        yield counter(
            "sipdlg_dialogs_failed", "Calls that failed (4xx-6xx, CANCEL)", st.failed_dialogs
        )
        ended = CounterMetricFamily(
            "sipdlg_dialogs_ended", "Dialogs that reached state 5, by end reason", labels=["reason"]
        )
        for reason, n in sorted(life.ended_by_reason.items()):
            ended.add_metric([reason], n)
        yield ended
        yield gauge("sipdlg_ended_records", "Ended-call records held in memory", len(life.records))

        reqs = CounterMetricFamily(
            "sipdlg_sip_requests",
            "SIP requests by direction and method",
            labels=["direction", "method"],
        )
        sources: tuple[tuple[str, Counter[Any]], ...] = (
            ("in", st.requests_by_method),
            ("out", st.sent_requests_by_method),
        )
        for direction, source in sources:
            merged: Counter[str] = Counter()
            for method, n in list(source.items()):
                merged[_method(method)] += n
            for method, n in sorted(merged.items()):
                reqs.add_metric([direction, method], n)
        yield reqs
        replies = CounterMetricFamily(
            "sipdlg_sip_replies",
            "SIP replies by direction and status class",
            labels=["direction", "class"],
        )
        for cls, n in sorted(st.replies_by_class.items()):
            replies.add_metric(["in", cls], n)
        for digit, n in sorted(st.sent_replies_by_class.items()):
            replies.add_metric(["out", f"{digit.decode('ascii', 'replace')}xx"], n)
        yield replies
        for name, value in st.core_stats().items():
            yield counter(
                f"sipdlg_sip_{name}", f"Core counter {name} (get_statistics core:)", value
            )

        mi = CounterMetricFamily(
            "sipdlg_mi_requests", "MI calls by method and outcome", labels=["method", "outcome"]
        )
        for (method, outcome), n in sorted(life.mi_requests.items()):
            mi.add_metric([method, outcome], n)
        yield mi

        bus = life.bus
        yield counter(
            "sipdlg_events_published", "Dialog state-change events published", bus.published
        )
        consumers = GaugeMetricFamily(
            "sipdlg_event_consumers", "Connected event consumers", labels=["kind"]
        )
        kinds = Counter(c.kind for c in bus.consumers)
        for kind in ("sse", "webhook"):
            consumers.add_metric([kind], kinds.get(kind, 0))
        yield consumers
        fams = [
            CounterMetricFamily(
                f"sipdlg_events_{what}", f"Events {what} per consumer", labels=["kind", "consumer"]
            )
            for what in ("delivered", "dropped", "failed")
        ]
        for (kind, name), values in sorted(bus.counts().items()):
            for fam, value in zip(fams, values, strict=True):
                fam.add_metric([kind, name], value)
        yield from fams

        lag = life.lag.hist
        yield gauge("sipdlg_event_loop_lag_seconds", "Last event-loop lag sample", lag.last)
        yield histogram("sipdlg_event_loop_lag_samples_seconds", "Event-loop lag samples", lag)
        yield gauge("sipdlg_event_loop_lag_max_seconds", "Longest event-loop lag so far", lag.max)

        for subsystem in life.metric_sources:
            yield from subsystem.metrics()


def make_registry(life: Lifecycle) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SipdlgCollector(life))
    return registry


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Any]:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return metrics
