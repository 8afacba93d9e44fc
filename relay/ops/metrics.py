"""``GET /metrics``: the typed status (:mod:`relay.core.status`) in the Prometheus text format.

One scrape takes one status snapshot and a custom collector turns it into metric families, so
every value of a scrape comes from the same moment and the same numbers the CLI, the admin API
and the dashboard show. Labels are names from the configuration only (accounts, subscribers)
and fixed enumerations (outcome, state), so cardinality never grows with the number of calls.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from relay import __version__
from relay.core.status import (
    LATENCY_BUCKETS,
    RelayStatus,
    RuntimeAccount,
    account_lag,
    poller_problem,
    readiness,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ACCOUNT_STATUSES = ("ok", "auth_failed", "rate_limited", "backing_off", "store_error")
PAUSED_PREFIX = "paused"  # a disabled reason set by an operator's pause

# Every family this module exports, for the docs and for checking dashboards and alerts.
METRIC_NAMES = (
    "relay_info",
    "relay_ready",
    "relay_quarantined_records",
    "relay_upstream_polls_total",
    "relay_upstream_rate_limited_total",
    "relay_records_ingested_total",
    "relay_cursor_lag_seconds",
    "relay_upstream_budget_spent",
    "relay_upstream_budget_limit",
    "relay_account_status",
    "relay_poller_stuck",
    "relay_poll_interval_seconds",
    "relay_deliveries_total",
    "relay_delivery_attempt_duration_seconds",
    "relay_queue_depth",
    "relay_queue_oldest_pending_age_seconds",
    "relay_subscriber_paused",
    "relay_subscriber_disabled",
    "relay_subscriber_circuit_open",
)


class StatusCollector(Collector):
    """Metric families from one :class:`RelayStatus` snapshot."""

    def __init__(self, status: RelayStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status
        info = GaugeMetricFamily("relay_info", "Relay build information.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        ready = not readiness(status, status.at)
        yield GaugeMetricFamily("relay_ready", "1 when /readyz says ready.", value=float(ready))
        yield GaugeMetricFamily(
            "relay_quarantined_records",
            "Records kept aside as invalid.",
            value=float(status.store.quarantined),
        )
        yield from self._accounts()
        yield from self._subscribers()

    def _accounts(self) -> Iterator[Metric]:
        status = self._status
        lbl = ["account"]
        polls = CounterMetricFamily(
            "relay_upstream_polls",
            "Polls of the WebFones API by outcome.",
            labels=[*lbl, "outcome"],
        )
        limited = CounterMetricFamily(
            "relay_upstream_rate_limited", "429 answers from the WebFones API.", labels=lbl
        )
        ingested = CounterMetricFamily(
            "relay_records_ingested", "Call records newly stored.", labels=lbl
        )
        lag = GaugeMetricFamily(
            "relay_cursor_lag_seconds", "Now minus the newest call_timestamp seen.", labels=lbl
        )
        spent = GaugeMetricFamily(
            "relay_upstream_budget_spent",
            "Upstream requests made in the current budget window.",
            labels=lbl,
        )
        limit = GaugeMetricFamily(
            "relay_upstream_budget_limit", "Requests allowed per budget window.", labels=lbl
        )
        health = GaugeMetricFamily(
            "relay_account_status", "1 for the account's current status.", labels=[*lbl, "status"]
        )
        stuck = GaugeMetricFamily(
            "relay_poller_stuck", "1 when the poller does not turn.", labels=lbl
        )
        interval = GaugeMetricFamily(
            "relay_poll_interval_seconds",
            "Seconds between polls (as configured, or what poll_interval auto works out to).",
            labels=[*lbl, "mode"],
        )
        for name in status.config_accounts:
            account = status.pollers.get(name, RuntimeAccount(phase="stopped"))
            for outcome, n in account.outcomes.items():
                polls.add_metric([name, outcome], float(n))
            limited.add_metric([name], float(account.outcomes.get("rate_limited", 0)))
            ingested.add_metric([name], float(account.ingested))
            age = account_lag(account, status.at)
            if age is not None:
                lag.add_metric([name], age)
            spent.add_metric([name], float(account.requests_in_window))
            limit.add_metric([name], float(account.budget_requests))
            current = account.health or (status.store.accounts.get(name) or _NoState).status
            for state in ACCOUNT_STATUSES:
                health.add_metric([name, state], float(current == state))
            stuck.add_metric([name], float(poller_problem(name, account, status.at) is not None))
            if account.interval > 0:
                mode = "auto" if account.interval_auto else "fixed"
                interval.add_metric([name, mode], account.interval)
        yield from (polls, limited, ingested, lag, spent, limit, health, stuck, interval)

    def _subscribers(self) -> Iterator[Metric]:
        status = self._status
        lbl = ["subscriber"]
        outcomes = CounterMetricFamily(
            "relay_deliveries", "Delivery attempts by outcome.", labels=[*lbl, "outcome"]
        )
        latency = HistogramMetricFamily(
            "relay_delivery_attempt_duration_seconds",
            "Time from sending a webhook to its answer.",
            labels=lbl,
        )
        depth = GaugeMetricFamily(
            "relay_queue_depth", "Deliveries by state.", labels=[*lbl, "state"]
        )
        oldest = GaugeMetricFamily(
            "relay_queue_oldest_pending_age_seconds",
            "How long the earliest pending delivery has been due.",
            labels=lbl,
        )
        paused = GaugeMetricFamily("relay_subscriber_paused", "1 when paused.", labels=lbl)
        disabled = GaugeMetricFamily(
            "relay_subscriber_disabled", "1 when disabled (410 Gone or by config).", labels=lbl
        )
        circuit = GaugeMetricFamily(
            "relay_subscriber_circuit_open", "1 while the circuit breaker is open.", labels=lbl
        )
        enabled = {name for name in status.dispatchers}
        for name in status.config_subscribers:
            live = status.dispatchers.get(name)
            if live is not None:
                for outcome, n in live.outcomes.items():
                    outcomes.add_metric([name, outcome], float(n))
                cumulative, buckets = 0, []
                for bound, n in zip(LATENCY_BUCKETS, live.latency_counts, strict=False):
                    cumulative += n
                    buckets.append((_le(bound), float(cumulative)))
                buckets.append(("+Inf", float(live.latency_count)))
                latency.add_metric([name], buckets, live.latency_sum)
            queue = status.store.subscribers.get(name)
            for state in ("pending", "inflight", "dead"):
                depth.add_metric([name, state], float(getattr(queue, state, 0) if queue else 0))
            due = queue.oldest_pending_at if queue else None
            oldest.add_metric([name], max(0.0, status.at - due) if due is not None else 0.0)
            reason = queue.disabled if queue else None
            is_paused = reason is not None and reason.startswith(PAUSED_PREFIX)
            paused.add_metric([name], float(is_paused))
            off = (reason is not None and not is_paused) or name not in enabled
            disabled.add_metric([name], float(off))
            circuit.add_metric([name], float(live is not None and live.circuit == "open"))
        yield from (outcomes, latency, depth, oldest, paused, disabled, circuit)


class _NoState:
    status: str | None = None


def _le(bound: float) -> str:
    return repr(float(bound))


def render(status: RelayStatus) -> bytes:
    """The exposition text for one snapshot, with process and GC metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)
