"""``response_format`` through xgrammar (optional: ``pip install xgrammar``): JSON schema or any JSON object.

The grammar is compiled on the handler thread; the scheduler asks the request's matcher for a token mask
before sampling and feeds it the sampled token (``llmc.runtime.sampling.Constraint``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from llmc.serve.protocol import APIError


class GrammarConstraint:
    """One request's matcher over a compiled grammar."""

    def __init__(self, matcher, bitmask):
        self.matcher, self.bitmask = matcher, bitmask

    def allowed(self, vocab_size: int) -> np.ndarray:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        bits = np.unpackbits(self.bitmask.numpy()[0].view(np.uint8), bitorder="little")
        return bits[:vocab_size].astype(bool)

    def accept(self, token_id: int) -> None:
        self.matcher.accept_token(token_id)


class GrammarFactory:
    """Compiles ``response_format`` objects for one tokenizer; xgrammar is imported on first use."""

    def __init__(self, tokenizer_file: Path, vocab_size: int, stop_token_ids: list[int]):
        self.tokenizer_file, self.vocab_size, self.stop_token_ids = tokenizer_file, vocab_size, stop_token_ids
        self._compiler = None
        self._lock = threading.Lock()

    def _get_compiler(self):
        with self._lock:
            if self._compiler is None:
                try:
                    import xgrammar
                    from transformers import PreTrainedTokenizerFast
                except ImportError as err:
                    raise APIError(
                        400,
                        "response_format json_schema/json_object needs constrained decoding: install xgrammar "
                        'on the server (pip install xgrammar), or use {"type": "text"}.',
                        param="response_format",
                    ) from err
                tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(self.tokenizer_file))
                info = xgrammar.TokenizerInfo.from_huggingface(
                    tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids
                )
                self._compiler = xgrammar.GrammarCompiler(info)
            return self._compiler

    def constraint(self, response_format: dict) -> GrammarConstraint:
        compiler = self._get_compiler()
        import xgrammar

        if response_format.get("type") == "json_object":
            compiled = compiler.compile_builtin_json_grammar()
        else:
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise APIError(
                    400,
                    'response_format json_schema needs {"json_schema": {"schema": {...}}}.',
                    param="response_format",
                )
            try:
                compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
            except (RuntimeError, ValueError) as err:  # xgrammar's errors for schemas it cannot compile
                raise APIError(
                    400, f"response_format: cannot compile the schema ({err}).", param="response_format"
                ) from err
        matcher = xgrammar.GrammarMatcher(compiled)
        return GrammarConstraint(matcher, xgrammar.allocate_token_bitmask(1, self.vocab_size))
