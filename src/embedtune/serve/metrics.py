"""The server's metrics, kept in memory and written in Prometheus' text exposition format (0.0.4) on scrape
(GET /metrics). No third-party import: prometheus_client is not a dependency, and the format is a few lines.

Updating a metric is a dict increment or a bisect under an uncontended lock: nothing is formatted on the hot
path. What is recorded:

    embedtune_requests_total{route, status}        counter: answered requests, by route and HTTP status
    embedtune_request_duration_seconds{route}      histogram: from the request's arrival to its answer's end
    embedtune_batch_size                           histogram: texts per model call (requests merged)
    embedtune_tokens_total                         counter: tokens embedded (EOS and prompts included)
    embedtune_queue_depth                          gauge: texts waiting for the model
    embedtune_requests_in_progress                 gauge: requests being read, checked, queued or answered

A route outside ROUTES is counted as "other", so that a client probing random paths cannot grow the label set.
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("/v1/embeddings", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative-bucket histogram, safe to observe from any thread."""

    def __init__(self, buckets: Sequence[float]):
        self.bounds = tuple(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float, int]:
        """(cumulative counts per bound and +Inf, sum, count), read consistently."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for count in counts:
            running += count
            cumulative.append(running)
        return cumulative, total, running


class ServerMetrics:
    """Every metric of one server; `render` writes them for a scrape."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}  # updated on the event loop only
        self.latency = {route: Histogram(LATENCY_BUCKETS) for route in (*ROUTES, "other")}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.tokens = 0  # updated by the batcher's one worker thread only
        self._lock = threading.Lock()

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        with self._lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
        self.latency[route].observe(seconds)

    def observe_batch(self, texts: int, tokens: int) -> None:
        self.batch_size.observe(texts)
        self.tokens += tokens

    def render(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> str:
        """The exposition text; `gauges`: name -> (help, current value), read now."""
        lines: list[str] = []
        _family(lines, "embedtune_requests_total", "counter", "requests answered, by route and HTTP status")
        with self._lock:
            requests = sorted(self.requests.items())
        for (route, status), count in requests:
            lines.append(f'embedtune_requests_total{{route="{route}",status="{status}"}} {count}')
        _family(lines, "embedtune_request_duration_seconds", "histogram",
                "seconds from a request's arrival to the end of its answer, by route")
        for route, histogram in self.latency.items():
            if histogram.snapshot()[2]:
                _histogram_lines(lines, "embedtune_request_duration_seconds", histogram, f'route="{route}"')
        _family(lines, "embedtune_batch_size", "histogram", "texts per model call (requests merged by the batcher)")
        _histogram_lines(lines, "embedtune_batch_size", self.batch_size)
        _family(lines, "embedtune_tokens_total", "counter", "tokens embedded (EOS and prompts included)")
        lines.append(f"embedtune_tokens_total {self.tokens}")
        for name, (description, value) in gauges.items():
            _family(lines, name, "gauge", description)
            lines.append(f"{name} {_number(value())}")
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, description: str) -> None:
    lines.append(f"# HELP {name} {description}")
    lines.append(f"# TYPE {name} {kind}")


def _histogram_lines(lines: list[str], name: str, histogram: Histogram, labels: str = "") -> None:
    cumulative, total, count = histogram.snapshot()
    prefix = f"{labels}," if labels else ""
    for bound, running in zip((*histogram.bounds, float("inf")), cumulative, strict=True):
        lines.append(f'{name}_bucket{{{prefix}le="{_number(bound)}"}} {running}')
    suffix = f"{{{labels}}}" if labels else ""
    lines.append(f"{name}_sum{suffix} {_number(total)}")
    lines.append(f"{name}_count{suffix} {count}")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
