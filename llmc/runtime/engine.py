"""A compiled model in memory: library + weights + paged KV cache, with per-sequence forward calls."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime import ShapeTuple
from tvm.runtime.vm import VirtualMachine

from llmc.artifact import read_config
from llmc.artifact_checks import verify_artifact
from llmc.cpu_features import missing_extensions
from llmc.errors import ArtifactError, GenerationError
from llmc.memory import PAGE_SIZE, available_host_bytes, check_fits, evicting_window, kv_tokens_per_sequence


def use_every_core() -> None:
    """TVM's CPU thread pool defaults to half the logical cores (it assumes hyper-threading): on a 2-vCPU
    machine llmc ran on one thread. Use every core this process may run on, unless TVM_NUM_THREADS says
    otherwise; it must be set before the first parallel kernel creates the pool."""
    if "TVM_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["TVM_NUM_THREADS"] = str(cores or 1)


use_every_core()


def check_loadable_here(folder: Path, config: dict) -> None:
    """A clear error for an artifact built for a phone, a Mac or a browser, or for a CPU with extensions
    this one lacks: its library cannot load (or would die of SIGILL) here.

    The compiler records the facts in ``runs_on`` (artifacts written before it ran on CPU or CUDA).
    """
    runs_on = config.get("runs_on") or {"here": True}
    requires = runs_on.get("requires")
    if not runs_on["here"] or (requires is not None and tvm.get_global_func(requires, allow_missing=True) is None):
        raise ArtifactError(f"{folder}: {runs_on['message']}")
    cpu = runs_on.get("cpu")
    lacking = missing_extensions(cpu["extensions"]) if cpu else []
    if lacking:
        portable = "" if config.get("target") == "llvm:generic" else " or --target llvm:generic (any x86-64 with AVX2)"
        raise ArtifactError(
            f"{folder}: compiled for CPU {cpu['mcpu']} (target {config.get('target')}), but this CPU lacks "
            f"{', '.join(lacking)}; its library would crash here. Recompile it on this machine with "
            f"--target llvm{portable}."
        )


def open_device(folder: Path, config: dict, device: str):
    """The TVM device, or a clear error when it is absent here or is not the kind the artifact was built for."""
    try:
        dev = tvm.device(device)
    except Exception as err:  # noqa: BLE001 - TVM raises ValueError or its own errors for unknown names
        raise ArtifactError(f"{folder}: unknown device {device!r} ({err}); use cpu or cuda.") from err
    built_for = config.get("device")
    if built_for in ("cpu", "cuda") and dev.dlpack_device_type() != tvm.device(built_for).dlpack_device_type():
        raise ArtifactError(
            f"{folder}: compiled for target {config.get('target')} ({built_for}), not device {device!r}; "
            f"run it with --device {built_for}, or compile it for the device you have."
        )
    try:
        present = dev.exist
    except Exception:  # noqa: BLE001 - no driver at all
        present = False
    if not present:
        raise ArtifactError(
            f"{folder}: device {device!r} is not present on this machine (compiled for {config.get('target')}). "
            "Run it where that device is, or compile with --target llvm to run on this CPU."
        )
    return dev


def device_memory(dev) -> int | None:
    """Bytes available for the model on ``dev``: host RAM for the CPU, total memory for a GPU."""
    if dev.dlpack_device_type() == 1:  # kDLCPU
        return available_host_bytes()
    try:
        return int(dev.total_global_memory)
    except Exception:  # noqa: BLE001 - not every device reports it
        return None


def _builtin(name: str):
    return tvm.get_global_func(name)


class LoadedArtifact:
    """What every engine reads from an artifact's ``llmc-config.json`` before loading its library: the bounds
    callers size requests by, and the device."""

    def _read_artifact(self, artifact_dir: str | Path, device: str, max_batch_size: int | None) -> dict:
        """Set the folder, config, bounds and device; returns the ``model`` section."""
        self.folder = Path(artifact_dir)
        self.config = read_config(self.folder)
        check_loadable_here(self.folder, self.config)
        model = self.config["model"]
        self.vocab_size, self.hidden_size = model["vocab_size"], model["hidden_size"]
        self.context_window, self.prefill_chunk = self.config["context_window"], self.config["prefill_chunk"]
        # an all-sliding model's cache evicts: each sequence keeps its last window - 1 tokens, so it may run
        # past the context window (RoPE at positions within the window: only relative positions matter)
        self.sliding_window = evicting_window(self.config)
        if self.sliding_window and self.prefill_chunk >= self.sliding_window:
            raise ArtifactError(
                f"{self.folder}: prefill chunk {self.prefill_chunk} does not fit the sliding window "
                f"{self.sliding_window} its cache slides by. Re-run `llmc compile`."
            )
        # never above the bound the library's memory was planned for
        self.max_batch_size = min(max_batch_size or self.config["max_batch_size"], self.config["max_batch_size"])
        self.device = open_device(self.folder, self.config, device)
        self.on_gpu = self.device.dlpack_device_type() != tvm.runtime.cpu().dlpack_device_type()
        # TVM 0.27's GPU caches with sliding-window layers fail a multi-sequence decode ("CopyDataFromTo only
        # support contiguous array"): there, a batch decodes one sequence at a time (artifacts older than
        # ``sliding_cache``: any sliding layer)
        sliding = self.config.get("sliding_cache", "sliding_attention" in (model.get("layer_types") or []))
        self.serial_batch_decode = self.on_gpu and sliding
        return model


class Engine(LoadedArtifact):
    """Runs the exported functions of one artifact on one device."""

    def __init__(
        self,
        artifact_dir: str | Path,
        device: str = "cpu",
        max_batch_size: int | None = None,
        seed: int = 0,
        kv_tokens: int | None = None,
    ):
        """Load an artifact; ``kv_tokens`` sizes the KV cache for all sequences (default: the context window;
        an evicting cache: a window for each of ``max_batch_size`` sequences)."""
        self._read_artifact(artifact_dir, device, max_batch_size)
        shards = (self.config.get("tensor_parallel") or {}).get("shards", 1)
        if shards > 1:  # its library's collectives need disco workers, one per shard
            raise ArtifactError(
                f"{self.folder}: compiled for {shards} tensor-parallel shards; load it with "
                "llmc.runtime.disco_engine.open_engine (as llmc run/chat/serve/bench do)."
            )
        check_fits(self.config, str(self.folder), device_memory(self.device), kv_tokens)
        verify_artifact(self.folder, self.config)  # sizes, paths, checksums: before any library or weight loads
        library = self.folder / self.config["library"]
        self.vm = VirtualMachine(tvm.runtime.load_module(str(library)), self.device)
        self.params = self._random_params(seed) if self.config.get("random_weights") else self._load_params()
        self._kv_add = _builtin("vm.builtin.kv_state_add_sequence")
        self._kv_remove = _builtin("vm.builtin.kv_state_remove_sequence")
        self._kv_begin = _builtin("vm.builtin.kv_state_begin_forward")
        self._kv_end = _builtin("vm.builtin.kv_state_end_forward")
        self._kv_clear = _builtin("vm.builtin.kv_state_clear")
        self._seq_len = _builtin("vm.builtin.attention_kv_cache_get_sequence_length")
        self._enable_sliding = _builtin("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")
        self._reshape = _builtin("vm.builtin.reshape")
        self._fed: dict[int, int] = {}  # tokens fed per sequence (an evicting cache reports only its window)
        self.kv_cache = self.vm["create_paged_kv_cache"](
            ShapeTuple([self.max_batch_size]),
            ShapeTuple([kv_tokens or self._default_kv_tokens()]),
            ShapeTuple([self.prefill_chunk]),
            ShapeTuple([PAGE_SIZE]),
            ShapeTuple([1 if self.sliding_window else 0]),
        )

    def _default_kv_tokens(self) -> int:
        """The context window (shared by the sequences), or with eviction a window for each of a full batch."""
        if self.sliding_window:
            return self.max_batch_size * kv_tokens_per_sequence(self.config)
        return self.context_window

    def _random_params(self, seed: int) -> list:
        """Weights drawn from ``seed`` where the model runs (benchmarks of full-size shapes, no download)."""
        rng = np.random.default_rng(seed)
        params = []
        for _name, shape, dtype in self.config["param_specs"]:
            if dtype in ("uint32", "uint8"):  # packed quantized codes: any bit pattern is valid
                array = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=np.uint64).astype(dtype)
            else:
                array = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)
            params.append(tvm.runtime.tensor(array, self.device))
        return params

    def _load_params(self) -> list:
        cache_json = self.folder / "tensor-cache.json"
        if not cache_json.exists():
            raise ArtifactError(f"{cache_json}: missing; the artifact has no weights. Re-run `llmc compile`.")
        try:
            _builtin("vm.builtin.tensor_cache.load")(
                str(self.folder), self.device.dlpack_device_type(), self.device.index
            )
            params = _builtin("vm.builtin.param_array_from_cache_by_name")(self.config["params"])
        except Exception as err:  # TVM raises its own error classes; name the folder either way
            raise ArtifactError(f"{self.folder}: cannot load weights ({err}). Re-run `llmc compile`.") from err
        finally:
            _builtin("vm.builtin.tensor_cache.clear")()
        return params

    # ------------------------------------------------------------------ sequences
    def reset(self) -> None:
        """Drop every sequence from the KV cache."""
        self._kv_clear(self.kv_cache)
        self._fed.clear()

    def add_sequence(self, seq_id: int) -> None:
        self._kv_add(self.kv_cache, seq_id)
        if self.sliding_window:
            # TVM keeps this many cached tokens (no attention sink); the current token makes the window
            self._enable_sliding(self.kv_cache, seq_id, self.sliding_window - 1, 0)
            self._fed[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        self._kv_remove(self.kv_cache, seq_id)
        self._fed.pop(seq_id, None)

    def fork_sequence(self, parent: int, child: int, position: int) -> None:
        """``child`` starts as ``parent``'s first ``position`` tokens (pages shared, a partial page copied)."""
        _builtin("vm.builtin.kv_state_fork_sequence")(self.kv_cache, parent, child, position)

    def available_pages(self) -> int:
        """Free pages of the KV cache."""
        return int(_builtin("vm.builtin.attention_kv_cache_get_num_available_pages")(self.kv_cache))

    def sequence_length(self, seq_id: int) -> int:
        """Tokens fed to the sequence (an evicting cache holds only the last window of them)."""
        if seq_id in self._fed:
            return self._fed[seq_id]
        return int(self._seq_len(self.kv_cache, seq_id))

    @property
    def max_sequence_length(self) -> int | None:
        """The most tokens a sequence may reach: the context window, or None when the cache evicts."""
        return None if self.sliding_window else self.context_window

    def _fed_tokens(self, seq_ids: list[int], counts: list[int]) -> None:
        for seq_id, count in zip(seq_ids, counts):
            if seq_id in self._fed:
                self._fed[seq_id] += count

    # ------------------------------------------------------------------ forward
    def _embed(self, token_ids: list[int], batch: int, length: int):
        array = np.asarray(token_ids, dtype=np.int64)
        outside = array[(array < 0) | (array >= self.vocab_size)]  # would read outside the embedding table
        if outside.size:
            raise GenerationError(f"token id {int(outside[0])} is outside the vocabulary of {self.vocab_size}.")
        ids = tvm.runtime.tensor(array.astype("int32"), self.device)
        embeds = self.vm["embed"](ids, self.params)
        return self._reshape(embeds, ShapeTuple([batch, length, self.hidden_size]))

    def _check_room(self, seq_id: int, count: int) -> None:
        if self.sliding_window:
            if count > self.prefill_chunk:
                raise GenerationError(f"a forward of {count} tokens exceeds the prefill chunk {self.prefill_chunk}.")
            return
        if self.sequence_length(seq_id) + count > self.context_window:
            raise GenerationError(
                f"sequence {seq_id} would reach {self.sequence_length(seq_id) + count} tokens; "
                f"the context window is {self.context_window}."
            )

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        """Feed ``token_ids`` (chunked by the prefill chunk); return the last position's logits (vocab,)."""
        if not token_ids:
            raise GenerationError("cannot prefill an empty prompt.")
        logits = None
        for start in range(0, len(token_ids), self.prefill_chunk):
            chunk = token_ids[start : start + self.prefill_chunk]
            self._check_room(seq_id, len(chunk) if self.sliding_window else len(token_ids) - start)
            self._kv_begin(self.kv_cache, ShapeTuple([seq_id]), ShapeTuple([len(chunk)]))
            logits, self.kv_cache = self.vm["prefill"](self._embed(chunk, 1, len(chunk)), self.kv_cache, self.params)
            self._kv_end(self.kv_cache)
            self._fed_tokens([seq_id], [len(chunk)])
        return logits.numpy()[0, 0]

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        """Feed one token; return its logits (vocab,)."""
        self._check_room(seq_id, 1)
        self._kv_begin(self.kv_cache, ShapeTuple([seq_id]), ShapeTuple([1]))
        logits, self.kv_cache = self.vm["decode"](self._embed([token_id], 1, 1), self.kv_cache, self.params)
        self._kv_end(self.kv_cache)
        self._fed_tokens([seq_id], [1])
        return logits.numpy()[0, 0]

    def forward_all(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        """Feed ``token_ids`` (chunked) and return the logits of every position: (len, vocab)."""
        outputs = []
        for start in range(0, len(token_ids), self.prefill_chunk):
            chunk = token_ids[start : start + self.prefill_chunk]
            self._check_room(seq_id, len(chunk) if self.sliding_window else len(token_ids) - start)
            self._kv_begin(self.kv_cache, ShapeTuple([seq_id]), ShapeTuple([len(chunk)]))
            logits, self.kv_cache = self.vm["batch_verify"](
                self._embed(chunk, 1, len(chunk)), self.kv_cache, self.params
            )
            self._kv_end(self.kv_cache)
            self._fed_tokens([seq_id], [len(chunk)])
            outputs.append(logits.numpy()[0])
        return np.concatenate(outputs, axis=0)

    def batch_prefill(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray:
        """Prefill several sequences in one ragged batch (total tokens <= prefill chunk); (n, vocab)."""
        return self._ragged("batch_prefill", seq_ids, prompts)[0]

    @property
    def has_embedding(self) -> bool:
        """The library exports ``batch_hidden`` (compiled with ``--embedding``)."""
        return bool(self.config.get("embedding"))

    def batch_hidden(self, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray:
        """``batch_prefill`` that returns each prompt's last final hidden state; (n, hidden), float32."""
        if not self.has_embedding:
            raise GenerationError(f"{self.folder}: compiled without --embedding; recompile with it for embeddings.")
        return self._ragged("batch_hidden", seq_ids, prompts)

    def _ragged(self, function: str, seq_ids: list[int], prompts: list[list[int]]) -> np.ndarray:
        """``function`` over the prompts as one ragged batch, at each prompt's last token."""
        lengths = [len(p) for p in prompts]
        if sum(lengths) > self.prefill_chunk:
            raise GenerationError(f"batch of {sum(lengths)} tokens exceeds the prefill chunk {self.prefill_chunk}.")
        for seq_id, length in zip(seq_ids, lengths):
            self._check_room(seq_id, length)
        positions = np.cumsum(lengths).astype("int32") - 1
        flat = [t for p in prompts for t in p]
        self._kv_begin(self.kv_cache, ShapeTuple(seq_ids), ShapeTuple(lengths))
        out, self.kv_cache = self.vm[function](
            self._embed(flat, 1, len(flat)), tvm.runtime.tensor(positions, self.device), self.kv_cache, self.params
        )
        self._kv_end(self.kv_cache)
        self._fed_tokens(seq_ids, lengths)
        return out.numpy()

    def batch_decode(self, seq_ids: list[int], token_ids: list[int]) -> np.ndarray:
        """One new token for each sequence; (n, vocab)."""
        if len(seq_ids) > self.max_batch_size:
            raise GenerationError(f"batch of {len(seq_ids)} exceeds max batch size {self.max_batch_size}.")
        if self.serial_batch_decode and len(seq_ids) > 1:
            return np.stack([self.decode(seq_id, token) for seq_id, token in zip(seq_ids, token_ids)])
        for seq_id in seq_ids:
            self._check_room(seq_id, 1)
        self._kv_begin(self.kv_cache, ShapeTuple(seq_ids), ShapeTuple([1] * len(seq_ids)))
        logits, self.kv_cache = self.vm["batch_decode"](
            self._embed(token_ids, len(seq_ids), 1), self.kv_cache, self.params
        )
        self._kv_end(self.kv_cache)
        self._fed_tokens(seq_ids, [1] * len(seq_ids))
        return logits.numpy()[:, 0]
