"""`llmc chat` through a pipe: a conversation longer than the context window, commands, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from llmc.cli import main

LINES = [
    "hello there, how are you doing today my friend",
    "tell me about compilers and machine code please",
    "what about the quick brown fox jumping over the dog",
    "another long question about the lazy dog and numbers 0123456789",
    "and one more about symbols !?.,;:()[]{} and source code",
    "def add(a, b): return a + b, what does this do",
    "the quick brown fox jumps over the lazy dog again",
    "a compiler turns source code into machine code, right",
]


@pytest.fixture(scope="module")
def artifact(compiled):
    return compiled("llama_tied", "q0f32")  # context window 128: a few turns fill it


def chat(artifact, text: str, *args: str):
    return CliRunner().invoke(main, ["chat", str(artifact), "--temperature", "0", *args], input=text)


def test_conversation_longer_than_the_context_window_keeps_going(artifact):
    result = chat(artifact, "\n".join(LINES) + "\n", "--max-tokens", "24")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(">>> ") == len(LINES) + 1  # every turn answered, then EOF
    assert "context window of 128 tokens: dropped the" in result.stderr
    assert "error" not in result.stderr


def test_a_message_longer_than_the_window_is_cut_to_its_end(artifact):
    result = chat(artifact, "the quick brown fox jumps " * 60 + "\nhi\n", "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    assert "kept only the last" in result.stderr and result.stdout.count(">>> ") == 3


def test_help_and_system_are_commands_not_prompts(artifact):
    result = chat(artifact, "/help\n/system be brief\n/nonsense\nhello\n/exit\nnever sent\n", "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    assert (
        "/reset" in result.stderr and "/system TEXT" in result.stderr and "unknown command /nonsense" in result.stderr
    )
    run = CliRunner().invoke(
        main,
        ["run", str(artifact), "--prompt", "hello", "--system", "be brief"]
        + ["--temperature", "0", "--max-tokens", "8"],
    )
    expected = run.stdout  # streamed the same way as chat's answers, then a newline
    # the only model answer is hello's, under the system message: /help and /nonsense never reached the model
    answers = [a for a in result.stdout.split(">>> ") if a.strip()]
    assert answers == [expected]


class ChatProcess:
    """`llmc chat` in a subprocess with pipes; stdout and stderr collected by threads."""

    def __init__(self, artifact, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmc", "chat", str(artifact), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out, self.err = bytearray(), bytearray()
        for stream, buffer in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, buffer), daemon=True).start()

    @staticmethod
    def _pump(stream, buffer: bytearray) -> None:
        while chunk := stream.read1(4096):
            buffer.extend(chunk)

    def wait_for(self, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"timed out; stdout={bytes(self.out)!r} stderr={bytes(self.err)!r}")
            time.sleep(0.01)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def interrupt(self) -> None:
        os.kill(self.proc.pid, signal.SIGINT)


def test_ctrl_c_stops_the_answer_then_twice_at_the_prompt_exits_0(serving_artifact):
    chat = ChatProcess(serving_artifact, "--temperature", "0", "--max-tokens", "400")
    chat.wait_for(lambda: chat.out.count(b">>> ") == 1)
    chat.send("The quick brown fox")
    chat.wait_for(lambda: len(chat.out) > 12)  # the answer is streaming
    chat.interrupt()
    chat.wait_for(lambda: b"[stopped]" in chat.err and chat.out.count(b">>> ") == 2)
    assert len(chat.out) < 400 * 4, "the answer stopped early"
    chat.send("hi")  # the chat goes on
    chat.wait_for(lambda: chat.out.count(b">>> ") == 3, timeout=60)
    chat.interrupt()  # at the prompt: a hint
    chat.wait_for(lambda: b"Ctrl-C again" in chat.err)
    chat.interrupt()  # twice: quit (a hang guard, not a timing: 30 s ran out once on a machine at load 8)
    assert chat.proc.wait(timeout=90) == 0, bytes(chat.err)
    assert b"Traceback" not in chat.err and b"interrupted" not in chat.err


def test_ctrl_d_exits_0(artifact):
    chat = ChatProcess(artifact)
    chat.wait_for(lambda: b">>> " in chat.out)
    chat.proc.stdin.close()
    assert chat.proc.wait(timeout=30) == 0
