"""TVM's build errors as one-line ``LlmcError`` messages (its C++ traces stay behind ``--verbose``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llmc.errors import LlmcError


@contextlib.contextmanager
def tvm_build_errors(target_name: str, interrupted: list) -> Iterator[None]:
    """Re-raise a TVM failure as an ``LlmcError`` naming the target and the error's first line; a signal that
    TVM wrapped in its own error (``interrupted`` non-empty, see ``llmc.interrupts``) as KeyboardInterrupt."""
    try:
        yield
    except LlmcError:
        raise
    except Exception as err:  # TVM's errors carry long C++ traces; keep the first line
        if interrupted or "KeyboardInterrupt" in str(err):  # a signal TVM turned into its own error
            raise KeyboardInterrupt from err
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise LlmcError(
            f"TVM failed to build the library for target {target_name}: {first}. "
            "Re-run with --verbose for the full trace."
        ) from err
