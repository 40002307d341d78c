"""Nested TVM pass contexts that keep what the enclosing one set."""

from __future__ import annotations

from collections.abc import Sequence

import tvm


def nested_pass_context(config: dict | None = None, instruments: Sequence = ()) -> tvm.transform.PassContext:
    """A PassContext with the current one's opt level, options and instruments, plus ``config`` and ``instruments``.

    A bare ``PassContext(...)`` drops the enclosing instruments (llmc's memory-plan probe) and options.
    """
    outer = tvm.transform.PassContext.current()
    merged = {**{str(k): v for k, v in outer.config.items()}, **(config or {})}
    return tvm.transform.PassContext(
        opt_level=outer.opt_level, config=merged, instruments=[*outer.instruments, *instruments]
    )
