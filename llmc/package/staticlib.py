"""Merge the object files of several phone model libraries (``.tar`` of ``.o``) into one static archive.

Each model's ``.tar`` holds ``lib0.o`` (kernels' host code) and ``<prefix>devc.o`` (device code +
VM bytecode, registered by a static constructor). Members are renamed ``<prefix><name>`` so that
several models fit in one archive. TVM emits the fp16 conversion helpers ``__extendhfsf2`` /
``__truncsfhf2`` into every ``lib0.o``: weak in ELF, but strong in Mach-O, so two iPhone models
would clash at link time; llmc marks them weak (``N_WEAK_DEF``) in the Mach-O symbol table.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

from llmc.errors import LlmcError
from llmc.package.objfile import is_macho64, macho_symbols

N_EXT = 0x01
N_TYPE = 0x0E
N_SECT = 0x0E
N_WEAK_DEF = 0x0080
SHARED_HELPERS = ("___extendhfsf2", "___truncsfhf2")  # Mach-O names carry a leading underscore


def extract_objects(library: Path, prefix: str, dest: Path) -> list[Path]:
    """Unpack the ``.o`` members of a model ``.tar`` into ``dest`` as ``<prefix><name>``."""
    dest.mkdir(parents=True, exist_ok=True)
    objects = []
    try:
        with tarfile.open(library) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if not member.isfile() or not name.endswith(".o"):
                    continue
                out = dest / (name if name.startswith(prefix) else prefix + name)
                with tar.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                objects.append(out)
    except (tarfile.TarError, OSError) as err:
        raise LlmcError(f"{library}: cannot read the model library ({err}). Recompile it with `llmc compile`.") from err
    if not objects:
        raise LlmcError(f"{library}: holds no object files; it is not a phone (system-lib) build.")
    for obj in objects:
        weaken_macho_symbols(obj, SHARED_HELPERS)
    return objects


def weaken_macho_symbols(path: Path, names: tuple[str, ...]) -> int:
    """Set ``N_WEAK_DEF`` on the defined external symbols ``names`` of a 64-bit Mach-O object; return how many."""
    data = bytearray(path.read_bytes())
    if not is_macho64(data):
        return 0
    changed = 0
    for symbol in macho_symbols(data):
        if (symbol.n_type & N_EXT) and (symbol.n_type & N_TYPE) == N_SECT and symbol.name in names:
            struct.pack_into("<H", data, symbol.offset + 6, symbol.n_desc | N_WEAK_DEF)
            changed += 1
    if changed:
        path.write_bytes(bytes(data))
    return changed


def find_archiver() -> list[str] | None:
    """``llvm-ar`` (any object format), else GNU ``ar``; None when neither is installed."""
    for tool in ("llvm-ar", *(f"llvm-ar-{v}" for v in range(22, 13, -1)), "ar"):
        path = shutil.which(tool)
        if path:
            return [path]
    return None


def make_archive(objects: list[Path], out: Path, darwin: bool) -> str | None:
    """Write ``out`` (a static ``.a`` of ``objects``); returns the tool used, or None when none could."""
    tool = find_archiver()
    if tool is None:
        return None
    is_llvm = "llvm-ar" in Path(tool[0]).name
    command = [*tool, "rcs"]
    if is_llvm:
        command.append(f"--format={'darwin' if darwin else 'gnu'}")
    elif darwin:
        return None  # GNU ar cannot index Mach-O objects
    done = subprocess.run([*command, str(out), *map(str, objects)], capture_output=True, text=True)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        return None
    return Path(tool[0]).name
