"""Sparse mixture-of-experts FFN (Mixtral, Qwen3-MoE): top-k routing, then expert matmuls that read only
the selected experts' weights.

Each token's router picks ``top_k`` of ``E`` experts (softmax over all experts, top-k, optionally
renormalised over the chosen ones). The experts' matrices of one kind are one parameter of ``E * rows``
rows (expert ``e`` owns rows ``[e * rows, (e + 1) * rows)``), so the group quantizer and the GGUF
formats treat them as one tall matrix. Two ways to run the experts, both over symbolic token counts:

* grouped (the CPU integer path, ``has_grouped``): the (token, choice) assignments are sorted by expert
  (``moe_sort``) and one kernel per matrix runs each chosen expert over its contiguous rows, so every
  chosen expert's weights are unpacked once per call however many tokens chose it;
* gathered (``expert_matmul``, every other target and the float CPU path): output ``[t, j]`` reads the
  weight rows of expert ``ids[t, j]`` only, so a decode step touches ``top_k`` experts per token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.kernels.moe_sort import combine_sorted, gather_assignments, sort_by_expert
from llmc.models.layers import swiglu


class ExpertWeights(nn.Module):
    """``experts`` matrices of ``[rows, cols]``, stored as one float ``[experts * rows, cols]`` weight.

    Quantized variants (``llmc.quant``) keep the interface: ``planes()`` (the parameters the kernel
    reads) and ``element(planes, row, col)`` (one decoded weight as a TIR expression).
    """

    def __init__(self, experts: int, rows: int, cols: int):
        self.experts, self.rows, self.cols = experts, rows, cols
        self.weight = nn.Parameter((experts * rows, cols))

    def planes(self) -> list[Tensor]:
        return [self.weight]

    def element(self, planes: Sequence[te.Tensor], row, col):
        return planes[0][row, col]

    def forward(self, x: Tensor, expert_ids: Tensor) -> Tensor:
        return expert_matmul(x, expert_ids, self)

    def has_grouped(self) -> bool:
        """Whether ``grouped`` has a kernel here (the CPU integer path); otherwise ``forward`` gathers."""
        return False

    def grouped(self, x: Tensor, indptr: Tensor) -> Tensor:
        """Expert-major rows ``x`` ``[M, cols]`` (expert ``e``'s are ``indptr[e] .. indptr[e + 1]``) times
        their expert's matrix -> ``[M, rows]``, each expert's weights decoded once for all its rows."""
        raise NotImplementedError


def expert_matmul(x: Tensor, expert_ids: Tensor, weights: ExpertWeights) -> Tensor:
    """``y[t, j, o] = sum_c x[t, (j,) c] * W[ids[t, j]][o, c]``: ``x`` is ``[n, cols]`` (one input per
    token, shared by its experts) or ``[n, top_k, cols]``; ``expert_ids`` ``[n, top_k]`` int32."""
    rows, cols = weights.rows, weights.cols

    def compute(xt: te.Tensor, ids: te.Tensor, *planes: te.Tensor):
        n, top_k = ids.shape
        c = te.reduce_axis((0, cols), name="c")

        def value(t, j):
            return xt[t, j, c] if len(xt.shape) == 3 else xt[t, c]

        def body(t, j, o):
            w = weights.element(planes, ids[t, j] * rows + o, c)
            return te.sum(value(t, j) * w.astype(xt.dtype), axis=c)

        return te.compute((n, top_k, rows), body, name="moe_matmul")

    return op.tensor_expr_op(compute, name_hint="moe_matmul", args=[x, expert_ids, *weights.planes()])


def top_k_experts(probs: Tensor, top_k: int, floor: float = -1.0) -> Tensor:
    """Indices ``[n, top_k]`` (int32) of each row's ``top_k`` largest probabilities, largest first (ties:
    the lower index). ``top_k`` rounds of max + first-argmax over the not yet chosen experts: plain
    reductions that every target's scheduler handles, cheap for the few experts a router has. ``floor``: a
    value below every score (probabilities: -1; router logits: a large negative number)."""

    def compute(p: te.Tensor):
        chosen: list[te.Tensor] = []
        for rank in range(top_k):
            chosen.append(_next_choice(p, chosen, rank, floor))

        def pick(t, j):
            value = chosen[-1][t]
            for rank in reversed(range(top_k - 1)):
                value = tirx.if_then_else(j == rank, chosen[rank][t], value)
            return value

        return te.compute((p.shape[0], top_k), pick, name="topk_index")

    return op.tensor_expr_op(compute, name_hint="topk_experts", args=[probs])


def _next_choice(p: te.Tensor, chosen: list[te.Tensor], rank: int, floor: float) -> te.Tensor:
    """The index of each row's largest score among the experts not in ``chosen`` (first on ties)."""
    n, experts = p.shape

    def masked(t, e):
        taken = tirx.const(False, "bool")
        for index in chosen:
            taken = tirx.Or(taken, index[t] == e)
        return tirx.if_then_else(taken, tirx.const(floor, p.dtype), p[t, e])

    r = te.reduce_axis((0, experts), name="e")
    best = te.compute((n,), lambda t: te.max(masked(t, r), axis=r), name=f"top{rank}_value")
    r2 = te.reduce_axis((0, experts), name="e")
    return te.compute(
        (n,),
        lambda t: te.min(
            tirx.if_then_else(masked(t, r2) == best[t], r2.var.astype("int32"), tirx.const(int(experts), "int32")),
            axis=r2,
        ),
        name=f"top{rank}_index",
    )


