"""What the server tells its operator: Prometheus metrics (``GET /metrics``, prometheus-client's text format) and
one structured access-log line per request (JSON: method, path, status, ms, user, client; never a prompt, an
answer, a token or a query string).

Metrics live in a registry of their own per server (never the process-wide default one): requests by endpoint,
model and status; prompt and completion tokens by model; time to first token and total latency; the generation
queue's depth; each base model's batch occupancy; jobs by status and running jobs' training tokens/s, read from the catalog at each scrape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..catalog import SCHEMA

if TYPE_CHECKING:
    from ..surface.engine import Engine
    from .bounds import Queue

ACCESS = logging.getLogger("duckdb_ft.server.access")
#: Latency buckets in seconds: a tiny model answers in milliseconds, a long answer on a CPU takes a minute.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: The model label of a request whose model is unknown or not allowed: names a client made up never become series.
UNKNOWN = "<unknown>"
JOB_STATUSES = ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR", "CANCELLED")
#: Each running job's tokens per second between its last two recorded steps.
SPEEDS = f"""
    SELECT job_id, (tokens - prev_tokens) / (elapsed_s - prev_elapsed) FROM (
        SELECT job_id, tokens, elapsed_s, lag(tokens) OVER w AS prev_tokens, lag(elapsed_s) OVER w AS prev_elapsed,
               row_number() OVER (PARTITION BY job_id ORDER BY step DESC) AS newest
        FROM {SCHEMA}.metrics WHERE job_id IN (SELECT id FROM {SCHEMA}.jobs WHERE status = 'IN_PROGRESS')
        WINDOW w AS (PARTITION BY job_id ORDER BY step))
    WHERE newest = 1 AND elapsed_s > prev_elapsed"""


class _Jobs:
    """A collector: fine-tuning jobs by status, read from the catalog when scraped."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("duckdb_ft_jobs", "Fine-tuning jobs by status.", labels=["status"])
        counts = dict.fromkeys(JOB_STATUSES, 0)
        try:
            counts.update(self.engine.cursor().execute(
                f"SELECT status, count(*) FROM {SCHEMA}.jobs GROUP BY status").fetchall())
        except Exception:  # noqa: BLE001 - a closing database: the scrape still answers
            pass
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family
        speed = GaugeMetricFamily("duckdb_ft_job_training_tokens_per_second", "Training tokens per second of each "
                                  "running job, over its last two recorded steps.", labels=["job_id"])
        try:
            rows = self.engine.cursor().execute(SPEEDS).fetchall()
        except Exception:  # noqa: BLE001 - as above
            rows = []
        for job_id, tokens_per_s in rows:
            speed.add_metric([job_id], tokens_per_s)
        yield speed


class _Loops:
    """A collector: each decode loop's slots in use, its slots and the requests waiting for one (batch occupancy)."""

    def __init__(self, loops: Any):
        self.loops = loops

    def collect(self) -> Iterator[GaugeMetricFamily]:
        names = {"active_slots": "duckdb_ft_batch_active_slots", "slots": "duckdb_ft_batch_slots",
                 "queue_depth": "duckdb_ft_batch_waiting"}
        helps = {"active_slots": "Rows decoding now in a base model's batch.",
                 "slots": "Rows a base model's batch holds at most.",
                 "queue_depth": "Requests waiting for a slot in a base model's batch."}
        families = {k: GaugeMetricFamily(names[k], helps[k], labels=["model"]) for k in names}
        for loop in list(self.loops):
            stats = loop.stats()
            for k, family in families.items():
                family.add_metric([loop.loaded.name], stats[k])
        yield from families.values()


class Metrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self, engine: Engine, queue: Queue, loops: Any = ()):
        disable_created_metrics()  # no ``*_created`` series beside each counter: the process is the server's
        self.registry = r = CollectorRegistry()
        self.requests = Counter("duckdb_ft_requests", "HTTP requests by endpoint, model and status.",
                                ["endpoint", "model", "status"], registry=r)
        self.prompt_tokens = Counter("duckdb_ft_prompt_tokens", "Prompt tokens of answered requests.", ["model"],
                                     registry=r)
        self.completion_tokens = Counter("duckdb_ft_completion_tokens", "Generated tokens of answered requests.",
                                         ["model"], registry=r)
        self.first_token = Histogram("duckdb_ft_time_to_first_token_seconds", "From a generation request's "
                                     "arrival to its first text.", ["model"], buckets=BUCKETS, registry=r)
        self.latency = Histogram("duckdb_ft_request_duration_seconds", "From a request's arrival to its last byte.",
                                 ["endpoint"], buckets=BUCKETS, registry=r)
        depth = Gauge("duckdb_ft_queue_depth", "Generation requests admitted and not finished.", registry=r)
        depth.set_function(lambda: queue.depth)
        r.register(_Jobs(engine))
        r.register(_Loops(loops))

    def text(self) -> bytes:
        return generate_latest(self.registry)


def access_logger() -> logging.Logger:
    """The access log: one JSON object per line on standard error."""
    if not ACCESS.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS.addHandler(handler)
        ACCESS.setLevel(logging.INFO)
        ACCESS.propagate = False
    return ACCESS


class AccessLog:
    """ASGI middleware, outermost: one access-log line per request, its latency observed by endpoint; an exception
    that escapes a route becomes a 500 answer and one log line naming its class, never a traceback."""

    def __init__(self, app: Any, metrics: Metrics, error: Callable[[str, int, str], bytes]):
        self.app, self.metrics, self.error = app, metrics, error
        self.log = access_logger()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        failure = None
        try:
            await self.app(scope, receive, sending)
        except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - a 500 (503 when cut), one log line
            cut = isinstance(e, asyncio.CancelledError)  # uvicorn cut it: the stop's grace is over
            failure = "cut at shutdown" if cut else type(e).__name__
            if not status[0]:
                code, message = (503, "The server is shutting down: this request was cut.") if cut else (
                    500, "The server failed on this request; its log says which error.")
                try:
                    await sending({"type": "http.response.start", "status": code,
                                   "headers": [(b"content-type", b"application/json")]})
                    await sending({"type": "http.response.body", "body": self.error(scope.get("path", ""), code,
                                                                                    message)})
                except Exception:  # noqa: BLE001 - the connection is gone already
                    pass
        ms = (time.perf_counter() - start) * 1000
        path = scope.get("path", "")
        endpoint = scope.get("route_name") or _endpoint(path)
        self.metrics.latency.labels(endpoint).observe(ms / 1000)
        line = {"ts": round(time.time(), 3), "method": scope.get("method"), "path": path[:200],
                "status": status[0], "ms": round(ms, 1), "user": (scope.get("state") or {}).get("user"),
                "client": (scope.get("client") or ("", 0))[0]}
        if failure:
            line["error"] = failure
        self.log.info(json.dumps(line))


#: The endpoints metrics are labelled with; any other path is "other" (no series per made-up path).
ENDPOINTS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/api/v2/statements", "/metrics", "/health")


def _endpoint(path: str) -> str:
    return path if path in ENDPOINTS else ("/api/v2/statements" if path.startswith("/api/v2/statements") else "other")
