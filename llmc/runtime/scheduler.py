"""The serving engine: one scheduler thread owns the model; requests join and leave the running batch each step.

Each step admits waiting requests while the batch bound and KV pages allow, prefills new sequences in one
ragged ``batch_prefill`` call of at most the prefill chunk, decodes every running sequence in one
``batch_decode`` call, samples each request with its own parameters and seed, and retires sequences that
finished, reached a stop string or were cancelled. A finished sequence stays in the paged KV cache as a
prefix entry: a later prompt that shares its start forks it instead of prefilling those tokens again.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmc.artifact import read_config
from llmc.errors import GenerationError
from llmc.memory import PAGE_SIZE, kv_tokens_per_sequence
from llmc.runtime import embeddings
from llmc.runtime.disco_engine import open_engine
from llmc.runtime.sampling import Sampler, TokenLogprob
from llmc.runtime.textstream import OutputText
from llmc.runtime.tokenizer import ArtifactTokenizer


class QueueFullError(GenerationError):
    """More requests are waiting than the server accepts."""


class ShuttingDownError(GenerationError):
    """The engine no longer accepts requests."""


@dataclass
class Delta:
    """What one step produced for one request: new text, its tokens, and the finish reason on the last one."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None


class Request:
    """One generation request; the caller iterates it for ``Delta``s while the scheduler fills them in."""

    def __init__(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        sampler: Sampler,
        stop: list[str] | tuple[str, ...] = (),
    ):
        self.prompt_ids = list(prompt_ids)
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.stop = list(stop)
        self.events: queue.SimpleQueue[Delta] = queue.SimpleQueue()
        self.cancelled = False
        self.arrival = time.monotonic()
        self.token_times: list[float] = []
        self.output_ids: list[int] = []
        self.cached_tokens = 0  # prompt tokens taken from the prefix cache instead of prefilled
        self.finish_reason: str | None = None
        # scheduler state
        self.seq_id = -1
        self.fed = 0  # prompt tokens whose keys/values are in the cache
        self.output: OutputText | None = None

    def cancel(self) -> None:
        """The client went away: the scheduler frees the sequence at its next step."""
        self.cancelled = True

    def __iter__(self) -> Iterator[Delta]:
        while True:
            delta = self.events.get()
            yield delta
            if delta.finish_reason is not None:
                return


class EmbeddingJob:
    """Inputs to embed; the scheduler fills ``vectors`` (or ``error``) between two steps, then sets ``done``."""

    def __init__(self, prompts: list[list[int]], peak_pages: int):
        self.prompts = prompts
        self.peak_pages = peak_pages  # the most KV pages its inputs hold at once
        self.vectors: np.ndarray | None = None
        self.error: str | None = None
        self.done = threading.Event()


@dataclass
class EngineStats:
    """Counters since start; ``metrics`` renders them."""

    finished: Counter = field(default_factory=Counter)  # by finish reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    decode_batch_sizes: Counter = field(default_factory=Counter)
    embedded_inputs: int = 0


@dataclass
class _CachedPrefix:
    seq_id: int
    tokens: list[int]

    @property
    def pages(self) -> int:
        return math.ceil(len(self.tokens) / PAGE_SIZE) + 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0])


