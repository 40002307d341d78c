"""The one error family the CLI turns into a one-line message (``--verbose`` shows the traceback)."""

from __future__ import annotations


class LlmcError(Exception):
    """A user-facing error: the message names the input at fault and what to do about it."""


class ModelSourceError(LlmcError):
    """MODEL could not be resolved to local files."""


class CheckpointError(LlmcError):
    """A checkpoint file is missing, malformed or does not match the model config."""


class ConfigError(LlmcError):
    """config.json (or GGUF metadata) is missing, malformed or names something unsupported."""


class ArtifactError(LlmcError):
    """A compiled artifact folder is missing, incomplete or from an incompatible version."""


class GenerationError(LlmcError):
    """A request the runtime cannot serve (prompt too long, no tokenizer, ...)."""
