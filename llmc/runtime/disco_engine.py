"""A tensor-parallel artifact in memory: one TVM disco worker process per shard, driven like ``Engine``.

The controller (this process) holds no weights. ``tvm.runtime.disco.ProcessSession`` starts the workers
(``llmc.runtime.disco_worker``; worker 0 is a thread of this process), the CCL joins them (NCCL over GPUs
0..N-1, or Gloo on CPUs: ``llmc.runtime.cpu_ccl``), every worker loads the one library and its own pre-sharded
weights (``runtime.disco.ShardLoaderLoadAllPresharded``) and creates its KV cache (its share of the heads).
Each call broadcasts the token ids from worker 0, runs the same function on every worker (the library's
allreduce/allgather join them) and copies worker 0's logits back.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime import ShapeTuple

from llmc.artifact import TENSOR_CACHE_FILE, read_config
from llmc.artifact_checks import verify_artifact
from llmc.errors import ArtifactError, GenerationError
from llmc.memory import PAGE_SIZE, kv_tokens_per_sequence
from llmc.runtime.engine import Engine, LoadedArtifact

WORKER_ENTRY = "llmc.runtime.disco_worker"


def tensor_parallel_shards(config: dict) -> int:
    """The shard count an artifact was compiled for (1: an ordinary artifact)."""
    return int((config.get("tensor_parallel") or {}).get("shards", 1))


def open_engine(artifact_dir: str | Path, device: str = "cpu", **kwargs):
    """``DiscoEngine`` for a tensor-parallel artifact, else ``Engine``; both take the same arguments."""
    if tensor_parallel_shards(read_config(Path(artifact_dir))) > 1:
        return DiscoEngine(artifact_dir, device, **kwargs)
    return Engine(artifact_dir, device, **kwargs)


def disco_module():
    """``tvm.runtime.disco``. The PyPI wheel keeps disco's C++ side in ``libtvm_runtime_extra``, which ``import tvm``
    loads only after ``tvm.runtime`` tried ``from . import disco``: that import fails (``tvm.runtime.disco`` is None)
    and leaves an empty ``_ffi_api`` behind. Fill it now that the library is loaded, then import the package again."""
    import importlib
    import sys

    import tvm_ffi

    if getattr(tvm.runtime, "disco", None) is None:
        tvm_ffi.init_ffi_api("runtime.disco", "tvm.runtime.disco._ffi_api")
        for name in ("tvm.runtime.disco.session", "tvm.runtime.disco"):
            sys.modules.pop(name, None)
        tvm.runtime.disco = importlib.import_module("tvm.runtime.disco")
    return tvm.runtime.disco


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _worker_threads(count: int):
    """CPU shards share this machine's cores: each worker process gets its part (TVM_NUM_THREADS, read by
    the workers started inside this block; worker 0 keeps this process's pool)."""
    before = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(count)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = before


