"""A collective library for disco workers on CPUs: Gloo (through ``torch.distributed``), registered under the
names TVM's collectives dispatch to, so a tensor-parallel library built for NCCL runs unchanged on CPU shards.

A compiled ``ccl.allreduce`` calls ``runtime.disco.allreduce``, which calls ``runtime.disco.<ccl>.allreduce``
with ``<ccl>`` the worker's CCL name. TVM 0.27 sets that name only in its C++ NCCL/RCCL initialisation, so a
worker with no CCL looks the functions up under the empty name (``runtime.disco..allreduce``): this module
registers those (allreduce, allgather, broadcast/scatter from worker 0, gather to worker 0). It is imported in
every worker process (``llmc.runtime.disco_worker``) and in the controller, whose thread runs worker 0.
Torch is imported only when the CCL starts (``llmc.disco.cpu_ccl_init``, called on every worker).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta

from tvm_ffi import get_global_func, register_global_func

from llmc.errors import LlmcError

NAME = ""  # the worker's CCL name when none was initialised (TVM's builtins look up runtime.disco.<NAME>.<op>)
PREFIX = f"runtime.disco.{NAME}."
TIMEOUT = timedelta(seconds=120)  # a worker that died leaves the others in a collective: fail, never hang


@dataclass
class _Worker:
    group: object  # torch's ProcessGroupGloo
    store: object
    rank: int
    world: int


# each worker's Gloo group by native thread: worker 0 is a C++ thread of the controller (one per session), and a
# Python callback from a C++ thread gets a fresh thread state each time, so threading.local would forget it
_workers: dict[int, _Worker] = {}


def _torch_distributed():
    try:
        import torch.distributed as dist
    except ImportError as err:
        raise LlmcError(
            "a tensor-parallel artifact on CPU needs torch for its Gloo collectives: pip install torch "
            "(the CPU wheel), or run it on GPUs (NCCL)."
        ) from err
    return dist


def _me() -> _Worker:
    worker = _workers.get(threading.get_ident())
    if worker is None:
        raise LlmcError("the CPU collectives were used before llmc.disco.cpu_ccl_init joined this worker")
    return worker


def _torch(tensor):
    import torch

    return torch.from_dlpack(tensor)


@register_global_func("llmc.disco.cpu_ccl_init", override=True)
def init(port: int) -> None:
    """Join this worker to a Gloo group of every worker of its session (rendezvous at 127.0.0.1:``port``; no
    torch.distributed default group, so several sessions may live in one controller)."""
    dist = _torch_distributed()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the workers share this machine: loopback only
    rank = int(get_global_func("runtime.disco.worker_rank")())
    world = int(get_global_func("runtime.disco.world_size")())
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=TIMEOUT)
    _workers[threading.get_ident()] = _Worker(dist.ProcessGroupGloo(store, rank, world, TIMEOUT), store, rank, world)


@register_global_func("llmc.disco.cpu_ccl_shutdown", override=True)
def shutdown() -> None:
    _workers.pop(threading.get_ident(), None)


def _wait(work) -> None:
    work.wait()


@register_global_func(PREFIX + "allreduce", override=True)
def allreduce(send, kind: int, in_group: bool, recv) -> None:
    dist = _torch_distributed()
    out = _torch(recv)
    out.copy_(_torch(send))
    opts = dist.AllreduceOptions()
    ops = dist.ReduceOp
    opts.reduceOp = {0: ops.SUM, 1: ops.PRODUCT, 2: ops.MIN, 3: ops.MAX, 4: ops.SUM}[kind]
    _wait(_me().group.allreduce([out], opts))
    if kind == 4:  # avg
        out.div_(_me().world)


@register_global_func(PREFIX + "allgather", override=True)
def allgather(send, in_group: bool, recv) -> None:
    """Every worker's ``send`` concatenated along axis 0 into ``recv``, in worker order."""
    out = _torch(recv)
    pieces = list(out.reshape(_me().world, -1).unbind())
    _wait(_me().group.allgather([pieces], [_torch(send).reshape(-1)]))


@register_global_func(PREFIX + "broadcast_from_worker0", override=True)
def broadcast_from_worker0(send, in_group: bool, recv) -> None:
    dist = _torch_distributed()
    out = _torch(recv)
    if _me().rank == 0 and send is not None:
        source = _torch(send)
        if source.data_ptr() != out.data_ptr():
            out.copy_(source)
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    _wait(_me().group.broadcast([out.reshape(-1)], opts))


@register_global_func(PREFIX + "scatter_from_worker0", override=True)
def scatter_from_worker0(send, in_group: bool, recv) -> None:
    """Worker 0's ``send`` ``[workers, ...]``: slice ``i`` to worker ``i``'s ``recv``."""
    dist = _torch_distributed()
    opts = dist.ScatterOptions()
    opts.rootRank = 0
    pieces = [list(_torch(send).reshape(_me().world, -1).unbind())] if _me().rank == 0 else []
    _wait(_me().group.scatter([_torch(recv).reshape(-1)], pieces, opts))


@register_global_func(PREFIX + "gather_to_worker0", override=True)
def gather_to_worker0(send, in_group: bool, recv) -> None:
    dist = _torch_distributed()
    opts = dist.GatherOptions()
    opts.rootRank = 0
    pieces = [list(_torch(recv).reshape(_me().world, -1).unbind())] if _me().rank == 0 else []
    _wait(_me().group.gather(pieces, [_torch(send).reshape(-1)], opts))
