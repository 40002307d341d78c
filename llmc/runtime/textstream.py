"""A request's output text: token ids to text increments, with stop strings matched across token boundaries."""

from __future__ import annotations

from llmc.runtime.tokenizer import ArtifactTokenizer, StreamDecoder


class OutputText:
    """Emits text as tokens arrive, holding back any tail that could still become a stop string."""

    def __init__(self, tokenizer: ArtifactTokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.sent = 0  # how much of ``text`` was handed out
        self.stopped = False

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (the text that is now safe to send, whether a stop string was reached)."""
        self.text += self.decoder.push(token_id)
        if not self.stop:
            return self._take(len(self.text)), False
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        """The rest once generation ended: the held-back tail and any incomplete character (as U+FFFD)."""
        if not self.stopped:
            decoder = self.decoder
            self.text += decoder.tokenizer.decode(decoder.ids)[len(decoder.emitted) :]
            decoder.emitted = decoder.tokenizer.decode(decoder.ids)
        return self._take(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of the unsent text that is a proper prefix of a stop string."""
        unsent = self.text[self.sent :]
        for length in range(min(len(unsent), max(len(s) for s in self.stop) - 1), 0, -1):
            if any(s.startswith(unsent[-length:]) for s in self.stop):
                return length
        return 0

    def _take(self, end: int) -> str:
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        return piece
