"""The runtime through the CLI: run --json, sampling, chat with KV reuse, context-window stop, runtime-only TVM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from llmc.cli import main
from llmc.runtime.session import ChatSession, Session


@pytest.fixture(scope="module")
def artifact(compiled):
    return compiled("llama_tied", "q0f32")


def run_json(artifact, *args: str) -> dict:
    result = CliRunner().invoke(main, ["run", str(artifact), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_run_json_shape_greedy_and_no_chat(artifact):
    out = run_json(artifact, "--prompt", "The quick brown fox", "--no-chat", "--temperature", "0", "--max-tokens", "12")
    assert set(out) >= {"prompt_ids", "output_ids", "text", "prefill_tok_s", "decode_tok_s", "finish_reason"}
    assert out["prompt_ids"] == Session(artifact).tokenizer.encode("The quick brown fox")
    assert 1 <= len(out["output_ids"]) <= 12 and out["prefill_tok_s"] > 0
    again = run_json(
        artifact, "--prompt", "The quick brown fox", "--no-chat", "--temperature", "0", "--max-tokens", "12"
    )
    assert again["output_ids"] == out["output_ids"], "greedy must be deterministic"


def test_chat_template_applied_by_default(artifact):
    out = run_json(artifact, "--prompt", "hi", "--temperature", "0", "--max-tokens", "2")
    tokenizer = Session(artifact).tokenizer
    expected = tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert out["prompt_ids"] == expected


def test_seeded_sampling_is_reproducible(artifact):
    args = ["--prompt", "A compiler", "--no-chat", "--temperature", "1.0", "--top-p", "0.9", "--max-tokens", "16"]
    first = run_json(artifact, *args, "--seed", "3")
    assert run_json(artifact, *args, "--seed", "3")["output_ids"] == first["output_ids"]
    others = [run_json(artifact, *args, "--seed", str(s))["output_ids"] for s in (4, 5, 6)]
    assert any(o != first["output_ids"] for o in others)


def test_generation_stops_at_the_context_window(artifact):
    session = Session(artifact)
    prompt = session.tokenizer.encode("the quick brown fox jumps " * 8)[:100]
    result = session.generate(prompt, 500, 0.0, 1.0, None)
    assert result.finish_reason == "context_window"
    assert len(prompt) + len(result.output_ids) == session.engine.context_window


@pytest.mark.parametrize("first_reply_tokens", [1, 6])
def test_chat_second_turn_matches_a_fresh_run(artifact, first_reply_tokens):
    """Turn 2 equals a stateless run over the whole conversation, whether the cache is reused or rebuilt."""
    chat = ChatSession(artifact)
    chat.send("hello there", first_reply_tokens, 0.0, 1.0, None, on_text=lambda _: None)
    second = chat.send("tell me more", 6, 0.0, 1.0, None, on_text=lambda _: None)
    assert chat.engine.sequence_length(chat.SEQ_ID) == len(chat.fed_ids)
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    fresh = Session(artifact)
    ids = fresh.tokenizer.encode(fresh.tokenizer.apply_chat_template(chat.messages[:-1]))
    if first_reply_tokens == 1:  # a one-token reply re-tokenizes to itself: only the new turn is prefilled
        assert len(second.prompt_ids) < len(ids)
    assert fresh.generate(ids, 6, 0.0, 1.0, None).output_ids == second.output_ids


def test_chat_command_reset_and_exit(artifact):
    result = CliRunner().invoke(
        main, ["chat", str(artifact), "--temperature", "0", "--max-tokens", "4"], input="hello\n/reset\nagain\n/exit\n"
    )
    assert result.exit_code == 0, result.output
    assert "[conversation cleared]" in result.stderr and result.stdout.count(">>> ") == 4


def test_runtime_needs_only_tvm_runtime(artifact):
    """With TVM_USE_RUNTIME_LIB=1 the compiler library is not loaded; generation must still work."""
    code = textwrap.dedent(f"""
        import sys
        from llmc.runtime.session import Session
        session = Session({str(artifact)!r})
        result = session.generate(session.tokenizer.encode("hello"), 4, 0.0, 1.0, None)
        assert len(result.output_ids) >= 1
        leaked = [m for m in sys.modules if m.startswith(("tvm.relax", "tvm.s_tir", "llmc.compiler"))]
        assert not leaked, leaked
        print("ok")
    """)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
