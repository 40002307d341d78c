"""An engine plus its tokenizer: prompt building, streaming text and multi-turn chat with KV reuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmc.errors import GenerationError
from llmc.runtime.disco_engine import open_engine
from llmc.runtime.generate import GenerationResult, SamplingParams, generate
from llmc.runtime.tokenizer import ArtifactTokenizer, StreamDecoder


class Session:
    """One artifact loaded for generation."""

    def __init__(self, artifact: str | Path, device: str = "cpu"):
        self.engine = open_engine(artifact, device)  # a tensor-parallel artifact: DiscoEngine
        self.tokenizer = ArtifactTokenizer(self.engine.folder, self.engine.config["tokenizer"])

    def prompt_ids(self, prompt: str, chat: bool | None, system: str | None = None) -> list[int]:
        """Token ids for a prompt; with ``chat`` (default: if a template exists) the template is applied."""
        use_chat = bool(self.tokenizer.chat_template) if chat is None else chat
        if not use_chat:
            return self.tokenizer.encode(prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))

    def streamer(self, write: Callable[[str], None]) -> Callable[[int], None]:
        decoder = StreamDecoder(self.tokenizer)

        def on_token(token_id: int) -> None:
            if token_id not in self.tokenizer.eos_token_ids:
                write(decoder.push(token_id))

        return on_token

    def generate(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        on_token: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        params = SamplingParams(temperature, top_p, seed)
        return generate(self.engine, prompt_ids, max_tokens, params, self.tokenizer.eos_token_ids, on_token)


@dataclass
class TurnFit:
    """How a new turn was made to fit the context window: older turns dropped, the message cut."""

    dropped_turns: int = 0
    truncated_to: int | None = None  # tokens of the user's message kept, when it alone was too long


class ChatSession(Session):
    """Multi-turn chat: the conversation is re-rendered each turn, and only new tokens are prefilled.

    When the next turn would not fit the context window, the oldest turns are dropped (the system
    message stays); a single message longer than the window keeps only its end.
    """

    SEQ_ID = 0

    def __init__(self, artifact: str | Path, device: str = "cpu", system: str | None = None):
        super().__init__(artifact, device)
        self.system = system
        self.messages: list[dict] = []
        self.fed_ids: list[int] = []  # tokens whose keys/values are in the cache
        self.active = False

    def reset(self) -> None:
        """Forget the conversation."""
        self._drop_cache()
        self.messages = []

    def set_system(self, text: str | None) -> None:
        """Replace the system message (the cached prefix no longer matches, so the next turn re-prefills)."""
        self.system = text or None

    def _drop_cache(self) -> None:
        if self.active:
            self.engine.remove_sequence(self.SEQ_ID)
        self.fed_ids, self.active = [], False

    def _render(self, messages: list[dict]) -> list[int]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(system + messages))

    def reserve(self, max_tokens: int) -> int:
        """Tokens kept free for the answer when fitting a turn: ``max_tokens``, at most half the window."""
        return max(1, min(max_tokens, self.engine.context_window // 2))

    def _fit(self, text: str, reserve: int) -> tuple[list[int], TurnFit]:
        """Token ids of the conversation plus the new user ``text``, made to fit ``window - reserve``."""
        budget, fit = self.engine.context_window - reserve, TurnFit()
        if not self.tokenizer.chat_template:  # plain continuation: keep the most recent tokens
            full = self.fed_ids + self.tokenizer.encode(text)
            if len(full) > budget:
                fit.truncated_to, full = budget, full[-budget:]
            return full, fit
        while True:
            full = self._render(self.messages + [{"role": "user", "content": text}])
            if len(full) <= budget or not self.messages:
                break
            # drop the oldest exchange: a user message and the assistant reply after it
            drop = 2 if len(self.messages) > 1 and self.messages[1]["role"] == "assistant" else 1
            self.messages = self.messages[drop:]
            fit.dropped_turns += 1
        if len(full) > budget:
            overhead = len(self._render([{"role": "user", "content": ""}]))
            keep = budget - overhead - 1
            if keep < 1:
                raise GenerationError(
                    f"the system message alone takes {overhead} of the {self.engine.context_window}-token context "
                    "window; set a shorter one with /system."
                )
            ids = self.tokenizer.encode(text)
            while len(full) > budget and keep > 0:  # decoding a cut can re-tokenize a little longer
                text = self.tokenizer.decode(ids[-keep:])
                full = self._render([{"role": "user", "content": text}])
                fit.truncated_to, keep = keep, keep - 4
        self.messages.append({"role": "user", "content": text})
        return full, fit

    def send(
        self,
        text: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool] | None = None,
        on_fit: Callable[[TurnFit], None] | None = None,
    ) -> GenerationResult:
        full, fit = self._fit(text, self.reserve(max_tokens))
        if on_fit and (fit.dropped_turns or fit.truncated_to):
            on_fit(fit)
        if not self.active or full[: len(self.fed_ids)] != self.fed_ids or len(full) <= len(self.fed_ids):
            # the re-rendered conversation does not extend what is cached: prefill it from scratch
            self._drop_cache()
            self.engine.add_sequence(self.SEQ_ID)
            self.active = True
        new_ids = full[len(self.fed_ids) :]
        params = SamplingParams(temperature, top_p, seed)
        result = generate(
            self.engine,
            new_ids,
            max_tokens,
            params,
            self.tokenizer.eos_token_ids,
            self.streamer(on_text),
            seq_id=self.SEQ_ID,
            keep_sequence=True,
            should_stop=should_stop,
        )
        # every output token but the last was fed back through decode
        self.fed_ids = full + result.output_ids[:-1]
        reply = [t for t in result.output_ids if t not in self.tokenizer.eos_token_ids]
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply)})
        return result
