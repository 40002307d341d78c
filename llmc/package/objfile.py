"""Read the static libraries llmc builds for phones: a tar of ELF / Mach-O objects.

Small parsers of our own (no binutils needed): the header's format and architecture, and the
defined / undefined global symbols of each object. ``check_system_library`` uses them to verify
what TVM wrote for a system-lib build before the artifact is kept; ``macho_symbols`` also serves
``staticlib``, which edits Mach-O symbol entries in place.
"""

from __future__ import annotations

import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmc.errors import LlmcError

ELF_MAGIC = b"\x7fELF"
ELF_MACHINES = {183: "aarch64", 62: "x86_64"}
MACHO_MAGIC_64 = 0xFEEDFACF
MACHO_CPUS = {0x0100000C: "arm64", 0x01000007: "x86_64"}
LC_SYMTAB = 0x2


@dataclass
class ObjectFile:
    """One object file: ``format`` is ``elf`` or ``macho``; symbol names without Mach-O's leading ``_``."""

    name: str
    format: str
    arch: str
    defined: set[str] = field(default_factory=set)
    undefined: set[str] = field(default_factory=set)


def parse_object(name: str, data: bytes) -> ObjectFile:
    """Header and global symbols of an ELF64 or Mach-O 64 little-endian object."""
    if data[:4] == ELF_MAGIC:
        return _parse_elf(name, data)
    if is_macho64(data):
        return _parse_macho(name, data)
    raise LlmcError(f"{name}: neither an ELF nor a Mach-O 64-bit object (starts with {data[:4]!r}).")


def _parse_elf(name: str, data: bytes) -> ObjectFile:
    if data[4] != 2 or data[5] != 1:
        raise LlmcError(f"{name}: not a 64-bit little-endian ELF object.")
    machine = struct.unpack_from("<H", data, 18)[0]
    shoff = struct.unpack_from("<Q", data, 40)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    obj = ObjectFile(name, "elf", ELF_MACHINES.get(machine, f"machine-{machine}"))
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 2:  # SHT_SYMTAB
            continue
        strtab_offset = sections[link][4]
        for i in range(size // entsize):
            st_name, st_info, _, st_shndx, _, _ = struct.unpack_from("<IBBHQQ", data, offset + i * entsize)
            if st_info >> 4 == 0 or st_name == 0:  # local symbols are not linkable names
                continue
            symbol = _cstring(data, strtab_offset + st_name)
            (obj.undefined if st_shndx == 0 else obj.defined).add(symbol)
    return obj


def is_macho64(data: bytes) -> bool:
    return len(data) >= 32 and struct.unpack_from("<I", data)[0] == MACHO_MAGIC_64


@dataclass(frozen=True)
class MachOSymbol:
    """One ``nlist_64`` entry: ``offset`` of the entry in the file, ``name`` as stored (leading ``_``)."""

    offset: int
    name: str
    n_type: int
    n_desc: int


def macho_symbols(data: bytes) -> Iterator[MachOSymbol]:
    """The symbol table entries of a 64-bit little-endian Mach-O object."""
    ncmds = struct.unpack_from("<I", data, 16)[0]
    offset = 32
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", data, offset)
        if cmd == LC_SYMTAB:
            symoff, nsyms, stroff, _ = struct.unpack_from("<IIII", data, offset + 8)
            for i in range(nsyms):
                entry = symoff + i * 16
                n_strx, n_type, _, n_desc = struct.unpack_from("<IBBH", data, entry)
                yield MachOSymbol(entry, _cstring(data, stroff + n_strx), n_type, n_desc)
        offset += cmdsize


def _parse_macho(name: str, data: bytes) -> ObjectFile:
    cputype = struct.unpack_from("<i", data, 4)[0]
    obj = ObjectFile(name, "macho", MACHO_CPUS.get(cputype & 0xFFFFFFFF, f"cpu-{cputype:#x}"))
    for symbol in macho_symbols(data):
        if symbol.n_type & 0xE0 or not symbol.n_type & 0x01:  # debug entries; non-external symbols
            continue
        (obj.undefined if symbol.n_type & 0x0E == 0 else obj.defined).add(symbol.name.removeprefix("_"))
    return obj


def _cstring(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode("utf-8", "replace")


def read_static_library(path: Path) -> list[ObjectFile]:
    """Every ``.o`` in a tar written by TVM's ``export_library`` with a ``.tar`` suffix."""
    try:
        with tarfile.open(path) as tar:
            return [
                parse_object(f"{path.name}:{member.name}", tar.extractfile(member).read())
                for member in tar.getmembers()
                if member.isfile() and member.name.endswith(".o")
            ]
    except (tarfile.TarError, OSError) as err:
        raise LlmcError(f"{path}: cannot read the library archive ({err}).") from err


def library_symbol(prefix: str) -> str:
    """The symbol a system-lib build registers for ``prefix``: TVM's packed library blob (VM + kernels).

    The app's ``tvm::ffi::SystemLib(prefix)`` finds the model by it; a constructor in the same object
    registers it through ``TVMFFIEnvModRegisterSystemLibSymbol``.
    """
    return f"{prefix}__tvm_ffi__library_bin"


def check_system_library(path: Path, prefix: str, fmt: str, arch: str) -> list[ObjectFile]:
    """Objects of ``path``, after checking format, architecture and that every symbol carries ``prefix``."""
    objects = read_static_library(path)
    if not objects:
        raise LlmcError(f"{path}: holds no object files.")
    for obj in objects:
        if (obj.format, obj.arch) != (fmt, arch):
            raise LlmcError(f"{obj.name}: is {obj.format} {obj.arch}, expected {fmt} {arch}.")
    defined = set().union(*(obj.defined for obj in objects))
    if library_symbol(prefix) not in defined:
        raise LlmcError(f"{path}: no system-lib entry {library_symbol(prefix)}; TVM did not build a system library.")
    # every TVM symbol carries the prefix, so two models link into one app without clashes
    stray = sorted(s for s in defined if s.startswith("__tvm_ffi_") and not s.startswith(f"__tvm_ffi_{prefix}"))
    if stray:
        raise LlmcError(f"{path}: symbols without the prefix {prefix!r}: {', '.join(stray[:3])}.")
    return objects
