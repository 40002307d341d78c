"""TVM kernel makers re-read from TVM's own source with a few lines changed (llmc's GPU kernel patches).

TVMScript parses a kernel from its source text, found through ``linecache``; a patched copy is registered there
under a name of its own and executed in the namespace of TVM's module (plus llmc's helpers), so it is parsed as
TVM's kernel with only the named lines different. A line that is not found exactly once is an error: the patch was
written for TVM 0.27's text.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
from collections.abc import Callable, Iterator
from types import ModuleType


def patched_function(module: ModuleType, name: str, replacements: list[tuple[str, str]], helpers: dict, tag: str):
    """``module.name`` compiled from its source with each ``(old, new)`` text replaced; ``helpers`` join its
    namespace (the names ``new`` calls)."""
    source = inspect.getsource(getattr(module, name))
    for old, new in replacements:
        if source.count(old) != 1:
            raise RuntimeError(f"TVM's {name} changed: llmc's {tag} patch no longer applies ({old.strip()!r})")
        source = source.replace(old, new)
    filename = f"<llmc-{tag}-{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = dict(vars(module), **helpers)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - TVM's own kernel source, lines changed
    return namespace[name]


@contextlib.contextmanager
def patched_attention_makers(prefill_macros: Callable, decode_maker: Callable) -> Iterator[None]:
    """While a GPU cache is built, TVM's prefill kernels take their macros from ``prefill_macros(TVM's
    _make_prefill_macros)`` and its decode kernel maker is ``decode_maker(TVM's _decode_kernels module)``."""
    from tvm.relax.frontend.nn.llm import _decode_kernels, _prefill_kernels, kv_cache

    make_macros, decode = _prefill_kernels._make_prefill_macros, kv_cache._attention_decode
    _prefill_kernels._make_prefill_macros = prefill_macros(make_macros)
    kv_cache._attention_decode = decode_maker(_decode_kernels)
    try:
        yield
    finally:
        _prefill_kernels._make_prefill_macros, kv_cache._attention_decode = make_macros, decode
