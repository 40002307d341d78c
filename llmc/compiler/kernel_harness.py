"""Run a model's kernels on an emulated GPU (wgpu on Mesa lavapipe) and compare them with the llvm build.

For each fused PrimFunc of a model: build it alone for llvm (reference) and with the ``vulkan``
preset's TVM target (dlight schedules, WGSL kernels, x86-64 host code), fill every buffer with the
same random data, and run

* ``llvm``: on the CPU;
* ``wgsl``: TVM's host code, its kernel launches served by wgpu running the WGSL on Vulkan;
* ``spirv``: the same, with the SPIR-V llmc packs into the ``vulkan`` module (argument layout of
  TVM's Vulkan runtime: storage buffers at bindings 0..n-1, scalars as 8-byte slots in a uniform
  buffer at binding n, exact grid).

How the host code reaches the kernels: TVM looks a kernel up in the library's imports and then in
the global registry, so with the device module dropped from the imports each kernel name is
registered as a Python function that uploads the buffers, dispatches on wgpu and reads them back.
The host code checks that tensors live on a WebGPU device; ``device_api.webgpu`` is pointed at
TVM's CPU device API, so "WebGPU" tensors are host memory whose addresses the kernels receive.
This is test machinery: it needs ``pip install wgpu`` and a Vulkan driver (lavapipe).
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm.sym
from tvm import tirx
from tvm.tirx.buffer import BufferType

from llmc.compiler import vulkan
from llmc.compiler.pipeline import PHASES
from llmc.compiler.targets import get_target
from llmc.compiler.tvm_format import HANDLE, FunctionInfo, read_library_blob, read_vulkan_module, read_webgpu_module

MODES = ("wgsl", "spirv")
# functions random inputs would drive out of bounds (in the llvm reference too)
NOT_RANDOM_TESTABLE = {"tir_kv_cache_debug_get_kv": "debug helper; its layer_id scalar must name an existing layer"}
SHAPE_VAR_VALUE = 5  # every symbolic dim (seq_len, batch_size, ...) in a kernel test
_SCALAR_FORMATS = {0: "i", 1: "I", 2: "f"}  # DLDataType code -> struct format of a 32-bit scalar


def _install_fake_webgpu_device() -> None:
    import tvm_ffi

    cpu_api = tvm.get_global_func("device_api.cpu")()
    tvm_ffi.register_global_func("device_api.webgpu", lambda: cpu_api, override=True)


class WgpuRunner:
    """One wgpu device (lavapipe here) that dispatches compute kernels on host-memory buffers."""

    def __init__(self) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        import wgpu

        self.wgpu = wgpu
        self.adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        features = [f for f in ("shader-f16",) if f in self.adapter.features]
        limits = {
            k: self.adapter.limits[k]
            for k in (
                "max-storage-buffers-per-shader-stage",
                "max-storage-buffer-binding-size",
                "max-compute-workgroup-storage-size",
                "max-compute-invocations-per-workgroup",
                "max-compute-workgroup-size-x",
                "max-compute-workgroup-size-y",
                "max-compute-workgroup-size-z",
            )
        }
        self.device = self.adapter.request_device_sync(required_features=features, required_limits=limits)
        self.has_f16 = "shader-f16" in features
        self._pipelines: dict[tuple[str, str], object] = {}

    @property
    def description(self) -> str:
        info = self.adapter.info
        return f"{info['device']} ({info['backend_type']}, {info['description']})"

    def pipeline(self, key: tuple[str, str], code: str | bytes, entry: str, read_only: list[bool], uniform: bool):
        """A compute pipeline with an explicit layout: storage buffers at 0..n-1, the uniform at n
        ("auto" layouts drop bindings a kernel does not use, and TVM binds them all)."""
        if key not in self._pipelines:
            wgpu = self.wgpu
            kinds = [
                wgpu.BufferBindingType.read_only_storage if ro else wgpu.BufferBindingType.storage for ro in read_only
            ]
            if uniform:
                kinds.append(wgpu.BufferBindingType.uniform)
            layout = self.device.create_bind_group_layout(
                entries=[
                    {"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kind}}
                    for i, kind in enumerate(kinds)
                ]
            )
            module = self.device.create_shader_module(code=code)
            self._pipelines[key] = self.device.create_compute_pipeline(
                layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
                compute={"module": module, "entry_point": entry},
            )
        return self._pipelines[key]

    def dispatch(self, pipeline, buffers: list[tuple[int, int]], uniform: bytes | None, grid: tuple[int, int, int]):
        """Copy host ranges (address, nbytes) into storage buffers, run, copy them back."""
        wgpu = self.wgpu
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        gpu_buffers = []
        for addr, nbytes in buffers:
            padded = max(4, (nbytes + 3) // 4 * 4)
            data = ctypes.string_at(addr, nbytes) + b"\0" * (padded - nbytes)
            gpu_buffers.append(self.device.create_buffer_with_data(data=data, usage=usage))
        entries = [
            {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}} for i, b in enumerate(gpu_buffers)
        ]
        if uniform is not None:
            ub = self.device.create_buffer_with_data(data=uniform, usage=wgpu.BufferUsage.UNIFORM)
            entries.append({"binding": len(gpu_buffers), "resource": {"buffer": ub, "offset": 0, "size": ub.size}})
        bind_group = self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
        encoder = self.device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, bind_group)
        compute.dispatch_workgroups(*grid)
        compute.end()
        self.device.queue.submit([encoder.finish()])
        for (addr, nbytes), b in zip(buffers, gpu_buffers):
            data = self.device.queue.read_buffer(b)
            ctypes.memmove(addr, bytes(data[:nbytes]), nbytes)


@dataclass
class KernelResult:
    function: str
    kernels: list[str]
    max_rel_err: dict[str, float] = field(default_factory=dict)  # mode -> max |x - llvm| / max |llvm|
    outputs: int = 0  # buffers the llvm build changed: a kernel that does nothing cannot pass
    skipped: str | None = None


def _uniform(info: FunctionInfo, scalars: list, mode: str, grid_x: int) -> bytes | None:
    types = info.scalar_types
    assert len(types) == len(scalars)
    if mode == "wgsl":  # TVM's WebGPU layout: 4-byte scalars, then packGridDimX (the last valid block index)
        data = b"".join(struct.pack("<" + _SCALAR_FORMATS[t[0]], v) for t, v in zip(types, scalars))
        data += struct.pack("<I", grid_x - 1)
        return data + b"\0" * (-len(data) % 16)
    if not scalars:
        return None
    # TVM's Vulkan runtime: one ArgUnion64 per scalar, the value in its low 4 bytes
    data = b"".join(struct.pack("<" + _SCALAR_FORMATS[t[0]] + "4x", v) for t, v in zip(types, scalars))
    return data + b"\0" * (-len(data) % 16)


class KernelServer:
    """Serves one compiled function's kernel launches from wgpu, in ``wgsl`` or ``spirv`` mode."""

    def __init__(self, runner: WgpuRunner, fmap: dict[str, FunctionInfo], wgsl: dict[str, str], spv: dict) -> None:
        self.runner, self.fmap, self.wgsl, self.spv = runner, fmap, wgsl, spv
        self.mode = "wgsl"
        self.ranges: list[tuple[int, int]] = []  # host allocations (address, nbytes) the kernels may touch
        self.calls: list[str] = []

    def _range(self, addr: int) -> tuple[int, int]:
        for start, nbytes in self.ranges:
            if start <= addr < start + max(nbytes, 1):
                return addr, start + nbytes - addr
        raise RuntimeError(f"kernel argument {addr:#x} is not inside a tensor of the test")

    def register(self) -> None:
        import tvm_ffi

        for name in self.fmap:
            tvm_ffi.register_global_func(name, self._make(name), override=True)

    def _make(self, name: str):
        info = self.fmap[name]
        n_args = len(info.arg_types)

        def launch(*args):
            buffers = [self._range(a.value or 0) for a, t in zip(args, info.arg_types) if t == HANDLE]
            scalars = [a for a, t in zip(args[:n_args], info.arg_types) if t != HANDLE]
            extents = dict(zip(info.launch_param_tags, args[n_args:]))
            grid = tuple(int(extents.get(f"blockIdx.{axis}", 1)) for axis in "xyz")
            read_only = [m == "read" for m in re.findall(r"var<storage, (\w+)>", self.wgsl[name])]
            uniform = _uniform(info, scalars, self.mode, grid[0])
            words = self.spv[name]
            code = self.wgsl[name] if self.mode == "wgsl" else struct.pack(f"<{len(words)}I", *words)
            pipe = self.runner.pipeline((self.mode, name), code, name, read_only, uniform is not None)
            self.runner.dispatch(pipe, buffers, uniform, grid)
            self.calls.append(name)

        return launch