class ServingEngine:
    """Continuous batching over one artifact's ``batch_prefill`` / ``batch_decode`` and its paged KV cache."""

    def __init__(
        self,
        artifact: str | Path,
        device: str = "cpu",
        max_batch: int | None = None,
        max_queue: int = 64,
        prefix_cache: bool = True,
    ):
        config = read_config(Path(artifact))
        batch = min(max_batch or config["max_batch_size"], config["max_batch_size"])
        # every sequence may grow to the context window, plus a page each for forks that copy a partial page
        # (an evicting cache: its sliding window)
        kv_tokens = batch * (kv_tokens_per_sequence(config) + PAGE_SIZE)
        self.engine = open_engine(artifact, device, max_batch_size=batch, kv_tokens=kv_tokens)
        self.tokenizer = ArtifactTokenizer(self.engine.folder, self.engine.config["tokenizer"])
        self.max_batch = self.engine.max_batch_size
        self.max_queue = max_queue
        self.context_window = self.engine.context_window
        # TVM forks a sliding sequence only within its attention sink (none here): no prefix forks then
        self.prefix_cache_enabled = prefix_cache and not self.engine.sliding_window
        self.stats = EngineStats()
        self.total_pages = self.engine.available_pages()
        self._ids = itertools.count(1)
        self._waiting: deque[Request] = deque()
        self._embedding_jobs: deque[EmbeddingJob] = deque()
        self._running: list[Request] = []
        self._cache: OrderedDict[int, _CachedPrefix] = OrderedDict()  # LRU order
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llmc-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def cached_prefixes(self) -> int:
        return len(self._cache)

    def submit(self, request: Request) -> Request:
        """Queue ``request``; raise if the prompt cannot fit, the queue is full or the engine is stopping."""
        if not request.prompt_ids:
            raise GenerationError("the prompt is empty.")
        if len(request.prompt_ids) >= self.context_window:
            raise GenerationError(
                f"the prompt is {len(request.prompt_ids)} tokens but the context window is {self.context_window}."
            )
        request.output = OutputText(self.tokenizer, request.stop)
        with self._wake:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down.")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting; retry later.")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def submit_embedding(self, prompts: list[list[int]]) -> EmbeddingJob:
        """Queue inputs to embed (``--embedding`` artifacts); the caller waits on ``job.done``."""
        if not getattr(self.engine, "has_embedding", False):  # a tensor-parallel engine has none
            raise GenerationError("this model was compiled without --embedding; recompile with it for embeddings.")
        if not prompts or any(not p for p in prompts):
            raise GenerationError("an input is empty.")
        longest = max(len(p) for p in prompts)
        if longest > self.context_window:
            raise GenerationError(f"an input is {longest} tokens but the context window is {self.context_window}.")
        chunk, most = self.engine.prefill_chunk, self.engine.max_batch_size
        peak = max(
            sum(embeddings.pages_for(prompts[i]) for i in group) for group in embeddings.groups(prompts, chunk, most)
        )
        job = EmbeddingJob(prompts, peak)
        with self._wake:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down.")
            if len(self._embedding_jobs) >= self.max_queue:
                raise QueueFullError(f"{len(self._embedding_jobs)} embedding requests are already waiting.")
            self._embedding_jobs.append(job)
            self._wake.notify()
        return job

    def cancel(self, request: Request) -> None:
        request.cancel()
        with self._wake:
            self._wake.notify()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Refuse new requests, let in-flight ones finish for ``grace_seconds``, cancel the rest, stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        deadline = time.monotonic() + grace_seconds
        while (self._running or self._waiting) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        for request in list(self._waiting) + list(self._running):
            request.cancel()
        with self._wake:
            for job in self._embedding_jobs:
                job.error = "the server is shutting down."
                job.done.set()
            self._embedding_jobs.clear()
            self._wake.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ scheduler thread
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._running and not self._waiting and not self._embedding_jobs and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._running and not self._waiting and not self._embedding_jobs:
                    return
            try:
                self._step()
            except Exception as err:  # noqa: BLE001 - one bad step must not kill the server
                for request in list(self._running):
                    self._finish(request, "error", error=f"{err.__class__.__name__}: {err}")
                self.engine.reset()
                self._cache.clear()
            if not self._running and self._waiting and not self._admissible():
                time.sleep(0.005)  # cancelled waiters are dropped on the next step

    def _step(self) -> None:
        self._embed_one()
        self._admit()
        for request in [r for r in self._running if r.cancelled]:
            self._finish(request, "cancelled")
        decoding = [r for r in self._running if r.fed == len(r.prompt_ids)]
        self._prefill([r for r in self._running if r.fed < len(r.prompt_ids)])
        if decoding:
            logits = self._decode([r.seq_id for r in decoding], [r.output_ids[-1] for r in decoding])
            self.stats.decode_calls += 1
            self.stats.decode_batch_sizes[len(decoding)] += 1
            for request, row in zip(decoding, logits):
                self._emit(request, row)

    def _embed_one(self) -> None:
        """Run the oldest embedding job between two steps, when its inputs' pages fit beside the running ones."""
        with self._wake:
            if not self._embedding_jobs:
                return
            job = self._embedding_jobs[0]
            while self._cache and self._reserved_pages() + job.peak_pages > self.total_pages:
                self._evict()
            if self._reserved_pages() + job.peak_pages > self.total_pages:
                return  # a running sequence must finish first
            self._embedding_jobs.popleft()
        try:
            job.vectors = embeddings.embed(self.engine, job.prompts, lambda: next(self._ids))
            self.stats.embedded_inputs += len(job.prompts)
        except Exception as err:  # noqa: BLE001 - the request fails, the engine goes on
            job.error = f"{err.__class__.__name__}: {err}" if not isinstance(err, GenerationError) else str(err)
        finally:
            job.done.set()

    def _decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray:
        """A lone sequence runs ``decode`` (faster at batch 1, and the kernels ``llmc run`` uses: CPU int8
        artifacts round decode and batch_decode differently); several run one ``batch_decode``."""
        if len(seq_ids) == 1:
            return self.engine.decode(seq_ids[0], tokens[0])[None]
        return self.engine.batch_decode(seq_ids, tokens)

    def _prefill(self, pending: list[Request]) -> None:
        budget, batch = self.engine.prefill_chunk, []
        for request in pending:
            if budget == 0:
                break
            chunk = request.prompt_ids[request.fed : request.fed + budget]
            batch.append((request, chunk))
            budget -= len(chunk)
        if not batch:
            return
        logits = self.engine.batch_prefill([r.seq_id for r, _ in batch], [c for _, c in batch])
        self.stats.prefill_calls += 1
        for (request, chunk), row in zip(batch, logits):
            request.fed += len(chunk)
            if request.fed == len(request.prompt_ids):
                self._emit(request, row)

    def _emit(self, request: Request, logits: np.ndarray) -> None:
        token, logprob = request.sampler(logits)
        request.output_ids.append(token)
        request.token_times.append(time.monotonic())
        finish, text = None, ""
        if token in self.tokenizer.eos_token_ids:
            finish = "stop"
        else:
            text, hit_stop = request.output.push(token)
            if hit_stop:
                finish = "stop"
        if finish is None and (
            len(request.output_ids) >= request.max_tokens
            or len(request.prompt_ids) + len(request.output_ids) >= self.context_window
        ):
            finish = "length"
        if finish:
            text += request.output.flush()  # empty after a stop string: the text was cut there
        request.events.put(Delta(text, [token], [logprob] if logprob else [], None))
        if finish:
            self._finish(request, finish)

    def _finish(self, request: Request, reason: str, error: str | None = None) -> None:
        """Retire a running or waiting request; keep its sequence as a prefix entry when it ended normally."""
        if request in self._running:
            self._running.remove(request)
            if reason in ("stop", "length") and self.prefix_cache_enabled:
                fed = request.prompt_ids + request.output_ids[:-1]
                self._cache[request.seq_id] = _CachedPrefix(request.seq_id, fed)
                while len(self._cache) > self.max_batch:
                    self._evict()
            else:
                self.engine.remove_sequence(request.seq_id)
        request.finish_reason = reason
        self.stats.finished[reason] += 1
        self.stats.completion_tokens += len(request.output_ids)
        request.events.put(Delta("", [], [], reason, error))

    # ------------------------------------------------------------------ admission and the prefix cache
    def _reserved_pages(self) -> int:
        running = sum(self._pages_needed(r) for r in self._running)
        return running + sum(entry.pages for entry in self._cache.values())

    def _pages_needed(self, request: Request) -> int:
        tokens = min(len(request.prompt_ids) + request.max_tokens, self.context_window)
        if self.engine.sliding_window:  # an evicting cache holds only the window
            tokens = min(tokens, kv_tokens_per_sequence(self.engine.config))
        return math.ceil(tokens / PAGE_SIZE) + 1

    def _admissible(self) -> bool:
        return len(self._running) < self.max_batch

    def _admit(self) -> None:
        while self._admissible():
            with self._wake:
                if not self._waiting:
                    return
                request = self._waiting[0]
                if request.cancelled:
                    self._waiting.popleft()
                    self._finish(request, "cancelled")
                    continue
                need = self._pages_needed(request)
                while self._cache and self._reserved_pages() + need > self.total_pages:
                    self._evict()
                if self._reserved_pages() + need > self.total_pages:
                    return  # wait for a running sequence to finish
                self._waiting.popleft()
            try:
                self._start(request)
            except Exception as err:  # noqa: BLE001 - the request fails, the engine goes on
                self._finish(request, "error", error=f"{err.__class__.__name__}: {err}")

    def _start(self, request: Request) -> None:
        request.seq_id = next(self._ids)
        parent, shared = None, 0
        if self.prefix_cache_enabled:
            for entry in self._cache.values():
                # at least one prompt token is prefilled, for the logits of the first output token
                length = min(_common_prefix(entry.tokens, request.prompt_ids), len(request.prompt_ids) - 1)
                if length > shared:
                    parent, shared = entry, length
        if parent is not None:
            self.engine.fork_sequence(parent.seq_id, request.seq_id, shared)
            self._cache.move_to_end(parent.seq_id)
        else:
            self.engine.add_sequence(request.seq_id)
        request.fed = request.cached_tokens = shared
        self.stats.prompt_tokens += len(request.prompt_ids)
        self.stats.prefix_hit_tokens += shared
        self._running.append(request)

    def _evict(self) -> None:
        seq_id, _ = self._cache.popitem(last=False)
        self.engine.remove_sequence(seq_id)
