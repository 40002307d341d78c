"""Prometheus text for /metrics: request and token counters, queue gauges, latency and batch histograms."""

from __future__ import annotations

import threading
from collections import Counter

from llmc.runtime.scheduler import Request, ServingEngine

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative buckets, a sum and a count: constant memory whatever the number of observations."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts)]
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.6f}",
            f"{name}_count {self.count}",
        ]
        return lines


class ServerMetrics:
    """What the HTTP layer observes (requests by route and status, latencies) plus the engine's own counters."""

    def __init__(self, engine: ServingEngine):
        self.engine = engine
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (route, status)
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.itl = Histogram(LATENCY_BUCKETS)
        self.disconnects = 0

    def count_request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests[(route, status)] += 1

    def observe_finished(self, request: Request) -> None:
        times = request.token_times
        with self.lock:
            if times:
                self.ttft.observe(times[0] - request.arrival)
            for before, after in zip(times, times[1:]):
                self.itl.observe(after - before)

    def render(self) -> str:
        engine, stats = self.engine, self.engine.stats
        prompt = stats.prompt_tokens
        lines = ["# HELP llmc_requests_total HTTP requests by route and status.", "# TYPE llmc_requests_total counter"]
        with self.lock:
            lines += [
                f'llmc_requests_total{{route="{route}",status="{status}"}} {n}'
                for (route, status), n in sorted(self.requests.items())
            ]
            ttft, itl = (
                self.ttft.render("llmc_time_to_first_token_seconds", "From arrival to the first generated token."),
                self.itl.render("llmc_inter_token_latency_seconds", "Between consecutive tokens of one request."),
            )
        lines += [
            "# HELP llmc_generations_total Finished generations by reason.",
            "# TYPE llmc_generations_total counter",
        ]
        lines += [f'llmc_generations_total{{reason="{r}"}} {n}' for r, n in sorted(stats.finished.items())]
        simple = [
            ("llmc_prompt_tokens_total", "counter", "Prompt tokens admitted.", prompt),
            ("llmc_generation_tokens_total", "counter", "Tokens generated.", stats.completion_tokens),
            (
                "llmc_prefix_cache_hit_tokens_total",
                "counter",
                "Prompt tokens forked from cached prefixes.",
                stats.prefix_hit_tokens,
            ),
            (
                "llmc_prefix_cache_hit_rate",
                "gauge",
                "Share of prompt tokens served from the prefix cache.",
                stats.prefix_hit_tokens / prompt if prompt else 0.0,
            ),
            (
                "llmc_prefix_cache_sequences",
                "gauge",
                "Finished sequences kept for prefix reuse.",
                engine.cached_prefixes,
            ),
            ("llmc_running_sequences", "gauge", "Sequences in the running batch.", engine.running),
            ("llmc_queued_requests", "gauge", "Requests waiting for a batch slot.", engine.waiting),
            ("llmc_max_batch_size", "gauge", "The batch bound.", engine.max_batch),
            ("llmc_prefill_calls_total", "counter", "batch_prefill calls.", stats.prefill_calls),
            ("llmc_decode_calls_total", "counter", "batch_decode calls.", stats.decode_calls),
        ]
        for name, kind, help_text, value in simple:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        batch = Histogram(tuple(float(b) for b in range(1, engine.max_batch + 1)))
        for size, n in stats.decode_batch_sizes.items():
            for i, bound in enumerate(batch.buckets):
                if size <= bound:
                    batch.counts[i] += n
            batch.total += size * n
            batch.count += n
        lines += batch.render("llmc_batch_size", "Sequences per batch_decode call.")
        return "\n".join(lines + ttft + itl) + "\n"
