"""The module rewrite every scheme shares: offer each submodule to a ``swap`` function, depth first.

Written on TVM's ``nn.Mutator``, which walks a module's attributes in order (and ``ModuleList``
elements by index), naming each submodule by its dotted path (``model.layers.0.mlp.down_proj``),
the names of ``named_parameters`` without the ``.weight``. ``swap(name, child)`` returns the
module that replaces ``child``, or None to keep it and visit its own submodules; a replacement is
not visited. Parameters and effects are left alone; the root module is never offered.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.relax.frontend import nn

Swap = Callable[[str, nn.Module], "nn.Module | None"]


class _SwapMutator(nn.Mutator):
    def __init__(self, swap: Swap):
        self.swap = swap

    def visit_module(self, name: str, node: nn.Module) -> nn.Module:
        new = self.swap(name, node)
        return new if new is not None else super().visit_module(name, node)

    def visit_param(self, name: str, node: nn.Parameter) -> nn.Parameter:
        return node

    def visit_effect(self, name: str, node: nn.Effect) -> nn.Effect:
        return node


def rewrite_modules(module: nn.Module, swap: Swap) -> None:
    """Replace, in place, every submodule of ``module`` for which ``swap(name, child)`` returns one."""
    _SwapMutator(swap).visit("", module)
