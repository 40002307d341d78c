"""x86 CPU targets: ``mcpu=native`` made safe for this CPU, and the record of what a library needs.

``--target llvm`` builds for this machine's CPU by name (``znver4``, ``sapphirerapids``...). LLVM
picks the name from the CPU's family and model, but a virtual machine may hide extensions the
name implies; as clang's ``-march=native`` does, every extension of that name this CPU lacks is
switched off in ``mattr``. ``cpu_record`` is what ``llmc-config.json`` stores (``runs_on.cpu``):
the CPU name, ``mattr`` and the extensions the library may use, which the runtime checks before
loading it (``llmc.cpu_features``).
"""

from __future__ import annotations

from llmc.cpu_features import EXTENSIONS, host_extensions


def llvm_extensions(target) -> list[str]:
    """The ``EXTENSIONS`` LLVM enables for an x86 target's ``mcpu`` + ``mattr`` (sorted)."""
    from tvm.target import codegen

    enabled = set(codegen.llvm_get_cpu_features(target))
    return sorted(name for name in EXTENSIONS if name in enabled)


def native_cpu() -> dict:
    """``mcpu`` (this CPU's LLVM name) and ``mattr`` switching off what LLVM assumes and the CPU lacks."""
    import tvm
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    have = host_extensions()
    if have is None:  # not x86-64 Linux: LLVM's name alone
        return {"mcpu": mcpu}
    assumed = llvm_extensions(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    absent = [f"-{name}" for name in assumed if name not in have]
    return {"mcpu": mcpu, **({"mattr": absent} if absent else {})}


def is_x86_cpu_target(target) -> bool:
    """An LLVM target whose code runs on an x86-64 CPU (not a GPU target's host code, not wasm/arm)."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    return (str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()).startswith("x86_64")


def cpu_record(target) -> dict | None:
    """For ``runs_on.cpu``: the CPU an x86 library was built for and the extensions it may use."""
    if not is_x86_cpu_target(target):
        return None
    mattr = [str(flag) for flag in target.attrs.get("mattr", [])]
    return {
        "mcpu": str(target.attrs.get("mcpu", "")) or "x86-64",
        **({"mattr": mattr} if mattr else {}),
        "extensions": llvm_extensions(target),
    }