def routing_weights(probs: Tensor, expert_ids: Tensor, renormalize: bool) -> Tensor:
    """The chosen experts' probabilities ``[n, top_k]``, divided by their sum when ``renormalize``."""

    def compute(p: te.Tensor, ids: te.Tensor):
        n, top_k = ids.shape
        picked = te.compute((n, top_k), lambda t, j: p[t, ids[t, j]], name="routing_pick")
        if not renormalize:
            return picked
        total = te.compute((n,), lambda t: sum(picked[t, j] for j in range(int(top_k))), name="routing_sum")
        return te.compute((n, top_k), lambda t, j: picked[t, j] / total[t], name="routing_weights")

    return op.tensor_expr_op(compute, name_hint="routing_weights", args=[probs, expert_ids])


def combine_experts(outputs: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[t, j] * outputs[t, j, :]`` -> ``[n, hidden]``."""

    def compute(y: te.Tensor, w: te.Tensor):
        n, top_k, hidden = y.shape

        def body(t, o):
            return sum(y[t, j, o] * w[t, j].astype(y.dtype) for j in range(int(top_k)))

        return te.compute((n, hidden), body, name="moe_combine")

    return op.tensor_expr_op(compute, name_hint="moe_combine", args=[outputs, weights])


class Router(nn.Module):
    """The gate ``[experts, hidden]``: a float matrix (never quantized: routing decides which experts run)."""

    def __init__(self, hidden: int, experts: int):
        self.weight = nn.Parameter((experts, hidden))

    def forward(self, x: Tensor) -> Tensor:
        logits = op.matmul(x, op.permute_dims(self.weight))
        return logits.astype("float32") if logits.dtype != "float32" else logits


def add_expert_bias(y: Tensor, expert_ids: Tensor, bias: Tensor) -> Tensor:
    """``y[t, j, o] + bias[ids[t, j], o]`` for gathered expert outputs ``[n, top_k, rows]``."""

    def compute(yt: te.Tensor, ids: te.Tensor, b: te.Tensor):
        return te.compute(yt.shape, lambda t, j, o: yt[t, j, o] + b[ids[t, j], o].astype(yt.dtype), name="moe_bias")

    return op.tensor_expr_op(compute, name_hint="moe_bias", args=[y, expert_ids, bias])


def add_grouped_bias(y: Tensor, indptr: Tensor, bias: Tensor) -> Tensor:
    """``y[r, o] + bias[e, o]`` for expert-major rows ``[M, rows]``, row ``r`` being expert ``e``'s when
    ``indptr[e] <= r < indptr[e + 1]`` (the expert counted from ``indptr``: experts are few)."""

    def compute(yt: te.Tensor, ptr: te.Tensor, b: te.Tensor):
        experts = int(b.shape[0])
        e = te.reduce_axis((0, experts), name="e")
        owner = te.compute(
            (yt.shape[0],),
            lambda r: te.sum(tirx.if_then_else(ptr[e + 1] <= r.astype("int32"), 1, 0), axis=e),
            name="moe_row_expert",
        )
        return te.compute(
            yt.shape, lambda r, o: yt[r, o] + b[tirx.min(owner[r], experts - 1), o].astype(yt.dtype), name="moe_bias"
        )

    return op.tensor_expr_op(compute, name_hint="moe_grouped_bias", args=[y, indptr, bias])


class Experts(nn.Module):
    """The experts' gated FFNs: fused gate/up ``[E * 2 * inter, hidden]`` (each expert's gate rows, then its up
    rows) and down ``[E * hidden, inter]``.

    ``activation``: the gate/up activation of a ``[..., 2 * inter]`` projection (SwiGLU unless a family gives
    its own); ``bias``: per-expert biases after each matmul, ``gate_up_proj_bias`` ``[E, 2 * inter]`` and
    ``down_proj_bias`` ``[E, hidden]`` (GPT-OSS)."""

    def __init__(
        self, experts: int, hidden: int, inter: int, activation: Callable[[Tensor], Tensor] = swiglu, bias: bool = False
    ):
        self.inter = inter
        self.activation = activation
        self.gate_up_proj = ExpertWeights(experts, 2 * inter, hidden)
        self.down_proj = ExpertWeights(experts, hidden, inter)
        self.gate_up_proj_bias = nn.Parameter((experts, 2 * inter)) if bias else None
        self.down_proj_bias = nn.Parameter((experts, hidden)) if bias else None

    def has_grouped(self) -> bool:
        return self.gate_up_proj.has_grouped() and self.down_proj.has_grouped()

    def forward(self, x: Tensor, expert_ids: Tensor) -> Tensor:
        """Gathered: ``[n, top_k, hidden]`` outputs, each (token, choice) reading its expert's rows."""
        gate_up = self.gate_up_proj(x, expert_ids)
        if self.gate_up_proj_bias is not None:
            gate_up = add_expert_bias(gate_up, expert_ids, self.gate_up_proj_bias)
        out = self.down_proj(self.activation(gate_up), expert_ids)
        if self.down_proj_bias is not None:
            out = add_expert_bias(out, expert_ids, self.down_proj_bias)
        return out

    def grouped(self, x: Tensor, indptr: Tensor) -> Tensor:
        """Grouped: expert-major rows in, expert-major ``[n * top_k, hidden]`` out."""
        gate_up = self.gate_up_proj.grouped(x, indptr)
        if self.gate_up_proj_bias is not None:
            gate_up = add_grouped_bias(gate_up, indptr, self.gate_up_proj_bias)
        out = self.down_proj.grouped(self.activation(gate_up), indptr)
        if self.down_proj_bias is not None:
            out = add_grouped_bias(out, indptr, self.down_proj_bias)
        return out


