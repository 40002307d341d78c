"""Cheaper kernel construction: TVMScript kernels are parsed once per process, and parsed faster.

``memoized_kernel``: llmc's kernel makers are pure functions of plain arguments (head counts, dtypes, a RoPE
dict, soft-cap...), so a process that compiles several models (a test worker, a benchmark) parses each
distinct kernel once; a call with any non-plain argument is made as usual.

``memoized_getmodule``: TVMScript's parser calls ``inspect.stack()`` for every kernel it parses, and for each
outer frame ``inspect.findsource`` asks ``inspect.getmodule`` which module owns the frame's file. For a file
that is no module's (pytest-rewritten tests, exec'd kernel sources, ``<string>``) ``getmodule`` rescans all of
``sys.modules`` on every call: with torch and transformers loaded that scan was half of a tiny model's kernel-
building time. Within ``memoized_getmodule()`` frame lookups are answered once per file name (the owner of a
file does not change while kernels are built); everything else goes to ``inspect``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterator
from typing import TypeVar

Maker = TypeVar("Maker", bound=Callable)
_PLAIN = (int, float, str, bool, type(None))

_ORIGINAL = inspect.getmodule


@contextlib.contextmanager
def memoized_getmodule() -> Iterator[None]:
    """Within the block, ``inspect.getmodule(frame, filename)`` is looked up once per file name."""
    if inspect.getmodule is not _ORIGINAL:  # nested: the outer block's memo serves
        yield
        return
    owners: dict[str, object] = {}

    def getmodule(obj, _filename=None):
        if _filename is None or not inspect.isframe(obj):
            return _ORIGINAL(obj, _filename)
        if _filename not in owners:
            owners[_filename] = _ORIGINAL(obj, _filename)
        return owners[_filename]

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = _ORIGINAL


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def memoized_kernel(maker: Maker) -> Maker:
    """``maker`` answered from a per-process memo when all its arguments are plain values."""
    made: dict[str, object] = {}

    @functools.wraps(maker)
    def memoized(*args, **kwargs):
        if not (_plain(args) and _plain(kwargs)):
            return maker(*args, **kwargs)
        key = json.dumps([args, kwargs], sort_keys=True)
        if key not in made:
            made[key] = maker(*args, **kwargs)
        return made[key]

    return memoized  # type: ignore[return-value]
