"""Kernels by target: the compiler-side step between a model's target-free Relax and the build pipeline.

In the spirit of MLC-LLM's ``DispatchKVCacheCreation`` (absent from TVM 0.27), ``dispatch_kernels`` rewrites
an exported module for one target:

* the KV cache request a model exports (``llmc.models.attention``) becomes TVM's ``TIRPagedKVCache`` for the
  target, built with llmc's CPU attention/RoPE kernels on CPUs (``cpu_attention``; always when soft-capping,
  eviction or attention sinks need them) or with llmc's patches of TVM's GPU kernels (``gpu_softcap``,
  ``gpu_sinks``);
* on CPUs, ``split -> silu -> multiply`` of a fused gate/up projection becomes one ``silu_multiply`` kernel.

The module is the same as if the model had picked these kernels itself while being exported.
"""

from __future__ import annotations

import contextlib

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor
from tvm.relax.frontend.nn.llm.kv_cache import RopeMode, TIRPagedKVCache

from llmc.kernels.cpu_attention import llmc_cpu_attention
from llmc.kernels.cpu_silu import silu_multiply
from llmc.kernels.gpu_sinks import tvm_gpu_sinks
from llmc.kernels.gpu_softcap import tvm_gpu_softcap
from llmc.kernels.parse_speed import memoized_getmodule
from llmc.models.attention import REQUEST_FUNC, KVCacheRequest

# the exported functions in the order nn.Module.export_tvm traces them (kernel names get suffixes in this order)
EXPORT_ORDER = ("embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_paged_kv_cache")


