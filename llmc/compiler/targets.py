"""Target presets by name: the TVM target, the library file kind and the host (``llmc targets``)."""

from __future__ import annotations

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
        if self.host:
            return tvm.target.Target(target, host=self.host)
        return tvm.target.Target(target)


TARGETS: dict[str, TargetPreset] = {
    "llvm": TargetPreset(
        "llvm", "CPU of this machine (x86-64/aarch64 via LLVM), shared library", {"kind": "llvm", "mcpu": "native"}
    ),
}


def get_target(name: str) -> TargetPreset:
    if name not in TARGETS:
        raise LlmcError(f"unknown target {name!r}; known: {', '.join(TARGETS)} (see `llmc targets`).")
    return TARGETS[name]
