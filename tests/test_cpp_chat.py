"""llmc's C++ chat engine (llmc/templates/common: tokenizer + chat format + sampling + engine), linked with a
host system-lib build of SmolLM2-135M-Instruct (real weights), against llmc's Python runtime (`llmc chat`).

SmolLM2 is compiled twice, once per module (q0f32 on llvm, ~25 s each): as a static system library for the
C++ program (as `llmc package` builds phone libraries) and as the usual shared library for Python.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.package.app import chat_entry

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "llmc" / "templates" / "common"
SOURCES = ["llmc_chat.cc", "llmc_engine.cc", "llmc_tokenizer.cc", "llmc_regex.cc", "llmc_json.cc", "llmc_unicode.cc"]
PREFIX = "smollm2_q0f32_"
CONTEXT, CHUNK, MAX_TOKENS = 512, 64, 32
TURNS = ["What is the capital of France?", "And what is it famous for?"]


def _compile(options_kwargs: dict):
    from llmc.compile import CompileOptions, compile_model

    options = CompileOptions(quant="q0f32", quiet=True, context_window=CONTEXT, prefill_chunk=CHUNK, **options_kwargs)
    return compile_model("smollm2-135m", options)


@pytest.fixture(scope="module")
def smollm2_python(tmp_path_factory) -> Path:
    return _compile({"target": "llvm", "output": tmp_path_factory.mktemp("smollm2-py") / "model"})


@pytest.fixture(scope="module")
def chat_main(tmp_path_factory) -> dict:
    """The driver tests/cpp/chat_main.cc linked with SmolLM2 as a system lib; the bundle folder it reads."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build llmc's C++ engine")
    if platform.machine() != "x86_64" or sys.platform != "linux":
        pytest.skip("the host system-lib preset here is x86-64 Linux")
    import tvm
    import tvm_ffi

    from llmc.compiler import backends, targets
    from llmc.package.staticlib import extract_objects

    root = tmp_path_factory.mktemp("smollm2-cpp")
    host = {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}
    preset = targets.TargetPreset(
        "llvm-syslib", "test: this CPU as a static system lib", {**targets.TARGETS["llvm"].target, **host}, ".tar",
        host=host, system_lib=True, backend=backends.SystemLibBackend("elf", "x86_64"),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(targets.TARGETS, "llvm-syslib", preset)
        artifact = _compile({"target": "llvm-syslib", "output": root / "model", "system_lib_prefix": PREFIX})
    config = json.loads((artifact / "llmc-config.json").read_text())
    objects = extract_objects(artifact / config["library"], PREFIX, root / "objects")
    chat, why_not = chat_entry(config["tokenizer"], artifact / "tokenizer.json")
    assert chat is not None, why_not
    app_config = root / "llmc-app-config.json"
    app_config.write_text(json.dumps({"models": [{"model_id": "smollm2", "model_lib": PREFIX, "chat": chat}]}))

    tvm_lib, ffi_root = Path(tvm.__file__).parent / "lib", Path(tvm_ffi.__file__).parent
    binary = root / "chat_main"
    command = [
        compiler, "-std=c++17", "-O2", f"-I{COMMON}", f"-I{ffi_root / 'include'}", str(ROOT / "tests/cpp/chat_main.cc"),
        *[str(COMMON / s) for s in SOURCES], "-Wl,--whole-archive", *map(str, objects), "-Wl,--no-whole-archive",
        f"-L{tvm_lib}", f"-L{ffi_root / 'lib'}", "-ltvm_runtime", "-ltvm_ffi",
        f"-Wl,-rpath,{tvm_lib}", f"-Wl,-rpath,{ffi_root / 'lib'}", "-o", str(binary),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"binary": binary, "app_config": app_config, "model": artifact, "chat": chat}


def run_chat(setup: dict, commands: list[str], temperature=0.0, top_p=1.0, seed=0, app_config=None) -> list[dict]:
    args = [str(setup["binary"]), str(app_config or setup["app_config"]), "smollm2", str(setup["model"])]
    args += [str(MAX_TOKENS), str(temperature), str(top_p), str(seed)]
    done = subprocess.run(args, input="\n".join(commands) + "\n", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    replies = []
    for line in done.stdout.strip().split("\n"):
        pieces, reply, stats = line.split("\t")
        prompt_tokens, output_tokens, reason = stats.split()
        replies.append(
            {
                "pieces": [bytes.fromhex(p).decode() for p in pieces.split(",")[:-1]],
                "reply": bytes.fromhex(reply).decode(),
                "prompt_tokens": int(prompt_tokens),
                "output_tokens": int(output_tokens),
                "finish_reason": reason,
            }
        )
    return replies


@pytest.fixture(scope="module")
def python_chat(smollm2_python) -> list[dict]:
    """`llmc chat` greedy on the same two turns (llmc/runtime/session.py)."""
    from llmc.runtime.session import ChatSession

    session = ChatSession(smollm2_python)
    out = []
    for text in TURNS:
        pieces: list[str] = []
        result = session.send(text, MAX_TOKENS, 0.0, 1.0, None, pieces.append)
        out.append({"reply": "".join(pieces), "prompt_tokens": len(result.prompt_ids), "finish": result.finish_reason})
    return out


def test_two_turn_greedy_chat_equals_llmc_chat(chat_main, python_chat):
    cpp = run_chat(chat_main, [f"say {t}" for t in TURNS] + ["reset", f"say {TURNS[0]}"])
    for ours, theirs in zip(cpp, python_chat):
        assert ours["reply"] == theirs["reply"].strip() or ours["reply"] == theirs["reply"]
        assert "".join(ours["pieces"]) == theirs["reply"]
        assert ours["prompt_tokens"] == theirs["prompt_tokens"]  # the second turn prefills only the new tokens
    assert cpp[1]["prompt_tokens"] < cpp[0]["prompt_tokens"] + cpp[0]["output_tokens"] + 10
    assert "Paris" in cpp[0]["reply"]
    assert cpp[2]["reply"] == cpp[0]["reply"] and cpp[2]["prompt_tokens"] == cpp[0]["prompt_tokens"]  # reset


def test_sampling_is_seeded(chat_main):
    first = run_chat(chat_main, [f"say {TURNS[0]}"] * 1, temperature=1.0, top_p=0.9, seed=7)
    again = run_chat(chat_main, [f"say {TURNS[0]}"] * 1, temperature=1.0, top_p=0.9, seed=7)
    assert first[0]["reply"] == again[0]["reply"]
    others = {run_chat(chat_main, [f"say {TURNS[0]}"], temperature=1.5, top_p=1.0, seed=s)[0]["reply"] for s in (1, 2)}
    assert others != {first[0]["reply"]}


def test_stop_string_cuts_the_answer(chat_main, python_chat, tmp_path):
    greedy = python_chat[0]["reply"]
    word = greedy.split()[2]
    chat = dict(chat_main["chat"], stop_strings=[word])
    app_config = tmp_path / "app.json"
    app_config.write_text(json.dumps({"models": [{"model_id": "smollm2", "model_lib": PREFIX, "chat": chat}]}))
    (reply,) = run_chat(chat_main, [f"say {TURNS[0]}"], app_config=app_config)
    assert reply["finish_reason"] == "stop"
    assert reply["reply"] == greedy[: greedy.index(word)]
    assert "".join(reply["pieces"]) == reply["reply"]