def is_cpu(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm"


def evict_window(request: KVCacheRequest, target: tvm.target.Target) -> int:
    """The window of an evicting cache on ``target`` (llmc's CPU kernels mask and rotate for it), or 0."""
    return request.evictable_window() if is_cpu(target) else 0


def _kernels(request: KVCacheRequest, target: tvm.target.Target, cpu_kernels: bool, evict: int, sinks: bool):
    """The context in which TVM's cache builder picks this target's attention kernels."""
    softcaps = {spec.softcap for spec in request.layers}
    if len(softcaps) != 1:
        raise ValueError(f"TVM's paged KV cache takes one attention soft-cap for all layers, not {sorted(softcaps)}")
    softcap = softcaps.pop()
    window = max((spec.window for spec in request.layers), default=0) if sinks else 0
    chunk = max((spec.chunk for spec in request.layers), default=0)
    logits = any(spec.sinks for spec in request.layers)
    # soft-capping, eviction and control heads exist only in llmc's kernels: they serve the reference build too
    if is_cpu(target) and (cpu_kernels or bool(softcap) or bool(evict) or sinks):
        return llmc_cpu_attention(softcap, evict, sinks=sinks, sink_window=window, sink_chunk=chunk, sink_logits=logits)
    if sinks and softcap:
        raise ValueError("llmc's GPU kernel patches apply control heads or soft-capping, not both in one cache")
    if sinks:  # a GPU target: one control head per KV group (paged_kv_cache)
        first = request.layers[0]
        return tvm_gpu_sinks(first.num_q_heads // first.num_kv_heads + 1, window, chunk, logits)
    if softcap:
        return tvm_gpu_softcap(softcap)
    return contextlib.nullcontext()


def _sinks(request: KVCacheRequest) -> bool:
    """Whether the queries carry control heads (attention sinks or chunks, ``AttentionSpec.controlled``): llmc's
    CPU kernels or its GPU patch read them."""
    chunks = {spec.chunk for spec in request.layers if spec.chunk}
    if len(chunks) > 1 or (chunks and any(spec.window for spec in request.layers)):
        raise ValueError(f"llmc's kernels mask one chunk size or one window per cache, not {request.layers}")
    return any(spec.controlled for spec in request.layers)


def cache_kinds(request: KVCacheRequest, target: tvm.target.Target) -> list[str]:
    """The layer kinds of TVM's cache for ``request`` on ``target`` ("mha", "mha_sliding")."""
    kinds = [spec.kind for spec in request.layers]
    if _sinks(request) or evict_window(request, target):
        # control heads: llmc's kernels mask each layer's window or chunk (the control heads say which);
        # eviction: one whole-cache window, slid by the runtime
        return ["mha"] * len(kinds)
    if "mha" not in kinds:
        # TVM 0.27 allocates its prefill q/k/v scratch only when some layer is "mha" (an all-sliding
        # cache fails at the first forward): one unused full-attention layer at the end.
        return [*kinds, "mha"]
    return kinds


def paged_kv_cache(request: KVCacheRequest, sizes: list, target: tvm.target.Target, cpu_kernels: bool) -> relax.Var:
    """TVM's ``TIRPagedKVCache`` for ``request``, emitted into the current BlockBuilder with its kernels."""
    evict = evict_window(request, target)
    kinds = cache_kinds(request, target)
    first = request.layers[0]
    sinks = _sinks(request)
    q_heads = first.num_q_heads + (first.num_kv_heads if sinks else 0)  # one control head per KV group
    windows = {spec.window for spec in request.layers if spec.window}
    if len(windows) > 1:
        raise ValueError(f"TVM's paged KV cache takes one sliding window for all layers, not {sorted(windows)}")
    cache_rope = first.rope == "cache"
    with _kernels(request, target, cpu_kernels, evict, sinks), memoized_getmodule():
        cache = TIRPagedKVCache(
            attn_kind=kinds if "mha_sliding" in kinds else "mha",
            max_batch_size=sizes[0],
            max_total_seq_len=sizes[1],
            prefill_chunk_size=sizes[2],
            page_size=sizes[3],
            support_sliding_window=sizes[4],
            layer_partition=relax.ShapeExpr([0, len(kinds)]),
            num_hidden_layers=len(kinds),
            num_attention_heads=q_heads,
            num_key_value_heads=first.num_kv_heads,
            qk_head_dim=first.head_dim,
            v_head_dim=first.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL if cache_rope else RopeMode.NONE,
            rope_scale=1,
            rope_theta=request.rope_theta,
            rope_scaling=request.rope_scaling if cache_rope else {},
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=request.rotary_dim,
            enable_disaggregation=False,
            dtype=request.dtype,
            target=target,
            layer_sliding_window_size=windows.pop() if windows else 1,
        )
    return cache._expr


def _request_of(call: relax.Call) -> tuple[KVCacheRequest, list] | None:
    """``(request, symbolic sizes)`` of a model's cache placeholder call, else None."""
    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.call_pure_packed":
        return None
    func = call.args[0]
    if not isinstance(func, relax.ExternFunc) or func.global_symbol != REQUEST_FUNC:
        return None
    return KVCacheRequest.from_json(call.args[2].value), list(call.args[1].values)


def _bound_call(builder: relax.BlockBuilder, expr: relax.Expr, op_name: str) -> relax.Call | None:
    value = builder.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op_name:
        return value
    return None


def _bound_item(builder: relax.BlockBuilder, expr: relax.Expr, index: int) -> relax.Expr | None:
    value = builder.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    return value.tuple_value if isinstance(value, relax.TupleGetItem) and value.index == index else None


@mutator
class _Dispatcher(PyExprMutator):
    """Replaces cache requests and, on CPUs with llmc's kernels (``cpu_kernels``), ``silu(gate) * up`` of a gate/up
    split."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, cpu_kernels: bool):
        super().__init__(mod)
        self.target, self.cpu_kernels = target, cpu_kernels
        self.cpu_silu = is_cpu(target) and cpu_kernels
        self.requests: list[KVCacheRequest] = []
        self.replaced = 0  # calls replaced so far
        self.orphans: set[relax.Var] = set()  # bindings a fused SiLU may have left unused (split, items, silu)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # noqa: N802 - TVM's visitor name
        found = _request_of(binding.value) if isinstance(binding.value, relax.Call) else None
        if found is None:
            super().visit_var_binding_(binding)
            return
        request, sizes = found
        self.requests.append(request)
        self.replaced += 1
        relax.BlockBuilder._stack.append(self.builder_)  # TVM's cache builder adds its kernels here
        try:
            cache = paged_kv_cache(request, sizes, self.target, self.cpu_kernels)  # emitted, as the exporter does
        finally:
            relax.BlockBuilder._stack.pop()
        self.set_var_remap(binding.var, cache)

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's visitor name
        call = super().visit_call_(call)
        if self.cpu_silu:
            fused = self._fused_silu(call)
            return call if fused is None else fused
        return call

    def _fused_silu(self, call: relax.Call) -> relax.Expr | None:
        """``multiply(silu(split(x)[0]), split(x)[1])`` (a 2-way split of the last axis, float32) -> one kernel."""
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.multiply"):
            return None
        silu = _bound_call(self.builder_, call.args[0], "relax.nn.silu")
        parts = None if silu is None else _bound_item(self.builder_, silu.args[0], 0)
        if parts is None or not parts.same_as(_bound_item(self.builder_, call.args[1], 1)):
            return None
        split = _bound_call(self.builder_, parts, "relax.split")
        if split is None:
            return None
        x = split.args[0]
        shape, ndim = x.ty.shape, x.ty.ndim
        sections = split.attrs.indices_or_sections
        if (
            x.ty.dtype != "float32"
            or shape is None
            or not isinstance(sections, tvm.tirx.IntImm)
            or int(sections) != 2
            or int(split.attrs.axis) not in (-1, ndim - 1)
            or not isinstance(shape.values[-1], tvm.tirx.IntImm)
        ):
            return None
        width = int(shape.values[-1]) // 2
        self.replaced += 1
        self.orphans.update([call.args[0], silu.args[0], call.args[1], parts])
        return self.builder_.call_te(silu_multiply, x, width, primfunc_name_hint="silu_multiply")


@visitor
class _Uses(PyExprVisitor):
    def __init__(self):
        self.used: set[relax.Var] = set()

    def visit_var_(self, var: relax.Var) -> None:  # noqa: N802 - TVM's visitor name
        self.used.add(var)

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> None:  # noqa: N802
        self.used.add(var)


@mutator
class _Drop(PyExprMutator):
    def __init__(self, drop: set[relax.Var]):
        super().__init__()
        self.drop = drop

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # noqa: N802 - TVM's visitor name
        if binding.var not in self.drop:
            super().visit_var_binding_(binding)


def _drop_unused(func: relax.Function, candidates: set[relax.Var]) -> relax.Function:
    """``func`` without the bindings of ``candidates`` nothing reads any more (the rest is left as exported)."""
    while True:
        uses = _Uses()
        uses.visit_expr(func)
        drop = {var for var in candidates if var not in uses.used}
        if not drop:
            return func
        func = _Drop(drop).visit_expr(func)
        candidates = candidates - drop


def dispatch_kernels(
    mod: tvm.IRModule, target: tvm.target.Target, cpu_kernels: bool = True
) -> tuple[tvm.IRModule, list[KVCacheRequest]]:
    """``mod`` with the kernels ``target`` runs (see the module docstring) and the cache requests it met.

    ``cpu_kernels=False``: TVM's own CPU attention, RoPE and SiLU (reference builds), except where only llmc's
    kernels can do the job (soft-capping, eviction, attention sinks)."""
    dispatcher = _Dispatcher(mod, target, cpu_kernels)
    order = {name: i for i, name in enumerate(EXPORT_ORDER)}
    functions = sorted(
        (item for item in mod.functions_items() if isinstance(item[1], relax.Function)),
        key=lambda item: order.get(item[0].name_hint, len(order)),
    )
    for gv, func in functions:
        replaced = dispatcher.replaced
        new = dispatcher.visit_expr(func)
        if dispatcher.replaced != replaced:
            dispatcher.builder_.update_func(gv, _drop_unused(new, dispatcher.orphans))
    return dispatcher.builder_.finalize(), dispatcher.requests  # kernels named by their global symbols
