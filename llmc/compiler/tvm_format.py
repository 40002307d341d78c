"""Readers and writers for TVM's binary formats that llmc rewrites: the library blob and device modules.

All follow TVM's ``support::Serializer`` stream: little-endian integers, strings and byte strings as
``u64 length + bytes``, vectors/arrays as ``u64 count + items``, maps as a vector of key/value pairs.

* library blob (``__tvm_ffi__library_bin``): ``u64 nbytes``, import tree (``indptr: vec<u64>``,
  ``children: vec<u64>``), then per module ``kind: str`` and, unless kind is ``_lib``, ``bytes``.
* FunctionInfo: ``name: str``, ``arg_types: vec<DLDataType (u8 code, u8 bits, u16 lanes)>``,
  ``launch_param_tags: vec<str>``, ``arg_extra_tags: vec<i32>``.
* webgpu module: ``fmap: map<str, FunctionInfo>``, ``smap: map<str, bytes (WGSL)>``.
* vulkan module: ``fmt: str ("vulkan")``, ``fmap``, ``smap: map<str, bytes>`` where each value is a
  SPIRVShader: ``flag: u32`` (bit 0: scalars in a uniform buffer) + ``words: vec<u32>``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from llmc.errors import LlmcError

HANDLE = (3, 64, 1)  # kDLOpaqueHandle: a buffer argument
FLAG_USE_UBO = 1  # 1 << ShaderMetaDataFlagMask::kUseUBO


class FormatError(LlmcError):
    """A TVM binary blob did not parse."""


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError(f"TVM blob truncated: wanted {n} bytes at offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def bytes_(self) -> bytes:
        return self.take(self.u64())

    def str_(self) -> str:
        return self.bytes_().decode()

    def u64_vec(self) -> list[int]:
        n = self.u64()
        return list(struct.unpack(f"<{n}Q", self.take(8 * n)))

    def u32_vec(self) -> list[int]:
        n = self.u64()
        return list(struct.unpack(f"<{n}I", self.take(4 * n)))

    def at_end(self) -> bool:
        return self.pos == len(self.data)


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack("<I", v))

    def i32(self, v: int) -> None:
        self.parts.append(struct.pack("<i", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack("<Q", v))

    def bytes_(self, b: bytes) -> None:
        self.u64(len(b))
        self.parts.append(b)

    def str_(self, s: str) -> None:
        self.bytes_(s.encode())

    def u64_vec(self, vs: list[int]) -> None:
        self.u64(len(vs))
        self.parts.append(struct.pack(f"<{len(vs)}Q", *vs))

    def u32_vec(self, vs: list[int]) -> None:
        self.u64(len(vs))
        self.parts.append(struct.pack(f"<{len(vs)}I", *vs))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class FunctionInfo:
    """What TVM's device runtimes know about a kernel: argument dtypes and launch parameter tags."""

    name: str
    arg_types: list[tuple[int, int, int]]
    launch_param_tags: list[str]
    arg_extra_tags: list[int] = field(default_factory=list)

    @property
    def num_buffers(self) -> int:
        return sum(t == HANDLE for t in self.arg_types)

    @property
    def scalar_types(self) -> list[tuple[int, int, int]]:
        return [t for t in self.arg_types if t != HANDLE]


def read_fmap(r: Reader) -> dict[str, FunctionInfo]:
    fmap = {}
    for _ in range(r.u64()):
        key = r.str_()
        name = r.str_()
        arg_types = []
        for _ in range(r.u64()):
            code, bits, lanes = struct.unpack("<BBH", r.take(4))
            arg_types.append((code, bits, lanes))
        tags = [r.str_() for _ in range(r.u64())]
        extra = [r.i32() for _ in range(r.u64())]
        fmap[key] = FunctionInfo(name, arg_types, tags, extra)
    return fmap