def fused_functions(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The model's PrimFuncs after llmc's phases up to fusion (before any schedule)."""
    with target:
        for phase in PHASES:
            if phase.name == "schedule":
                break
            mod = tvm.transform.Sequential(phase.passes(target, 2))(mod)
    return mod


def _has_thread_binding(func: tirx.PrimFunc) -> bool:
    return "threadIdx" in func.script()


def _shape(buffer, values: dict) -> list[int]:
    analyzer = tvm.sym.Analyzer()
    for var, value in values.items():
        analyzer.bind(var, value)
    return [int(analyzer.simplify(d)) for d in buffer.shape]


def _random(shape: list[int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype.startswith("float"):
        return (rng.standard_normal(shape) * 0.5).astype(dtype)
    if dtype.startswith("uint"):
        return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    return rng.integers(0, 4, size=shape).astype(dtype)  # small: safe as token ids / indices


class KernelHarness:
    """Builds and runs PrimFuncs three ways (llvm, WGSL on wgpu, SPIR-V on wgpu)."""

    def __init__(self) -> None:
        _install_fake_webgpu_device()
        self.runner = WgpuRunner()
        self.target = get_target("vulkan").tvm_target()
        self.llvm = tvm.target.Target("llvm")
        self.rng = np.random.default_rng(0)

    def _schedule(self, func: tirx.PrimFunc, name: str) -> tvm.IRModule:
        from llmc.compiler.pipeline import _schedule

        with self.target:
            return tvm.transform.Sequential(_schedule(self.target, 2))(tvm.IRModule({name: func}))

    def compare(self, name: str, func: tirx.PrimFunc) -> KernelResult:
        func = func.with_attr("global_symbol", name)
        buffers = {p: p.ty for p in func.params if isinstance(p.ty, BufferType)}
        if "float16" in {str(b.dtype) for b in buffers.values()} and not self.runner.has_f16:
            return KernelResult(name, [], skipped="float16 kernel and the adapter has no shader-f16")
        values: dict = {}
        for b in buffers.values():
            if isinstance(b.elem_offset, tirx.Var):
                values[b.elem_offset] = 0
            for d in b.shape:
                for v in tirx.analysis.undefined_vars(d, []):
                    values.setdefault(v, SHAPE_VAR_VALUE)
        inputs = []
        for p in func.params:
            if p in buffers:
                inputs.append(_random(_shape(buffers[p], values), str(buffers[p].dtype), self.rng))
            else:
                inputs.append(values.setdefault(p, SHAPE_VAR_VALUE))

        reference = tvm.compile(tvm.IRModule({name: func}), target=self.llvm)
        ref_args = [tvm.runtime.tensor(x, tvm.cpu()) if isinstance(x, np.ndarray) else x for x in inputs]
        reference[name](*ref_args)
        expected = [a.numpy() for a in ref_args if not isinstance(a, int)]
        written = [not np.array_equal(e, x) for e, x in zip(expected, (x for x in inputs if isinstance(x, np.ndarray)))]

        lib = tvm.compile(self._schedule(func, name), target=self.target)
        blob = read_library_blob(bytes(tvm.get_global_func("runtime.ModulePackImportsToTensor")(lib.mod).numpy()))
        (webgpu_bytes,) = [data for kind, data in blob.modules if kind == "webgpu"]
        fmap, wgsl = read_webgpu_module(webgpu_bytes)
        _, shaders = read_vulkan_module(vulkan.webgpu_to_vulkan(webgpu_bytes, validate=True))
        spv = {k: s.words for k, s in shaders.items()}
        wgsl = dict(wgsl)
        lib.mod.clear_imports()
        server = KernelServer(self.runner, fmap, wgsl, spv)
        server.register()
        result = KernelResult(name, sorted(fmap))
        dev = tvm.device("webgpu", 0)
        for mode in MODES:
            server.mode = mode
            args = [tvm.runtime.tensor(x, dev) if isinstance(x, np.ndarray) else x for x in inputs]
            server.ranges = [(a.data_ptr(), a.numpy().nbytes) for a in args if not isinstance(a, int)]
            lib[name](*args)
            got = [a.numpy() for a in args if not isinstance(a, int)]
            # over the buffers the llvm build wrote (the others must come back unchanged too)
            result.max_rel_err[mode] = max(
                float(np.abs(g.astype("float64") - e.astype("float64")).max() / (np.abs(e).max() + 1e-6))
                for g, e in zip(got, expected)
                if e.size
            )
        result.outputs = sum(written)
        return result


def model_functions(checkpoint: str, quant: str, context_window: int = 128, prefill_chunk: int = 24) -> dict:
    """Fused PrimFuncs of a model as ``llmc compile --target vulkan`` would build it, before scheduling
    (the KV cache's own kernels arrive scheduled for the target and are left out)."""
    from llmc.checkpoint import open_checkpoint
    from llmc.compile import CompileOptions, _plan_from_config
    from llmc.compiler.build import build_module
    from llmc.source import resolve

    target = get_target("vulkan").tvm_target()
    options = CompileOptions(target="vulkan", quant=quant, context_window=context_window, prefill_chunk=prefill_chunk)
    source = resolve(checkpoint)
    plan = _plan_from_config(open_checkpoint(source).config, source, options)
    mod, _ = build_module(plan.module(target), target)
    mod = fused_functions(mod, target)
    return {
        gv.name_hint: f
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc) and not _has_thread_binding(f) and gv.name_hint not in NOT_RANDOM_TESTABLE
    }
