"""Run TVM-generated OpenCL kernels on PoCL through pyopencl, launched as TVM's host code would.

This TVM wheel has no OpenCL runtime, so the test drives the kernels itself: one PrimFunc is lowered
with TVM's own TIR pipeline for the target; the device kernels' OpenCL C comes from TVM's codegen;
their argument order is the kernel PrimFunc's parameter list (buffers as ``<name>_ptr``, then
scalars), and the launch extents are the kernel's ``thread_extent`` attributes, evaluated with the
shape variables of the inputs and the host function's let-bindings (hoisted values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
import tvm.sym
from tvm import tirx
from tvm.tirx.build import codegen_build, split_host_device_mods

THREAD_DIMS = {"blockIdx.x": 0, "blockIdx.y": 1, "blockIdx.z": 2}
LOCAL_DIMS = {"threadIdx.x": 0, "threadIdx.y": 1, "threadIdx.z": 2}


@dataclass
class Kernel:
    name: str
    program: str  # the OpenCL C program TVM emitted for this kernel
    params: list  # tirx.Var: handles are buffers ``<buffer>_ptr``, the rest scalars
    extents: dict  # thread tag -> extent expression


@dataclass
class LoweredFunc:
    func: tirx.PrimFunc  # the scheduled PrimFunc (buffer params carry the symbolic shapes)
    kernels: list[Kernel]  # in launch order
    lets: dict  # host let-bound name -> value expression


def _fields(node) -> list[str]:
    names, info = [], type(node).__tvm_ffi_type_info__
    while info is not None:
        names += [f.name for f in info.fields if f.name != "span"]
        info = info.parent_type_info
    return names


def _visit(node, kind) -> list:
    """Every node of type ``kind`` under ``node``, in pre-order (this TVM has no Python IR visitor)."""
    found, seen, stack = [], set(), [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and str in (kind if isinstance(kind, tuple) else (kind,)):
            found.append(item)
        if isinstance(item, (str, int, float, bool)) or item is None:
            continue
        if isinstance(item, tvm.runtime.Object):
            if isinstance(item, tvm.ir.Type):  # types hold no statements or variables of interest
                continue
            try:
                if item in seen:
                    continue
                seen.add(item)
            except TypeError:  # some node types define no hash: visit them again if shared
                pass
            if isinstance(item, kind):
                found.append(item)
        if hasattr(item, "items"):  # Map
            children = [v for pair in item.items() for v in pair]
        elif hasattr(item, "__iter__"):  # Array, list
            children = list(item)
        elif isinstance(item, tvm.runtime.Object):
            children = [getattr(item, name) for name in _fields(item)]
        else:
            continue
        stack.extend(reversed(children))
    return found


def lower(func: tirx.PrimFunc, name: str, target: tvm.target.Target) -> LoweredFunc:
    """Lower a scheduled PrimFunc like ``tirx.build``; keep the device kernels and the host's bindings."""
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    mod = tirx.transform.BindTarget(target)(mod)
    pipeline, _, finalize_device = tirx.get_default_tir_pipeline(target)
    host_mod, device_mods = split_host_device_mods(pipeline(mod))
    ((device_target, device_mod),) = device_mods.items()
    device_mod = finalize_device()(device_mod)
    programs = split_programs(codegen_build(device_mod, device_target).inspect_source())
    kernels = {}
    for gv, kernel in device_mod.functions.items():
        extents = {
            stmt.node.thread_tag: stmt.value
            for stmt in _visit(kernel.body, tirx.AttrStmt)
            if stmt.attr_key == "thread_extent"
        }
        kernels[gv.name_hint] = Kernel(gv.name_hint, programs[gv.name_hint], list(kernel.params), extents)
    host_body = [f.body for f in host_mod.functions.values()]
    lets = {}
    order = []
    for body in host_body:
        for node in _visit(body, tirx.Bind):
            lets[node.var.name] = node.value
        for node in _visit(body, (tvm.ir.StringImm, str)):
            value = node if isinstance(node, str) else node.value
            if value in kernels and value not in order:
                order.append(value)
    assert sorted(order) == sorted(kernels), (order, list(kernels))
    return LoweredFunc(func, [kernels[k] for k in order], lets)


