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

from llmc.compiler import spirv, vulkan
from llmc.compiler.pipeline import PHASES, schedule_passes
from llmc.compiler.targets import get_target
from llmc.compiler.tvm_format import HANDLE, FunctionInfo, read_library_blob, read_vulkan_module, read_webgpu_module

# wgsl: TVM's WGSL on wgpu; spirv: the packed SPIR-V through wgpu (its SPIR-V reader re-translates it);
# spirv-raw: the packed SPIR-V words handed to the Vulkan driver unchanged (PyPI ``vulkan``)
MODES = ("wgsl", "spirv", "spirv-raw")
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
        self._pipelines: dict[tuple, object] = {}  # by the code itself: kernel names repeat across builds

    @property
    def description(self) -> str:
        info = self.adapter.info
        return f"{info['device']} ({info['backend_type']}, {info['description']})"

    def pipeline(self, code: str | bytes, entry: str, read_only: list[bool], uniform: bool):
        """A compute pipeline with an explicit layout: storage buffers at 0..n-1, the uniform at n
        ("auto" layouts drop bindings a kernel does not use, and TVM binds them all)."""
        key = (code, entry, tuple(read_only), uniform)
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
        """Copy host ranges (address, nbytes) into storage buffers, run, copy the changes back."""
        wgpu = self.wgpu
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        gpu_buffers, uploaded = [], []
        for addr, nbytes in buffers:
            padded = max(4, (nbytes + 3) // 4 * 4)
            data = ctypes.string_at(addr, nbytes) + b"\0" * (padded - nbytes)
            uploaded.append(np.frombuffer(data, dtype=np.uint8))
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
        # copy back only the bytes the kernel changed: argument ranges of one VM storage overlap
        # (each runs to the storage's end), and a stale copy must not undo another buffer's writes
        for (addr, nbytes), b, before in zip(buffers, gpu_buffers, uploaded):
            after = np.frombuffer(self.device.queue.read_buffer(b), dtype=np.uint8)[:nbytes]
            changed = after != before[:nbytes]
            if changed.any():
                host = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(addr))
                host[changed] = after[changed]


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


def _read_only(wgsl: str | None, words: list[int] | None) -> list[bool]:
    """Per buffer binding: does the kernel only read it (WGSL ``var<storage, read>`` / SPIR-V NonWritable)."""
    if wgsl is not None:
        return [m == "read" for m in re.findall(r"var<storage, (\w+)>", wgsl)]
    resources = spirv.decorations(words)["resources"].values()
    storage = sorted((r["binding"], r["readonly"]) for r in resources if r["storage"] == "StorageBuffer")
    return [ro for _, ro in storage]


