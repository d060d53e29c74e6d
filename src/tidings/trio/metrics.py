"""What a server counts, and its Prometheus exposition.

:class:`Metrics` is a handful of plain integers and dictionaries that the hub and
the endpoints bump as they work -- an integer add where it happens, nothing per
event and subscriber beyond that -- and that a scrape reads.  Gauges (connections,
subscribers) are computed at scrape time from what the server holds.  Topic names
are never labels: their number is unbounded.

:class:`TidingsCollector` turns one server's metrics into Prometheus metric
families with the official ``prometheus-client`` library (``pip install
'tidings[metrics]'``); register it in your own registry, or let ``tidings serve
--metrics`` expose ``GET /metrics``::

    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    registry.register(TidingsCollector(server.app))
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings.trio.server._app import App
    from tidings.trio.server._http import Request, Responder
    from tidings.trio.server._routes import Handler

__all__ = ["DELIVERY_BUCKETS", "Metrics", "TidingsCollector", "metrics_page"]

#: Upper bounds (seconds) of the publish-to-delivery histogram's buckets.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_REJECTIONS = {
    401: "auth",
    403: "auth",
    400: "bad_request",
    408: "bad_request",
    411: "bad_request",
    413: "bad_request",
    414: "bad_request",
    426: "bad_request",
    431: "bad_request",
}


class Metrics:
    """The counters of one server (one :class:`~tidings.trio.App` and its hub).

    Every attribute is public and cheap to bump; :class:`TidingsCollector` reads
    them.  Counters only grow.
    """

    __slots__ = (
        "delivered",
        "delivery_buckets",
        "delivery_sum",
        "direct_deliveries",
        "open_requests",
        "overflows",
        "published",
        "rejected",
        "resets",
        "store_errors",
    )

    def __init__(self) -> None:
        #: Events published through this server (each stored once).
        self.published = 0
        #: Events sent to clients, by transport (``sse``, ``poll``, ``ws``), counted
        #: when a stream or session ends; live subscriptions add theirs at scrape.
        self.delivered: Counter[str] = Counter()
        #: Resets sent to clients, by reason.
        self.resets: Counter[str] = Counter()
        #: Subscribers whose live buffer overflowed (they caught up from the history).
        self.overflows = 0
        #: Requests refused, by reason: ``limit`` (over the connection cap), ``auth``
        #: (the authorisation hook or the Origin check), ``bad_request``.
        self.rejected: Counter[str] = Counter()
        #: Requests in progress, by ``(transport, http_version)``.
        self.open_requests: Counter[tuple[str, str]] = Counter()
        #: Operations the history's store could not do (unreachable).
        self.store_errors = 0
        # Publish-to-delivery histogram (seconds, measured in the server): a sample
        # of the live batches (one in 8 per subscription, each weighted by its
        # events); events written straight from the publisher's task all count, at
        # (near) zero.
        self.delivery_buckets = [0] * (len(DELIVERY_BUCKETS) + 1)
        self.delivery_sum = 0.0
        self.direct_deliveries = 0

    def reject(self, status: int) -> None:
        """Count an error answer by its *status*: ``401``/``403`` as ``auth``, a
        malformed, oversized or too slow request as ``bad_request``, ``503`` for a
        full server as ``limit``; other statuses are not refusals of the client."""
        reason = _REJECTIONS.get(status)
        if reason is not None:
            self.rejected[reason] += 1

    def observe_delivery(self, seconds: float, events: int) -> None:
        """*events* left the server *seconds* after they were published."""
        self.delivery_buckets[bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += events
        self.delivery_sum += seconds * events


class TidingsCollector:
    """A ``prometheus_client`` collector of one server's :class:`Metrics`.

    Pass the server's :class:`~tidings.trio.App` (``server.app``, or
    ``asgi_app.app``).
    """

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> list[Any]:
        """No descriptions ahead of time (the families' labels depend on use)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families, read from the server now."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        from tidings.trio.hub import Subscription

        app = self.app
        metrics = app.metrics

        connections = GaugeMetricFamily(
            "tidings_connections",
            "Requests and streams in progress, by transport and HTTP version.",
            labels=["transport", "http_version"],
        )
        for (transport, version), count in sorted(metrics.open_requests.items()):
            connections.add_metric([transport, version], count)
        yield connections

        live: Counter[str] = Counter()
        for subscription in list(app.subscriptions):
            live[subscription.transport] += 1
            if isinstance(subscription, Subscription):
                subscription.count_delivered()
        delivered = metrics.delivered
        subscribers = GaugeMetricFamily(
            "tidings_subscribers",
            "Topics followed now (a WebSocket session counts once per topic).",
            labels=["transport"],
        )
        for transport in ("sse", "poll", "ws"):
            subscribers.add_metric([transport], live[transport])
        yield subscribers

        published = CounterMetricFamily(
            "tidings_published", "Events published through this server."
        )
        published.add_metric([], metrics.published)
        yield published

        sent = CounterMetricFamily(
            "tidings_delivered", "Events sent to clients, by transport.", labels=["transport"]
        )
        for transport in ("sse", "poll", "ws"):
            sent.add_metric([transport], delivered[transport])
        yield sent

        resets = CounterMetricFamily(
            "tidings_resets", "Resets sent to clients, by reason.", labels=["reason"]
        )
        for reason, count in sorted(metrics.resets.items()):
            resets.add_metric([reason], count)
        yield resets

        overflows = CounterMetricFamily(
            "tidings_overflows",
            "Subscribers too slow for their live buffer (they caught up from the history).",
        )
        overflows.add_metric([], metrics.overflows)
        yield overflows

        rejected = CounterMetricFamily(
            "tidings_rejected", "Requests refused, by reason.", labels=["reason"]
        )
        for reason in ("limit", "auth", "bad_request"):
            rejected.add_metric([reason], metrics.rejected[reason])
        yield rejected

        buckets = []
        cumulative = metrics.direct_deliveries
        for bound, count in zip(DELIVERY_BUCKETS, metrics.delivery_buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        cumulative += metrics.delivery_buckets[-1]
        buckets.append(("+Inf", cumulative))
        histogram = HistogramMetricFamily(
            "tidings_publish_to_delivery_seconds",
            "Time from an event's publication to its write to a client, in the server.",
            buckets=buckets,
            sum_value=metrics.delivery_sum,
        )
        yield histogram

        errors = CounterMetricFamily(
            "tidings_store_errors", "History operations the store could not do."
        )
        errors.add_metric([], metrics.store_errors)
        yield errors


def metrics_page() -> Handler:
    """The ``GET /metrics`` handler (what ``tidings serve --metrics`` adds): the
    server's metrics in the Prometheus text format.  Needs ``prometheus-client``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    content_type = (b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))

    async def metrics(app: App, request: Request, responder: Responder) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TidingsCollector(app))
        body = generate_latest(registry)
        headers = app.headers(content_type, (b"cache-control", b"no-store"))
        await responder.respond(200, headers, b"" if request.method == "HEAD" else body)

    return metrics
