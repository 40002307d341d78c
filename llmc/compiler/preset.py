"""What a target is: the ``TargetPreset`` record and the ``Backend`` interface it carries.

``backends.py`` implements the backends, ``targets.py`` names the presets; both import this module,
which imports neither. Nothing here imports TVM at module level: ``prepare`` must run before ``import tvm``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Backend:
    """A shared library TVM's runtime loads on this machine's CPU (``llvm``): TVM's defaults throughout."""

    runs_here = True  # False: cross-compiled (phone, Mac, browser); `llmc run` and `llmc bench` refuse it

    def prepare(self, preset: TargetPreset) -> None:
        """Set up the build machine; runs before anything imports TVM."""

    @contextlib.contextmanager
    def build_context(self, preset: TargetPreset) -> Iterator[None]:
        """Settings ``relax.build`` runs under; a missing tool fails here, before the build."""
        yield

    def export(self, executable, preset: TargetPreset, out_file: Path) -> None:
        executable.export_library(str(out_file))

    def verify(self, preset: TargetPreset, out_file: Path, system_lib_prefix: str | None) -> None:
        """Check the written library before the artifact is kept."""

    def runs_on(self, preset: TargetPreset, library: str) -> dict:
        """Where the library can run, for ``llmc-config.json``: ``here`` (TVM's runtime on a machine like
        this one loads it), ``requires`` (a TVM global function that runtime must have, or None) and
        ``message`` (the error when it cannot load); for x86 CPU code ``cpu``: the CPU it was built for
        and the extensions it may use, which the runtime checks before loading it."""
        from llmc.compiler.cpu import cpu_record

        cpu = cpu_record(preset.tvm_target())
        return {"here": True, "requires": None, "message": "", **({"cpu": cpu} if cpu else {})}


HOST = Backend()


@dataclass(frozen=True)
class TargetPreset:
    """A named build target."""

    name: str
    description: str
    target: dict
    library_suffix: str = ".so"
    device: str = "cpu"
    host: dict = field(default_factory=dict)
    cuda_archs: tuple[str, ...] = ()  # more than one: a fatbin with SASS for each (+ PTX of the first)
    system_lib: bool = False  # a static library of objects that registers into the app's system lib
    note: str = ""  # printed after a build (e.g. what to do with a .tar on another machine)
    backend: Backend = HOST  # prepare, build context, export, verify, where it runs

    @property
    def runs_here(self) -> bool:
        """False: cross-compiled for a phone, a Mac or a browser; `llmc run` and `llmc bench` refuse it."""
        return self.backend.runs_here

    def tvm_target(self):
        import tvm

        target = dict(self.target)
        if target.get("mcpu") == "native":
            from llmc.compiler.cpu import native_cpu

            target.update(native_cpu())  # this CPU's name, less the extensions it lacks
        if target.get("num-cores") == "native":
            target["num-cores"] = os.cpu_count() or 1
        if self.host:
            return tvm.target.Target(target, host=self.host)
        return tvm.target.Target(target)
