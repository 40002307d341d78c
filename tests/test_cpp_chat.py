"""llmc's C++ chat engine (llmc/templates/common: tokenizer + chat format + sampling + engine), linked with a
host system-lib build of SmolLM2-135M-Instruct (real weights), against llmc's Python runtime (`llmc chat`).

SmolLM2 is compiled once (q0f32 on llvm, ~25 s) and loaded by Python and, as a shared library, by the C++
program; the slow test links a static system-lib build into the program instead, as phone apps do.
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


def build_chat_main(out: Path, link: list[str]) -> Path:
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build llmc's C++ engine")
    import tvm
    import tvm_ffi

    tvm_lib, ffi_root = Path(tvm.__file__).parent / "lib", Path(tvm_ffi.__file__).parent
    binary = out / "chat_main"
    command = [
        compiler, "-std=c++17", "-O2", f"-I{COMMON}", f"-I{ffi_root / 'include'}", str(ROOT / "tests/cpp/chat_main.cc"),
        *[str(COMMON / s) for s in SOURCES], *link,
        f"-L{tvm_lib}", f"-L{ffi_root / 'lib'}", "-ltvm_runtime", "-ltvm_ffi",
        f"-Wl,-rpath,{tvm_lib}", f"-Wl,-rpath,{ffi_root / 'lib'}", "-o", str(binary),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return binary


def write_app_config(folder: Path, artifact: Path, model_lib: str, **chat_changes) -> tuple[Path, dict]:
    """An llmc-app-config.json with the chat format `llmc package` derives from the model's template."""
    config = json.loads((artifact / "llmc-config.json").read_text())
    chat, why_not = chat_entry(config["tokenizer"], artifact / "tokenizer.json")
    assert chat is not None, why_not
    chat.update(chat_changes)
    file = folder / f"app-{len(list(folder.glob('app-*.json')))}.json"
    file.write_text(json.dumps({"models": [{"model_id": "smollm2", "model_lib": model_lib, "chat": chat}]}))
    return file, chat


@pytest.fixture(scope="module")
def chat_main(smollm2_python, tmp_path_factory) -> dict:
    """The driver tests/cpp/chat_main.cc; the model is the shared library Python runs (one compile)."""
    root = tmp_path_factory.mktemp("smollm2-cpp")
    library = smollm2_python / json.loads((smollm2_python / "llmc-config.json").read_text())["library"]
    app_config, chat = write_app_config(root, smollm2_python, str(library))
    binary = build_chat_main(root, [])
    return {"binary": binary, "app_config": app_config, "model": smollm2_python, "chat": chat, "root": root,
            "model_lib": str(library)}  # fmt: skip


def run_chat(setup: dict, commands: list[str], app_config: Path | None = None) -> list[dict]:
    """Greedy unless a command "options T P SEED" says otherwise."""
    args = [str(setup["binary"]), str(app_config or setup["app_config"]), "smollm2", str(setup["model"])]
    args += [str(MAX_TOKENS), "0", "1", "0"]
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


COMMANDS = [
    *(f"say {t}" for t in TURNS),
    "reset",
    f"say {TURNS[0]}",
    "options 1.0 0.9 7",
    "reset",
    f"say {TURNS[0]}",
    "reset",
    f"say {TURNS[0]}",
]


def check_chat(replies: list[dict], python_chat: list[dict]) -> None:
    for ours, theirs in zip(replies, python_chat):
        assert ours["reply"] == theirs["reply"]
        assert "".join(ours["pieces"]) == theirs["reply"]
        assert ours["prompt_tokens"] == theirs["prompt_tokens"]  # the second turn prefills only the new tokens
        assert ours["finish_reason"] == theirs["finish"]  # EOS (<|im_end|>) or max_tokens, as llmc chat
    assert "Paris" in replies[0]["reply"]
    # the second turn reused the cache: it prefilled fewer tokens than the whole conversation holds
    assert replies[1]["prompt_tokens"] < replies[0]["prompt_tokens"]
    assert replies[2]["reply"] == replies[0]["reply"] and replies[2]["prompt_tokens"] == replies[0]["prompt_tokens"]
    # sampling: the same seed gives the same answer; it is not the greedy one
    assert replies[3]["reply"] == replies[4]["reply"] != replies[0]["reply"]


def test_two_turn_greedy_chat_equals_llmc_chat(chat_main, python_chat):
    check_chat(run_chat(chat_main, COMMANDS), python_chat)


def test_stop_string_cuts_the_answer(chat_main, python_chat):
    greedy = python_chat[0]["reply"]
    word = greedy.split()[2]
    app_config, _ = write_app_config(chat_main["root"], chat_main["model"], chat_main["model_lib"], stop_strings=[word])
    (reply,) = run_chat(chat_main, [f"say {TURNS[0]}"], app_config=app_config)
    assert reply["finish_reason"] == "stop"
    assert reply["reply"] == greedy[: greedy.index(word)]
    assert "".join(reply["pieces"]) == reply["reply"]


@pytest.mark.slow  # a second SmolLM2 compile (~1.5 min)
def test_system_lib_build_chats_the_same(python_chat, tmp_path, monkeypatch):
    """SmolLM2 as a static system library linked into the program, as `llmc package` builds phone apps."""
    if platform.machine() != "x86_64" or sys.platform != "linux":
        pytest.skip("the host system-lib preset here is x86-64 Linux")
    from llmc.compiler import backends, targets
    from llmc.package.staticlib import extract_objects

    host = {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}
    preset = targets.TargetPreset(
        "llvm-syslib", "test: this CPU as a static system lib", {**targets.TARGETS["llvm"].target, **host}, ".tar",
        host=host, system_lib=True, backend=backends.SystemLibBackend("elf", "x86_64"),
    )  # fmt: skip
    monkeypatch.setitem(targets.TARGETS, "llvm-syslib", preset)
    artifact = _compile({"target": "llvm-syslib", "output": tmp_path / "model", "system_lib_prefix": PREFIX})
    config = json.loads((artifact / "llmc-config.json").read_text())
    objects = extract_objects(artifact / config["library"], PREFIX, tmp_path / "objects")
    binary = build_chat_main(tmp_path, ["-Wl,--whole-archive", *map(str, objects), "-Wl,--no-whole-archive"])
    app_config, _ = write_app_config(tmp_path, artifact, PREFIX)
    setup = {"binary": binary, "app_config": app_config, "model": artifact}
    check_chat(run_chat(setup, COMMANDS), python_chat)