class KernelServer:
    """Serves compiled kernel launches from wgpu, running the WGSL (``wgsl``) or the packed SPIR-V (``spirv``)."""

    def __init__(
        self, runner: WgpuRunner, fmap: dict[str, FunctionInfo], wgsl: dict[str, str] | None, spv: dict
    ) -> None:
        self.runner, self.fmap, self.wgsl, self.spv = runner, fmap, wgsl, spv
        self.read_only = {name: _read_only(wgsl[name] if wgsl else None, None if wgsl else spv[name]) for name in fmap}
        self.mode = "wgsl" if wgsl else "spirv"
        self.ranges: list[tuple[int, int]] = []  # host allocations (address, nbytes) the kernels may touch
        self.fallback = None  # address -> nbytes for addresses outside ``ranges``
        self.calls: list[str] = []

    def _range(self, addr: int) -> tuple[int, int]:
        # the farthest end among the allocations holding addr (a pooled block may be recorded twice)
        ends = [start + nbytes for start, nbytes in self.ranges if start <= addr < start + max(nbytes, 1)]
        if ends:
            return addr, max(ends) - addr
        if self.fallback is not None:
            return addr, self.fallback(addr)
        raise RuntimeError(f"kernel argument {addr:#x} is not inside a tensor of the test")

    def register(self) -> None:
        import tvm_ffi

        for name in self.fmap:
            tvm_ffi.register_global_func(name, self._make(name), override=True)

    def _code(self, name: str) -> str | bytes:
        if self.mode == "wgsl":
            return self.wgsl[name]
        return struct.pack(f"<{len(self.spv[name])}I", *self.spv[name])

    def _make(self, name: str):
        info = self.fmap[name]
        n_args = len(info.arg_types)

        def launch(*args):
            buffers = [self._range(a.value or 0) for a, t in zip(args, info.arg_types) if t == HANDLE]
            scalars = [a for a, t in zip(args[:n_args], info.arg_types) if t != HANDLE]
            extents = dict(zip(info.launch_param_tags, args[n_args:]))
            grid = tuple(int(extents.get(f"blockIdx.{axis}", 1)) for axis in "xyz")
            uniform = _uniform(info, scalars, self.mode, grid[0])
            pipe = self.runner.pipeline(self._code(name), name, self.read_only[name], bool(uniform))
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
        try:
            self.raw: RawVulkanRunner | None = RawVulkanRunner()
        except ImportError:  # the vulkan bindings are optional: WGSL and wgpu-read SPIR-V still run
            self.raw = None
        self.modes = MODES if self.raw else MODES[:2]
        self.target = get_target("vulkan").tvm_target()
        self.llvm = tvm.target.Target("llvm")
        self.rng = np.random.default_rng(0)

    def _schedule(self, func: tirx.PrimFunc, name: str) -> tvm.IRModule:
        with self.target:
            return tvm.transform.Sequential(schedule_passes(self.target, 2))(tvm.IRModule({name: func}))

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
        for mode in self.modes:
            server.runner = self.raw if mode == "spirv-raw" else self.runner
            server.mode = "spirv" if mode == "spirv-raw" else mode
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
    from llmc.compile import CompileOptions, plan_model
    from llmc.compiler.build import build_module

    target = get_target("vulkan").tvm_target()
    options = CompileOptions(target="vulkan", quant=quant, context_window=context_window, prefill_chunk=prefill_chunk)
    plan = plan_model(checkpoint, options)
    mod, _ = build_module(plan.module(target), target)
    mod = fused_functions(mod, target)
    return {
        gv.name_hint: f
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc) and not _has_thread_binding(f) and gv.name_hint not in NOT_RANDOM_TESTABLE
    }


class VulkanLibraryEmulator:
    """Lets TVM's runtime load a ``--target vulkan`` library and run it, kernels served from wgpu.

    TVM's library loader hands the ``vulkan`` entry of the library blob to
    ``ffi.Module.load_from_bytes.vulkan``; this one parses those bytes with llmc's reader and returns
    an empty module, so kernel lookups fall through to the per-kernel functions registered here, which
    run the library's own SPIR-V with TVM's Vulkan argument layout. Buffer extents: VM storage is
    recorded by wrapping ``vm.builtin.alloc_storage``; any other pointer a kernel gets is the start of
    an allocation (weights, KV-cache tensors), sized by glibc's ``malloc_usable_size``.
    Use as a context manager, with ``device="webgpu"`` (host memory, see ``_install_fake_webgpu_device``);
    leaving it puts TVM's own ``vm.builtin.alloc_storage`` back. TVM hands a library path's blob to the
    loader only on its first load in a process: load a fresh copy of the library per emulator.
    """

    def __init__(self, runner: WgpuRunner) -> None:
        self.runner = runner
        self.servers: list[KernelServer] = []
        self.storage: list[tuple[int, int]] = []
        libc = ctypes.CDLL(None)
        self._usable = libc.malloc_usable_size
        self._usable.restype, self._usable.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        self._alloc_storage = None

    def __enter__(self) -> VulkanLibraryEmulator:
        import tvm_ffi

        _install_fake_webgpu_device()
        tvm_ffi.register_global_func("ffi.Module.load_from_bytes.vulkan", self._load, override=True)
        tvm_ffi.register_global_func("ffi.Module.load_from_bytes.webgpu", self._load_webgpu, override=True)
        self._alloc_storage = alloc_storage = tvm.get_global_func("vm.builtin.alloc_storage")
        alloc_tensor = tvm.get_global_func("vm.builtin.alloc_tensor")

        def recorded_alloc_storage(vm, shape, device_index, dtype_hint, scope):
            storage = alloc_storage(vm, shape, device_index, dtype_hint, scope)
            nbytes = int(np.prod(list(shape))) * tvm.DataType(str(dtype_hint)).bits // 8
            view = alloc_tensor(storage, 0, tvm.runtime.ShapeTuple([nbytes]), "uint8")
            self.storage.append((view.data_ptr(), nbytes))
            return storage

        tvm_ffi.register_global_func("vm.builtin.alloc_storage", recorded_alloc_storage, override=True)
        return self

    def __exit__(self, *exc) -> None:
        import tvm_ffi

        tvm_ffi.register_global_func("vm.builtin.alloc_storage", self._alloc_storage, override=True)
        # kernels too: a library loaded again from the same path is not handed to the loader again
        for name in ["ffi.Module.load_from_bytes.vulkan", "ffi.Module.load_from_bytes.webgpu", *self.kernels]:
            tvm_ffi.registry.remove_global_func(name)

    def _load(self, data: bytes):
        fmap, shaders = read_vulkan_module(bytes(data))
        return self._serve(KernelServer(self.runner, fmap, None, {k: s.words for k, s in shaders.items()}))

    def _load_webgpu(self, data: bytes):
        """A library exported with the WebGPU module (x86-64 host): its WGSL served the same way."""
        fmap, wgsl = read_webgpu_module(bytes(data))
        return self._serve(KernelServer(self.runner, fmap, wgsl, {}))

    def _serve(self, server: KernelServer):
        import tvm_ffi

        server.ranges = self.storage  # shared list: grows as the VM allocates
        server.fallback = lambda addr: int(self._usable(addr))
        server.register()
        self.servers.append(server)
        return tvm_ffi.system_lib()

    @property
    def kernels(self) -> set[str]:
        return {name for s in self.servers for name in s.fmap}

    @property
    def called(self) -> set[str]:
        return {name for s in self.servers for name in s.calls}