def _dtype(var) -> str:
    return str(var.ty.dtype)


def split_programs(source: str) -> dict[str, str]:
    """TVM's OpenCL source: one program per kernel, each after a ``// Function: <name>`` line."""
    programs = {}
    for block in source.split("// Function: ")[1:]:
        kernel_name, _, program = block.partition("\n")
        programs[kernel_name.strip()] = program
    return programs


def evaluate(expr, known: dict, lets: dict):
    """Value of a scalar expression given shape-variable values and the host's let-bindings."""
    analyzer = tvm.sym.Analyzer()
    for var in _visit(expr, tirx.Var):
        if var.name in known:
            value = known[var.name]
        elif var.name.endswith("_elem_offset"):
            value = 0  # fresh, unsliced buffers
        elif var.name in lets:
            value = evaluate(lets[var.name], known, lets)
        else:
            raise KeyError(f"no value for {var.name} in {expr}")
        analyzer.bind(var, tvm.tirx.const(value, _dtype(var)))
    return analyzer.simplify(expr).value


def shape_values(func: tirx.PrimFunc, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Symbolic dims of the PrimFunc's buffers, read off the given arrays."""
    known = {}
    for param in func.params:
        if param.name in arrays and isinstance(param.ty, tirx.buffer.BufferType):
            for dim, size in zip(param.ty.shape, arrays[param.name].shape):
                if isinstance(dim, tirx.Var):
                    known[dim.name] = int(size)
    return known


def buffer_params(func: tirx.PrimFunc) -> list:
    return [p for p in func.params if isinstance(getattr(p, "ty", None), tirx.buffer.BufferType)]


def run_on_opencl(lowered: LoweredFunc, arrays: dict[str, np.ndarray], scalars: dict, context) -> dict:
    """Launch the kernels in order on ``context``'s device; returns every buffer's contents afterwards."""
    import pyopencl as cl

    queue = cl.CommandQueue(context)
    known = {**shape_values(lowered.func, arrays), **scalars}
    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    buffers = {name: cl.Buffer(context, flags, hostbuf=np.ascontiguousarray(a)) for name, a in arrays.items()}
    for kernel in lowered.kernels:
        program = cl.Program(context, kernel.program).build()
        cl_kernel = getattr(program, kernel.name)
        args = []
        for param in kernel.params:
            if isinstance(param.ty, tvm.ir.PointerType):
                args.append(buffers[param.name.removesuffix("_ptr")])
            else:
                value = evaluate(param, known, lowered.lets)
                args.append(np.dtype(_dtype(param)).type(value))
        cl_kernel.set_args(*args)
        grid, block = [1, 1, 1], [1, 1, 1]
        for tag, extent in kernel.extents.items():
            value = evaluate(extent, known, lowered.lets)
            if tag in THREAD_DIMS:
                grid[THREAD_DIMS[tag]] = value
            elif tag in LOCAL_DIMS:
                block[LOCAL_DIMS[tag]] = value
        if 0 in grid:
            continue
        global_size = tuple(g * b for g, b in zip(grid, block))
        cl.enqueue_nd_range_kernel(queue, cl_kernel, global_size, tuple(block))
    results = {}
    for name, buffer in buffers.items():
        results[name] = np.empty_like(arrays[name])
        cl.enqueue_copy(queue, results[name], buffer)
    queue.finish()
    return results


def run_on_llvm(func: tirx.PrimFunc, name: str, arrays: dict[str, np.ndarray], scalars: dict) -> dict:
    """The same function built for this CPU by TVM (the reference)."""
    lib = tvm.tirx.build(tvm.IRModule({name: func.with_attr("global_symbol", name)}), target="llvm")
    tensors = {k: tvm.runtime.tensor(np.ascontiguousarray(v), tvm.cpu()) for k, v in arrays.items()}
    args = [tensors[p.name] if p.name in tensors else scalars[p.name] for p in func.params]
    lib[name](*args)
    return {k: t.numpy() for k, t in tensors.items()}