def write_fmap(w: Writer, fmap: dict[str, FunctionInfo]) -> None:
    w.u64(len(fmap))
    for key, info in fmap.items():
        w.str_(key)
        w.str_(info.name)
        w.u64(len(info.arg_types))
        for t in info.arg_types:
            w.parts.append(struct.pack("<BBH", *t))
        w.u64(len(info.launch_param_tags))
        for tag in info.launch_param_tags:
            w.str_(tag)
        w.u64(len(info.arg_extra_tags))
        for e in info.arg_extra_tags:
            w.i32(e)


def _read_bytes_map(r: Reader) -> dict[str, bytes]:
    return {r.str_(): r.bytes_() for _ in range(r.u64())}


def _write_bytes_map(w: Writer, smap: dict[str, bytes]) -> None:
    w.u64(len(smap))
    for key, value in smap.items():
        w.str_(key)
        w.bytes_(value)


def _finish(r: Reader, what: str) -> None:
    if not r.at_end():
        raise FormatError(f"{what}: {len(r.data) - r.pos} unparsed bytes at the end")


def read_webgpu_module(data: bytes) -> tuple[dict[str, FunctionInfo], dict[str, str]]:
    """fmap and WGSL source per kernel of a serialized ``webgpu`` module."""
    r = Reader(data)
    fmap = read_fmap(r)
    smap = {k: v.decode() for k, v in _read_bytes_map(r).items()}
    _finish(r, "webgpu module")
    return fmap, smap


@dataclass
class SpirvShader:
    flag: int
    words: list[int]

    @property
    def uses_ubo(self) -> bool:
        return bool(self.flag & FLAG_USE_UBO)


def write_vulkan_module(fmap: dict[str, FunctionInfo], shaders: dict[str, SpirvShader]) -> bytes:
    """The bytes TVM's ``ffi.Module.load_from_bytes.vulkan`` reads."""
    w = Writer()
    w.str_("vulkan")
    write_fmap(w, fmap)
    packed = {}
    for name, shader in shaders.items():
        sw = Writer()
        sw.u32(shader.flag)
        sw.u32_vec(shader.words)
        packed[name] = sw.getvalue()
    _write_bytes_map(w, packed)
    return w.getvalue()


def read_vulkan_module(data: bytes) -> tuple[dict[str, FunctionInfo], dict[str, SpirvShader]]:
    r = Reader(data)
    fmt = r.str_()
    if fmt != "vulkan":
        raise FormatError(f"vulkan module: format {fmt!r}, expected 'vulkan'")
    fmap = read_fmap(r)
    shaders = {}
    for name, raw in _read_bytes_map(r).items():
        sr = Reader(raw)
        shaders[name] = SpirvShader(sr.u32(), sr.u32_vec())
        _finish(sr, f"SPIR-V shader {name}")
    _finish(r, "vulkan module")
    return fmap, shaders


@dataclass
class LibraryBlob:
    """The import tree TVM embeds in a shared library: module kinds, their bytes, and who imports whom."""

    indptr: list[int]
    children: list[int]
    modules: list[tuple[str, bytes | None]]  # (kind, bytes); "_lib" (the .so itself) has no bytes


def read_library_blob(data: bytes) -> LibraryBlob:
    r = Reader(data)
    nbytes = r.u64()
    if nbytes != len(data) - 8:
        raise FormatError(f"library blob: header says {nbytes} bytes, {len(data) - 8} follow")
    indptr, children = r.u64_vec(), r.u64_vec()
    modules: list[tuple[str, bytes | None]] = []
    for _ in range(len(indptr) - 1):
        kind = r.str_()
        modules.append((kind, None if kind == "_lib" else r.bytes_()))
    _finish(r, "library blob")
    return LibraryBlob(indptr, children, modules)


def write_library_blob(blob: LibraryBlob) -> bytes:
    w = Writer()
    w.u64_vec(blob.indptr)
    w.u64_vec(blob.children)
    for kind, data in blob.modules:
        w.str_(kind)
        if data is not None:
            w.bytes_(data)
    body = w.getvalue()
    return struct.pack("<Q", len(body)) + body