class DiscoEngine(LoadedArtifact):
    """Runs the exported functions of a tensor-parallel artifact on ``shards`` disco workers."""

    def __init__(
        self,
        artifact_dir: str | Path,
        device: str = "cpu",
        max_batch_size: int | None = None,
        seed: int = 0,
        kv_tokens: int | None = None,
    ):
        import llmc.runtime.disco_worker  # noqa: F401 - worker 0 runs in this process: register its functions

        disco = disco_module()

        self._read_artifact(artifact_dir, device, max_batch_size)
        self.shards = tensor_parallel_shards(self.config)
        if self.on_gpu and not tvm.device(self.device.dlpack_device_type(), self.shards - 1).exist:
            raise ArtifactError(
                f"{self.folder}: compiled for {self.shards} tensor-parallel shards, one GPU each; this machine "
                f"has fewer. Recompile with --tensor-parallel-shards set to the GPU count."
            )
        verify_artifact(self.folder, self.config)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        with _worker_threads(max(1, cores // self.shards) if not self.on_gpu else 1):
            self.session = disco.ProcessSession(self.shards, entrypoint=WORKER_ENTRY)
        self._funcs: dict[str, object] = {}
        self._lengths: dict[int, int] = {}
        try:
            self._start(seed, kv_tokens)
        except BaseException:
            self.close()
            raise

    def _start(self, seed: int, kv_tokens: int | None) -> None:
        if self.on_gpu:
            self.session.init_ccl("nccl", *range(self.shards))
        else:
            self._f("llmc.disco.cpu_ccl_init")(_free_port())
        self.mod = self.session.load_vm_module(str(self.folder / self.config["library"]))
        self._mod_funcs: dict[str, object] = {}
        if self.config.get("random_weights"):
            self.params = self._f("llmc.disco.random_params")(json.dumps(self.config["param_specs"]), seed)
        else:
            cache = self.folder / TENSOR_CACHE_FILE
            loader = self._f("runtime.disco.ShardLoader")(str(cache), cache.read_text(), "{}", self.mod)
            self.params = self._f("runtime.disco.ShardLoaderLoadAllPresharded")(loader)
        tokens = kv_tokens or (
            self.max_batch_size * kv_tokens_per_sequence(self.config) if self.sliding_window else self.context_window
        )
        self.kv_cache = self._call(
            "create_paged_kv_cache",
            ShapeTuple([self.max_batch_size]),
            ShapeTuple([tokens]),
            ShapeTuple([self.prefill_chunk]),
            ShapeTuple([PAGE_SIZE]),
            ShapeTuple([1 if self.sliding_window else 0]),
        )
        self.session.sync_worker_0()  # weights and caches in place (errors surface here)

    def close(self) -> None:
        """Leave the CCL and stop the workers."""
        session = getattr(self, "session", None)
        if session is None:
            return
        self.session = None
        # drop every remote reference first: a DRef freed after shutdown writes to a closed worker pipe (abort)
        self.kv_cache = self.params = self.mod = None
        self._funcs.clear()
        self._mod_funcs = {}
        # the session caches its own function DRefs, each holding the session back (a cycle the garbage collector
        # frees whenever it runs, maybe after shutdown, which aborts the process): free them while workers listen
        for cached in ("_cache", "_import_python_module"):
            with contextlib.suppress(AttributeError):
                delattr(session, cached)
        with contextlib.suppress(Exception):
            if not self.on_gpu:
                session.call_packed(session.get_global_func("llmc.disco.cpu_ccl_shutdown"))
                session.sync_worker_0()
        session.shutdown()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> DiscoEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ worker calls
    def _f(self, name: str):
        """A global function, called on every worker."""
        if name not in self._funcs:
            self._funcs[name] = self.session.get_global_func(name)
        return self._funcs[name]

    def _call(self, name: str, *args):
        """One of the library's functions, called on every worker."""
        if name not in self._mod_funcs:
            self._mod_funcs[name] = self.mod[name]
        return self._mod_funcs[name](*args)

    def _to_workers(self, array: np.ndarray):
        """``array`` on every worker: copied to worker 0, broadcast by the CCL."""
        remote = self.session.empty(array.shape, str(array.dtype))
        self.session.copy_to_worker_0(tvm.runtime.tensor(array), remote)
        self.session.broadcast_from_worker0(remote, remote)
        return remote

    def _forward(self, name: str, inputs: list, seq_ids: list[int], lengths: list[int], shape: tuple) -> np.ndarray:
        """Run ``name`` over the sequences' new tokens on every worker; worker 0's logits (``shape``)."""
        self._f("vm.builtin.kv_state_begin_forward")(self.kv_cache, ShapeTuple(seq_ids), ShapeTuple(lengths))
        out = self._call(name, *inputs, self.kv_cache, self.params)
        self._f("vm.builtin.kv_state_end_forward")(self.kv_cache)
        logits = self._f("vm.builtin.tuple_getitem")(out, 0)
        host = tvm.runtime.empty(shape, "float32")
        self.session.copy_from_worker_0(host, logits)
        self.session.sync_worker_0()
        for seq_id, length in zip(seq_ids, lengths, strict=True):
            self._lengths[seq_id] += length
        return host.numpy()

    def _embed(self, token_ids: list[int], batch: int, length: int):
        array = np.asarray(token_ids, dtype=np.int64)
        outside = array[(array < 0) | (array >= self.vocab_size)]
        if outside.size:
            raise GenerationError(f"token id {int(outside[0])} is outside the vocabulary of {self.vocab_size}.")
        embeds = self._call("embed", self._to_workers(array.astype("int32")), self.params)
        return self._f("vm.builtin.reshape")(embeds, ShapeTuple([batch, length, self.hidden_size]))

    # ------------------------------------------------------------------ sequences
    def reset(self) -> None:
        self._f("vm.builtin.kv_state_clear")(self.kv_cache)
        self._lengths.clear()

    def add_sequence(self, seq_id: int) -> None:
        self._f("vm.builtin.kv_state_add_sequence")(self.kv_cache, seq_id)
        if self.sliding_window:
            self._f("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")(
                self.kv_cache, seq_id, self.sliding_window - 1, 0
            )
        self._lengths[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        self._f("vm.builtin.kv_state_remove_sequence")(self.kv_cache, seq_id)
        self._lengths.pop(seq_id, None)

    def fork_sequence(self, parent: int, child: int, position: int) -> None:
        """``child`` shares ``parent``'s first ``position`` tokens (on every worker's cache)."""
        self._f("vm.builtin.kv_state_fork_sequence")(self.kv_cache, parent, child, position)
        self._lengths[child] = position

    def available_pages(self) -> int:
        pages = self._f("vm.builtin.attention_kv_cache_get_num_available_pages")(self.kv_cache)
        return int(pages.debug_get_from_remote(0))

    def sequence_length(self, seq_id: int) -> int:
        return self._lengths[seq_id]

    @property
    def max_sequence_length(self) -> int | None:
        return None if self.sliding_window else self.context_window

    def _check_room(self, seq_id: int, count: int) -> None:
        if self.sliding_window:
            if count > self.prefill_chunk:
                raise GenerationError(f"a forward of {count} tokens exceeds the prefill chunk {self.prefill_chunk}.")
            return
        if self._lengths[seq_id] + count > self.context_window:
            raise GenerationError(
                f"sequence {seq_id} would reach {self._lengths[seq_id] + count} tokens; "
                f"the context window is {self.context_window}."
            )

    # ------------------------------------------------------------------ forward
    def _chunks(self, seq_id: int, token_ids: list[int]):
        for start in range(0, len(token_ids), self.prefill_chunk):
            chunk = token_ids[start : start + self.prefill_chunk]
            self._check_room(seq_id, len(chunk) if self.sliding_window else len(token_ids) - start)
            yield chunk

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        """Feed ``token_ids`` (chunked by the prefill chunk); return the last position's logits (vocab,)."""
        if not token_ids:
            raise GenerationError("cannot prefill an empty prompt.")
        logits = None
        for chunk in self._chunks(seq_id, token_ids):
            embeds = self._embed(chunk, 1, len(chunk))
            logits = self._forward("prefill", [embeds], [seq_id], [len(chunk)], (1, 1, self.vocab_size))
        return logits[0, 0]

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        self._check_room(seq_id, 1)
        embeds = self._embed([token_id], 1, 1)
        return self._forward("decode", [embeds], [seq_id], [1], (1, 1, self.vocab_size))[0, 0]

    def forward_all(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        """Feed ``token_ids`` (chunked) and return the logits of every position: (len, vocab)."""
        outputs = []
        for chunk in self._chunks(seq_id, token_ids):
            embeds = self._embed(chunk, 1, len(chunk))
            shape = (1, len(chunk), self.vocab_size)
            outputs.append(self._forward("batch_verify", [embeds], [seq_id], [len(chunk)], shape)[0])
        return np.concatenate(outputs, axis=0)

    def batch_prefill(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray:
        lengths = [len(p) for p in prompts]
        if sum(lengths) > self.prefill_chunk:
            raise GenerationError(f"batch of {sum(lengths)} tokens exceeds the prefill chunk {self.prefill_chunk}.")
        for seq_id, length in zip(seq_ids, lengths, strict=True):
            self._check_room(seq_id, length)
        flat = [t for p in prompts for t in p]
        positions = self._to_workers(np.cumsum(lengths).astype("int32") - 1)
        inputs = [self._embed(flat, 1, len(flat)), positions]
        return self._forward("batch_prefill", inputs, seq_ids, lengths, (1, len(seq_ids), self.vocab_size))[0]

    def batch_decode(self, seq_ids: list[int], token_ids: list[int]) -> np.ndarray:
        if len(seq_ids) > self.max_batch_size:
            raise GenerationError(f"batch of {len(seq_ids)} exceeds max batch size {self.max_batch_size}.")
        if self.serial_batch_decode and len(seq_ids) > 1:
            return np.stack([self.decode(seq_id, token) for seq_id, token in zip(seq_ids, token_ids, strict=True)])
        for seq_id in seq_ids:
            self._check_room(seq_id, 1)
        embeds = self._embed(token_ids, len(seq_ids), 1)
        shape = (len(seq_ids), 1, self.vocab_size)
        return self._forward("batch_decode", [embeds], seq_ids, [1] * len(seq_ids), shape)[:, 0]
