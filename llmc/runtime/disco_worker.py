"""One disco worker process (``python -m llmc.runtime.disco_worker <id> <workers> <groups> <rfd> <wfd>``, started
by ``tvm.runtime.disco.ProcessSession``): TVM's worker loop with llmc's functions registered first, the CPU
collectives (``llmc.runtime.cpu_ccl``) and ``llmc.disco.random_params``. The controller imports this module too:
its own thread runs worker 0."""

from __future__ import annotations

import json
import sys

import numpy as np
import tvm
from tvm_ffi import get_global_func, register_global_func

import llmc.runtime.cpu_ccl  # noqa: F401 - registers runtime.disco..<collective>


@register_global_func("llmc.disco.random_params", override=True)
def random_params(specs_json: str, seed: int) -> list:
    """A shard's weights drawn where it runs (``--random-weights`` artifacts): ``[[name, shape, dtype], ...]``,
    each worker from its own seed (``seed`` + worker id), on the worker's device."""
    device = get_global_func("runtime.disco.device")()
    rng = np.random.default_rng(seed + int(get_global_func("runtime.disco.worker_rank")()))
    params = []
    for _name, shape, dtype in json.loads(specs_json):
        if dtype in ("uint32", "uint8"):  # packed quantized codes: any bit pattern is valid
            array = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=np.uint64).astype(dtype)
        else:
            array = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)
        params.append(tvm.runtime.tensor(array, device))
    return params


def main() -> None:
    if len(sys.argv) != 6:
        sys.exit("usage: python -m llmc.runtime.disco_worker <worker_id> <workers> <groups> <read_fd> <write_fd>")
    worker_id, workers, groups, reader, writer = (int(arg) for arg in sys.argv[1:])
    get_global_func("runtime.disco.WorkerProcess")(worker_id, workers, groups, reader, writer)


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyboardInterrupt):
        pass
