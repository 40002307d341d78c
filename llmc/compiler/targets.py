"""Target presets by name: the TVM target, the library file kind and the host (``llmc targets``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llmc.errors import LlmcError


@dataclass(frozen=True)
class TargetPreset:
    """A named build target."""

    name: str
    description: str
    target: dict
    library_suffix: str = ".so"
    device: str = "cpu"
    host: dict = field(default_factory=dict)

    def tvm_target(self):
        import tvm

        target = dict(self.target)
        if target.get("mcpu") == "native":
            target["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
        if target.get("num-cores") == "native":
            target["num-cores"] = os.cpu_count() or 1
        if self.host:
            return tvm.target.Target(target, host=self.host)
        return tvm.target.Target(target)


TARGETS: dict[str, TargetPreset] = {
    "llvm": TargetPreset(
        "llvm",
        "CPU of this machine (x86-64/aarch64 via LLVM), shared library",
        # float sums may be reassociated, so LLVM vectorizes dot products; no nnan/ninf (masks use -inf)
        {
            "kind": "llvm",
            "mcpu": "native",
            "num-cores": "native",
            "fast-math-reassoc": True,
            "fast-math-contract": True,
        },
    ),
}


def get_target(name: str) -> TargetPreset:
    if name not in TARGETS:
        raise LlmcError(f"unknown target {name!r}; known: {', '.join(TARGETS)} (see `llmc targets`).")
    return TARGETS[name]
