"""``GET /metrics``: the gateway's state in Prometheus text format.

Everything is read at scrape time from the engine, the gateway's fleet counters
(:mod:`pm.fleet_counters`: in a cluster, this gateway's shard fleets, so a sum over the
gateways gives the cluster's), the gateway's health and the HTTP layer's own counters (a
custom :class:`~prometheus_client.registry.Collector`): the dispatch path increments nothing
for the metrics' sake. Each app has its own :class:`~prometheus_client.CollectorRegistry`, so
several gateways can run in one process (tests) without their metrics mixing.

Cost of a scrape: one pass over the jobs held in memory, plus one over the tasks of each
running job (a finished job's task counts cannot change, so they are counted once and kept
while the job is held).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..fleet_counters import gateway_fleet_counters
from ..schemas import JOB_STATUSES, TASK_STATUSES, AnswerPathHealth, Health

if TYPE_CHECKING:
    from ..engine import Engine
    from ..jobs import Job

# Reported even at 0, so a dashboard or an alert sees the series before the first drop.
DROP_REASONS = (
    "malformed",
    "unexpected_id",
    "foreign_topic",
    "answer_overflow",
    "oversized",
    "bad_status",
)

# Reported even at 0, like the drops.
REJECT_REASONS = ("cross_origin", "content_type")


class HttpCounters:
    """What the HTTP layer counts itself: written by request handlers, read by scrapes."""

    def __init__(self) -> None:
        self.watchers = 0
        self.unauthorized = 0
        # Refusals by the limit that refused them (``max_jobs_running``...).
        self.refused: Counter[str] = Counter()
        # Clients disconnected for not reading (http.send_timeout; pm.http.server).
        self.send_timeouts = 0
        # Requests refused before any handler ran, by reason (``cross_origin`` 403,
        # ``content_type`` 415): a browser being made to talk to the gateway shows up here.
        self.rejected: Counter[str] = Counter()

    def count_send_timeout(self) -> None:
        self.send_timeouts += 1


class GatewayCollector(Collector):
    """Builds every metric family from live state when scraped.

    Args:
      engine: jobs, tasks and the fleet's counters.
      health: the broker connection and restart counts (``Gateway.health``).
      http: the HTTP layer's counters.
    """

    def __init__(self, engine: Engine, health: Callable[[], Health], http: HttpCounters) -> None:
        self._engine = engine
        self._health = health
        self._http = http
        # Task counts of finished jobs by job id, valid while the job is held in memory.
        self._finished_counts: dict[int, Counter[str]] = {}

    def collect(self) -> Iterator[Metric]:
        engine, health = self._engine, self._health()
        # This gateway's: in a cluster, summed over the shards it serves and served.
        fleet = gateway_fleet_counters(engine)
        jobs: Counter[str] = Counter()
        tasks: Counter[str] = Counter()
        held: set[int] = set()
        for job in engine.jobs():
            held.add(job.id)
            jobs[job.record.status] += 1
            tasks.update(self._task_counts(job))
        # Forget the counts of jobs the engine no longer holds (deleted, aged out).
        for job_id in self._finished_counts.keys() - held:
            del self._finished_counts[job_id]

        yield _by_label(
            GaugeMetricFamily("pm_jobs", "Jobs held in memory, by status", labels=["status"]),
            JOB_STATUSES,
            jobs,
        )
        yield _by_label(
            GaugeMetricFamily(
                "pm_tasks", "Tasks of the jobs held in memory, by status", labels=["status"]
            ),
            TASK_STATUSES,
            tasks,
        )
        yield GaugeMetricFamily("pm_job_actors", "Running job actors", value=engine.jobs_running)
        yield GaugeMetricFamily("pm_device_actors", "Live device actors", value=fleet.live_actors)
        yield GaugeMetricFamily(
            "pm_tasks_in_flight", "Requests published and awaiting an answer", value=fleet.in_flight
        )
        yield CounterMetricFamily(
            "pm_tasks_dispatched", "Requests published to devices", value=fleet.published
        )
        yield CounterMetricFamily(
            "pm_tasks_answered", "Final answers received from devices", value=fleet.answered
        )
        yield CounterMetricFamily(
            "pm_requests_republished",
            "In-flight requests re-sent (their device or the broker connection came back)",
            value=fleet.republished,
        )
        yield GaugeMetricFamily(
            "pm_store_writable",
            "1 while the job store's commits work, 0 while the storage refuses writes",
            value=int(engine.store.fault is None),
        )
        yield CounterMetricFamily(
            "pm_store_failed_commits",
            "Store commits the storage refused (disk full, read-only...), each retried",
            value=engine.store.failed_commits,
        )
        dropped = health.dropped_messages
        yield _by_label(
            CounterMetricFamily(
                "pm_dropped_messages",
                "Messages on answer topics dropped, by reason",
                labels=["reason"],
            ),
            (*DROP_REASONS, *sorted(dropped.keys() - set(DROP_REASONS))),
            dropped,
        )
        yield GaugeMetricFamily(
            "pm_broker_connected",
            "1 while the MQTT connection is up with its subscriptions restored",
            value=int(health.broker_connected),
        )
        yield CounterMetricFamily(
            "pm_broker_reconnects", "MQTT connections lost", value=health.broker_reconnects
        )
        if health.embedded_broker_restarts is not None:
            yield CounterMetricFamily(
                "pm_embedded_broker_restarts",
                "Restarts of the embedded broker's process",
                value=health.embedded_broker_restarts,
            )
        yield from _answer_path_metrics(health.answer_path)
        http = self._http
        yield GaugeMetricFamily(
            "pm_websocket_watchers", "Open WebSocket watchers", value=http.watchers
        )
        yield CounterMetricFamily(
            "pm_http_unauthorized", "Requests refused with 401", value=http.unauthorized
        )
        yield CounterMetricFamily(
            "pm_http_send_timeouts",
            "Clients disconnected for accepting nothing within http.send_timeout",
            value=http.send_timeouts,
        )
        yield _by_label(
            CounterMetricFamily(
                "pm_http_limit_refusals",
                "Requests refused by a configured limit, by limit",
                labels=["limit"],
            ),
            sorted(http.refused),
            http.refused,
        )
        yield _by_label(
            CounterMetricFamily(
                "pm_http_rejected",
                "Requests refused by the cross-site guards: cross_origin (403), content_type (415)",
                labels=["reason"],
            ),
            REJECT_REASONS,
            http.rejected,
        )

    def _task_counts(self, job: Job) -> Counter[str]:
        if not job.final:
            return Counter(task.status for task in job.record.tasks)
        counts = self._finished_counts.get(job.id)
        if counts is None:
            counts = self._finished_counts[job.id] = Counter(
                task.status for task in job.record.tasks
            )
        return counts


def _answer_path_metrics(answer_path: AnswerPathHealth | None) -> Iterator[Metric]:
    """The answer-path probe's series; none without a probe (an app with no MQTT client)."""
    if answer_path is None:
        return
    yield GaugeMetricFamily(
        "pm_answer_path_ok",
        "1 unless the last answer-path probe was lost (the broker stopped delivering answers)",
        value=int(answer_path.ok),
    )
    if answer_path.last_round_trip_ms is not None:
        yield GaugeMetricFamily(
            "pm_answer_probe_round_trip_seconds",
            "Round trip of the last answer-path probe that came back",
            value=answer_path.last_round_trip_ms / 1000,
        )
    yield CounterMetricFamily(
        "pm_answer_probes", "Answer-path probes published", value=answer_path.probes_sent
    )
    yield CounterMetricFamily(
        "pm_answer_probes_lost",
        "Answer-path probes that did not come back",
        value=answer_path.probes_lost,
    )
    yield CounterMetricFamily(
        "pm_answer_path_resubscribes",
        "Re-subscriptions made because an answer-path probe was lost",
        value=answer_path.resubscribes,
    )
    yield CounterMetricFamily(
        "pm_answer_path_reconnects",
        "Reconnects made because answer-path probes were lost after re-subscribing",
        value=answer_path.reconnects,
    )


Family = TypeVar("Family", GaugeMetricFamily, CounterMetricFamily)


def _by_label(
    family: Family, labels: tuple[str, ...] | list[str], values: Counter[str] | dict[str, int]
) -> Family:
    for label in labels:
        family.add_metric([label], values.get(label, 0))
    return family


def open_registry(
    engine: Engine, health: Callable[[], Health], http: HttpCounters
) -> CollectorRegistry:
    """A registry of its own holding only this gateway's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(engine, health, http))
    return registry
