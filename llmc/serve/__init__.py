"""``llmc serve``: an OpenAI-compatible HTTP server over the runtime's serving engine."""