class SparseMoE(nn.Module):
    """Router + experts for ``[b, s, hidden]`` activations (softmax scoring, top-k).

    ``scale_inputs`` (Llama 4): each routing weight multiplies its expert's input instead of its output, and the
    chosen experts' outputs are summed."""

    scale_inputs: bool = False

    def __init__(
        self,
        hidden: int,
        experts: int,
        inter: int,
        top_k: int,
        renormalize: bool,
        activation: Callable[[Tensor], Tensor] = swiglu,
        expert_bias: bool = False,
    ):
        self.top_k, self.renormalize, self.num_experts = top_k, renormalize, experts
        self.gate = Router(hidden, experts)
        self.experts = Experts(experts, hidden, inter, activation, expert_bias)

    def route(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's chosen experts ``[n, top_k]`` (int32) and their weights ``[n, top_k]`` (float32)."""
        probs = op.softmax(self.gate(flat), axis=-1)
        expert_ids = top_k_experts(probs, self.top_k)
        return expert_ids, routing_weights(probs, expert_ids, self.renormalize)

    def forward(self, x: Tensor) -> Tensor:
        b, s, hidden = x.shape
        flat = op.reshape(x, (b * s, hidden))
        expert_ids, weights = self.route(flat)
        if self.scale_inputs:
            return op.reshape(self._run_scaled_inputs(flat, expert_ids, weights), (b, s, hidden))
        if self.experts.has_grouped():  # sort the assignments by expert; each expert's tiles decoded once
            order, indptr, slot = sort_by_expert(expert_ids, self.num_experts)
            sorted_out = self.experts.grouped(gather_assignments(flat, order, self.top_k), indptr)
            out = combine_sorted(sorted_out, slot, weights)
        else:
            out = combine_experts(self.experts(flat, expert_ids), weights)
        return op.reshape(out, (b, s, hidden))

    def _run_scaled_inputs(self, flat: Tensor, expert_ids: Tensor, weights: Tensor) -> Tensor:
        """``sum_j expert_{ids[t, j]}(weights[t, j] * x[t])`` -> ``[n, hidden]``."""
        n, hidden = flat.shape
        rows = scale_rows(flat, weights)  # [n, top_k, hidden]
        if self.experts.has_grouped():  # each assignment's own scaled row, in expert-major order
            order, indptr, slot = sort_by_expert(expert_ids, self.num_experts)
            assignments = op.reshape(rows, (n * self.top_k, hidden))
            sorted_out = self.experts.grouped(gather_assignments(assignments, order, 1), indptr)
            return combine_sorted(sorted_out, slot, op.ones((n, self.top_k), "float32"))
        return op.sum(self.experts(rows, expert_ids), axis=1)


def scale_rows(x: Tensor, weights: Tensor) -> Tensor:
    """``x[t] * weights[t, j]`` -> ``[n, top_k, cols]`` (each choice's scaled copy of its token's row)."""

    def compute(xt: te.Tensor, w: te.Tensor):
        n, top_k = w.shape
        return te.compute(
            (n, top_k, xt.shape[1]), lambda t, j, c: xt[t, c] * w[t, j].astype(xt.dtype), name="moe_scale_rows"
        )

    return op.tensor_expr_op(compute, name_hint="moe_scale_rows", args=[x, weights])