class RawVulkanRunner:
    """Hands SPIR-V words to the Vulkan driver as they are (``vkCreateShaderModule``), bound as TVM's
    Vulkan runtime binds them: descriptor set 0, storage buffers at 0..n-1, the scalar uniform at n.
    Same interface as WgpuRunner (SPIR-V only); needs ``pip install vulkan`` and a driver (lavapipe)."""

    def __init__(self) -> None:
        import vulkan as vk

        self.vk = vk
        app = vk.VkApplicationInfo(pApplicationName="llmc", apiVersion=vk.VK_MAKE_VERSION(1, 2, 0))
        self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
        self.physical = vk.vkEnumeratePhysicalDevices(self.instance)[0]
        self.description = vk.vkGetPhysicalDeviceProperties(self.physical).deviceName
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        self.family = next(i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT)
        # what TVM's fp16 kernels need (TVM's runtime enables the same when the device has them)
        f11 = vk.VkPhysicalDeviceVulkan11Features(
            storageBuffer16BitAccess=True, uniformAndStorageBuffer16BitAccess=True
        )
        f12 = vk.VkPhysicalDeviceVulkan12Features(pNext=f11, shaderFloat16=True)
        queue = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])
        info = vk.VkDeviceCreateInfo(pNext=f12, queueCreateInfoCount=1, pQueueCreateInfos=[queue])
        self.device = vk.vkCreateDevice(self.physical, info, None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.command_pool = vk.vkCreateCommandPool(
            self.device, vk.VkCommandPoolCreateInfo(queueFamilyIndex=self.family), None
        )
        memory = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        wanted = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        self.memory_type = next(
            i for i in range(memory.memoryTypeCount) if memory.memoryTypes[i].propertyFlags & wanted == wanted
        )
        self.has_f16 = True
        self._pipelines: dict[tuple, tuple] = {}

    def pipeline(self, code: str | bytes, entry: str, read_only: list[bool], uniform: bool):
        vk = self.vk
        if not isinstance(code, bytes):
            raise TypeError("RawVulkanRunner runs SPIR-V only")
        key = (code, entry, len(read_only), uniform)
        if key not in self._pipelines:
            types = [vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER] * len(read_only)
            if uniform:
                types.append(vk.VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER)
            bindings = [
                vk.VkDescriptorSetLayoutBinding(
                    binding=i, descriptorType=t, descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT
                )
                for i, t in enumerate(types)
            ]
            set_layout = vk.vkCreateDescriptorSetLayout(
                self.device, vk.VkDescriptorSetLayoutCreateInfo(bindingCount=len(bindings), pBindings=bindings), None
            )
            layout = vk.vkCreatePipelineLayout(
                self.device, vk.VkPipelineLayoutCreateInfo(setLayoutCount=1, pSetLayouts=[set_layout]), None
            )
            module = vk.vkCreateShaderModule(
                self.device, vk.VkShaderModuleCreateInfo(codeSize=len(code), pCode=code), None
            )
            stage = vk.VkPipelineShaderStageCreateInfo(stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName=entry)
            pipeline = vk.vkCreateComputePipelines(
                self.device, None, 1, [vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)], None
            )[0]
            self._pipelines[key] = (pipeline, layout, set_layout, types)
        return self._pipelines[key]

    def _buffer(self, data: bytes, usage: int):
        vk = self.vk
        buffer = vk.vkCreateBuffer(self.device, vk.VkBufferCreateInfo(size=len(data), usage=usage), None)
        size = vk.vkGetBufferMemoryRequirements(self.device, buffer).size
        memory = vk.vkAllocateMemory(
            self.device, vk.VkMemoryAllocateInfo(allocationSize=size, memoryTypeIndex=self.memory_type), None
        )
        vk.vkBindBufferMemory(self.device, buffer, memory, 0)
        mapped = vk.vkMapMemory(self.device, memory, 0, len(data), 0)
        mapped[: len(data)] = data
        return buffer, memory, mapped, len(data)

    def dispatch(self, pipeline, buffers: list[tuple[int, int]], uniform: bytes | None, grid: tuple[int, int, int]):
        vk = self.vk
        handle, layout, set_layout, types = pipeline
        storage = vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT
        resources, uploaded = [], []
        for addr, nbytes in buffers:
            data = ctypes.string_at(addr, nbytes) + b"\0" * (max(4, (nbytes + 3) // 4 * 4) - nbytes)
            uploaded.append(np.frombuffer(data, dtype=np.uint8))
            resources.append(self._buffer(data, storage))
        if uniform is not None:
            resources.append(self._buffer(uniform, vk.VK_BUFFER_USAGE_UNIFORM_BUFFER_BIT))
        sizes = [vk.VkDescriptorPoolSize(type=t, descriptorCount=types.count(t)) for t in sorted(set(types))]
        pool = vk.vkCreateDescriptorPool(
            self.device, vk.VkDescriptorPoolCreateInfo(maxSets=1, poolSizeCount=len(sizes), pPoolSizes=sizes), None
        )
        (descriptor_set,) = vk.vkAllocateDescriptorSets(
            self.device,
            vk.VkDescriptorSetAllocateInfo(descriptorPool=pool, descriptorSetCount=1, pSetLayouts=[set_layout]),
        )
        writes = [
            vk.VkWriteDescriptorSet(
                dstSet=descriptor_set,
                dstBinding=i,
                descriptorCount=1,
                descriptorType=t,
                pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=resources[i][0], offset=0, range=resources[i][3])],
            )
            for i, t in enumerate(types)
        ]
        vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        (cmd,) = vk.vkAllocateCommandBuffers(
            self.device,
            vk.VkCommandBufferAllocateInfo(
                commandPool=self.command_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1
            ),
        )
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo())
        vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, handle)
        vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, [descriptor_set], 0, None)
        vk.vkCmdDispatch(cmd, *grid)
        vk.vkEndCommandBuffer(cmd)
        fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[cmd])], fence)
        vk.vkWaitForFences(self.device, 1, [fence], vk.VK_TRUE, 10**11)
        for (addr, nbytes), (_, _, mapped, _), before in zip(buffers, resources, uploaded):
            after = np.frombuffer(bytes(mapped[:nbytes]), dtype=np.uint8)
            changed = after != before[:nbytes]
            if changed.any():
                host = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(addr))
                host[changed] = after[changed]
        vk.vkDestroyFence(self.device, fence, None)
        vk.vkFreeCommandBuffers(self.device, self.command_pool, 1, [cmd])
        vk.vkDestroyDescriptorPool(self.device, pool, None)
        for buffer, memory, _, _ in resources:
            vk.vkUnmapMemory(self.device, memory)
            vk.vkDestroyBuffer(self.device, buffer, None)
            vk.vkFreeMemory(self.device, memory, None)
