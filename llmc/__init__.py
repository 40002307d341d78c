"""llmc: compile Hugging Face / GGUF language models into target-specific TVM libraries."""

__version__ = "0.1.0"
