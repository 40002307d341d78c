"""Layers shared by the families: an embedding that can also act as the (tied) LM head, and a row gather."""

from __future__ import annotations

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


def gather_rows(table: Tensor, indices: Tensor, name: str = "take") -> Tensor:
    """``table[indices]`` for a 1-D index tensor, as one TE kernel (no out-of-bounds fast path)."""

    def compute(t: te.Tensor, idx: te.Tensor):
        return te.compute((idx.shape[0], t.shape[1]), lambda i, j: t[idx[i], j], name=name)

    return op.tensor_expr_op(compute, name_hint=name, args=[table, indices])


class Embedding(nn.Module):
    """Token embedding; ``lm_head_forward`` reuses the table as the output projection (tied weights)."""

    def __init__(self, num: int, dim: int):
        self.num, self.dim = num, dim
        self.weight = nn.Parameter((num, dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        return gather_rows(self.weight, input_ids)

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return op.matmul(hidden, op.permute_dims(self.weight))
