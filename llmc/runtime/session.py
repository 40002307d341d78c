"""An engine plus its tokenizer: prompt building, streaming text and multi-turn chat with KV reuse."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmc.runtime.engine import Engine
from llmc.runtime.generate import GenerationResult, SamplingParams, generate
from llmc.runtime.tokenizer import ArtifactTokenizer, StreamDecoder


class Session:
    """One artifact loaded for generation."""

    def __init__(self, artifact: str | Path, device: str = "cpu"):
        self.engine = Engine(artifact, device)
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


class ChatSession(Session):
    """Multi-turn chat: the conversation is re-rendered each turn, and only new tokens are prefilled."""

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

    def _drop_cache(self) -> None:
        if self.active:
            self.engine.remove_sequence(self.SEQ_ID)
        self.fed_ids, self.active = [], False

    def send(
        self,
        text: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        on_text: Callable[[str], None],
    ) -> GenerationResult:
        self.messages.append({"role": "user", "content": text})
        system = [{"role": "system", "content": self.system}] if self.system else []
        if self.tokenizer.chat_template:
            full = self.tokenizer.encode(self.tokenizer.apply_chat_template(system + self.messages))
        else:
            full = self.fed_ids + self.tokenizer.encode(text)
        if not self.active or full[: len(self.fed_ids)] != self.fed_ids:
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
        )
        # every output token but the last was fed back through decode
        self.fed_ids = full + result.output_ids[:-1]
        reply = [t for t in result.output_ids if t not in self.tokenizer.eos_token_ids]
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply)})
        return result
