"""The interactive loop of ``llmc chat``: commands, Ctrl-C handling and one-line notes, over a ``ChatSession``."""

from __future__ import annotations

import sys
from pathlib import Path

from llmc.errors import LlmcError
from llmc.runtime.session import ChatSession, TurnFit

HELP = """commands:
  /help          this list
  /reset         forget the conversation (the system message stays)
  /system TEXT   set the system message (/system alone clears it)
  /exit          quit (also /quit, Ctrl-D, or Ctrl-C twice at the prompt)
Ctrl-C during an answer stops it and returns to the prompt."""


class ChatLoop:
    """Reads lines, answers them; never ends on a full context window or a stopped answer."""

    def __init__(
        self,
        artifact: str | Path,
        device: str,
        system: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ):
        self.session = ChatSession(artifact, device, system)
        self.sampling = (max_tokens, temperature, top_p, seed)
        self.answering = False
        self.stop_requested = False

    @staticmethod
    def note(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    @staticmethod
    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def on_sigint(self, signum, frame) -> None:
        """SIGINT handler: the first Ctrl-C during an answer stops it at the next token; otherwise interrupt."""
        if self.answering and not self.stop_requested:
            self.stop_requested = True
            return
        raise KeyboardInterrupt

    def run(self) -> None:
        self.note("llmc chat: /help lists the commands, /exit quits.")
        interrupted_at_prompt = False
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                self.write("\n")
                return
            except KeyboardInterrupt:
                if interrupted_at_prompt:
                    self.write("\n")
                    return
                interrupted_at_prompt = True
                self.write("\n")
                self.note("[Ctrl-C again, Ctrl-D or /exit to quit]")
                continue
            interrupted_at_prompt = False
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            try:
                self.answer(text)
            except KeyboardInterrupt:  # a second Ctrl-C before the answer could stop: quit
                self.write("\n")
                return

    def command(self, text: str) -> bool:
        """Run a /command; False means quit."""
        name, _, argument = text.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.note(HELP)
        elif name == "/reset":
            self.session.reset()
            self.note("[conversation cleared]")
        elif name == "/system":
            self.session.set_system(argument.strip())
            self.note("[system message set]" if argument.strip() else "[system message cleared]")
        else:
            self.note(f"[unknown command {name}; /help lists the commands]")
        return True

    def answer(self, text: str) -> None:
        max_tokens, temperature, top_p, seed = self.sampling
        self.answering, self.stop_requested = True, False
        try:
            result = self.session.send(
                text,
                max_tokens,
                temperature,
                top_p,
                seed,
                on_text=self.write,
                should_stop=lambda: self.stop_requested,
                on_fit=self.describe_fit,
            )
        except LlmcError as err:  # e.g. a system message that fills the window: say so, keep chatting
            self.answering = False
            self.note(f"llmc: error: {err}")
            return
        finally:
            self.answering = False
        self.write("\n")
        if result.finish_reason == "cancelled":
            self.note("[stopped]")
        elif result.finish_reason == "context_window":
            self.note("[the answer reached the context window; older turns will be dropped next time]")

    def describe_fit(self, fit: TurnFit) -> None:
        parts = []
        if fit.dropped_turns:
            parts.append(f"dropped the {fit.dropped_turns} oldest turn{'s' * (fit.dropped_turns > 1)}")
        if fit.truncated_to:
            parts.append(f"kept only the last {fit.truncated_to} tokens of your message")
        window = self.session.engine.context_window
        self.note(f"[context window of {window} tokens: {' and '.join(parts)}]")
