"""Hostile and damaged input (issue 15): each case through the CLI gives one ``llmc: error:`` line naming the
file, a non-zero exit, no traceback, and leaves nothing behind; a corrupt weight shard is caught before any
token is produced."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support import fuzzing as fuzz

from llmc.cli import main

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def assert_clean_failure(result, *needles: str, out_dir: Path | None = None) -> str:
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if out_dir is not None:
        assert not out_dir.exists(), "no artifact folder may be left behind"
        leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
        assert not leftovers, leftovers
    return lines[0]


def compile_args(model: Path | str, out: Path, *extra: str) -> list[str]:
    return ["compile", str(model), "-o", str(out), "--quiet", "--context-window", "64", *extra]


# ------------------------------------------------------------------------------------------ GGUF
@pytest.fixture(scope="module")
def gguf_seed():
    from llmc.source import resolve

    return fuzz.gguf_seed_from(resolve("smollm2-135m").path)


def write_gguf(tmp_path: Path, seed, name: str = "hostile.gguf", offsets=None) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(fuzz.encode_gguf(seed, offsets).data))
    return path


def set_meta(seed, key: str, kind: int, value):
    seed = copy.deepcopy(seed)
    index = next(i for i, item in enumerate(seed.metadata) if item[0] == key)
    seed.metadata[index] = (key, kind, None, value)
    return seed


def test_gguf_header_with_huge_counts_fails_fast_without_memory(tmp_path):
    """52 bytes that claim 2^40 metadata entries / an array of 2^50 items: refused before allocating."""
    huge_kv = tmp_path / "huge-kv.gguf"
    huge_kv.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1 << 40) + b"\0" * 32)
    huge_array = tmp_path / "huge-array.gguf"
    key = b"tokenizer.ggml.tokens"
    huge_array.write_bytes(
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 1 << 50)
    )
    for file, needle in ((huge_kv, "metadata count"), (huge_array, "tokenizer.ggml.tokens")):
        started = time.time()
        out = tmp_path / f"out-{file.stem}"
        assert_clean_failure(invoke(*compile_args(file, out)), file.name, needle, out_dir=out)
        assert time.time() - started < 10


@pytest.mark.parametrize(
    "case, needle",
    [
        ("alignment-3", "general.alignment"),
        ("alignment-0", "general.alignment"),
        ("aliased-offsets", "overlap"),
        ("bos-1e9", "tokenizer.ggml.bos_token_id"),
        ("eos-vocab", "tokenizer.ggml.eos_token_id"),
        ("type-changed", "blk.0.attn_k.weight"),
        ("duplicate-key", "appears twice"),
        ("duplicate-tensor", "appears twice"),
        ("invalid-utf8", "UTF-8"),
        ("zero-heads", "attention.head_count"),
        ("integer-tensor", "integer type"),
        ("array-size", "llama.embedding_length"),
    ],
)
def test_corrupt_gguf_refused(tmp_path, gguf_seed, case, needle):
    seed, offsets = copy.deepcopy(gguf_seed), None
    names = [t[0] for t in seed.tensors]
    if case == "alignment-3":
        seed = set_meta(seed, "general.alignment", 4, 3)
    elif case == "alignment-0":
        seed = set_meta(seed, "general.alignment", 4, 0)
    elif case == "aliased-offsets":
        encoded = fuzz.encode_gguf(seed)
        offsets = [
            struct.unpack_from(fmt, encoded.data, at)[0] for at, fmt, role in encoded.int_fields if "offset:" in role
        ]
        offsets[2] = offsets[1]
    elif case == "bos-1e9":
        seed = set_meta(seed, "tokenizer.ggml.bos_token_id", 4, 10**9)
    elif case == "eos-vocab":
        seed = set_meta(seed, "tokenizer.ggml.eos_token_id", 4, 400)  # == the vocabulary size
    elif case == "type-changed":
        index = names.index("blk.0.attn_k.weight")
        name, dims, _q4_1, raw = seed.tensors[index]
        seed.tensors[index] = (name, dims, 2, raw)  # Q4_0: 18 bytes a block, not Q4_1's 20
    elif case == "duplicate-key":
        seed.metadata.append(seed.metadata[3])
    elif case == "duplicate-tensor":
        seed.tensors.append(seed.tensors[0])
    elif case == "invalid-utf8":
        key, kind, sub, value = seed.metadata[2]
        seed.metadata[2] = (key.encode() + b"\xc3\x28", kind, sub, value)
    elif case == "zero-heads":
        seed = set_meta(seed, "llama.attention.head_count", 4, 0)
    elif case == "integer-tensor":
        index = names.index("output_norm.weight")
        name, dims, _f32, raw = seed.tensors[index]
        seed.tensors[index] = (name, dims, 26, raw)  # I32: same bytes, integer garbage as a norm
    elif case == "array-size":  # found by make fuzz: an array where a size belongs
        index = next(i for i, item in enumerate(seed.metadata) if item[0] == "llama.embedding_length")
        seed.metadata[index] = ("llama.embedding_length", 9, 5, [576, 576])
    file = write_gguf(tmp_path, seed, offsets=offsets)
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(file, out)), "hostile.gguf", needle, out_dir=out)


def test_fuzz_gguf_seed_is_accepted(tmp_path, gguf_seed):
    """The mutation seed itself reads cleanly (so every refusal above is the mutation's doing)."""
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint

    reader = GGUFCheckpoint(write_gguf(tmp_path, gguf_seed))
    assert reader.get("model.layers.0.self_attn.k_proj.weight").shape == (192, 576)


# ------------------------------------------------------------------------------------------ safetensors
@pytest.fixture
def checkpoint(checkpoints, tmp_path) -> Path:
    return Path(shutil.copytree(checkpoints["llama_gqa"], tmp_path / "ckpt"))


def rewrite_header(file: Path, edit) -> None:
    header, data = fuzz.split_safetensors(file.read_bytes())
    text = edit(header)
    file.write_bytes(fuzz.join_safetensors(header, data, text if isinstance(text, str) else None))


def first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def shift_second_tensor(header: dict, by: int) -> None:
    """Move the second tensor's byte range (same length) by ``by``: it overlaps the first."""
    entries = sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda e: e["data_offsets"][0])
    entries[1]["data_offsets"] = [entries[1]["data_offsets"][0] + by, entries[1]["data_offsets"][1] + by]


SAFETENSORS_CASES = {
    "negative-offset": (lambda h: h[first_tensor(h)].update(data_offsets=[-4, 0]), "negative"),
    "overlap": (lambda h: shift_second_tensor(h, -4), "overlap"),
    "duplicate-key": (
        lambda h: "{" + json.dumps({first_tensor(h): h[first_tensor(h)]})[1:-1] + "," + json.dumps(h)[1:],
        "twice",
    ),
    "dtype-shape": (lambda h: h[first_tensor(h)].update(dtype="F16"), "bytes for shape"),
    "deep-json": (lambda h: json.dumps(h)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}", "levels deep"),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_corrupt_safetensors_refused(checkpoint, tmp_path, case):
    edit, needle = SAFETENSORS_CASES[case]
    shards = sorted(checkpoint.glob("*.safetensors"))
    shard = max(shards, key=lambda f: len(fuzz.split_safetensors(f.read_bytes())[0]))  # >= 2 tensors
    rewrite_header(shard, edit)
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), shard.name, needle, out_dir=out)


def test_index_pointing_outside_the_folder_refused(checkpoint, tmp_path):
    index = checkpoint / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = sorted(data["weight_map"])[0]
    data["weight_map"][name] = "../../outside.safetensors"
    index.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "index.json", "in this folder", out_dir=out)


# ------------------------------------------------------------------------------------------ model-level checks
def edit_config(checkpoint: Path, **fields) -> None:
    file = checkpoint / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **fields}))


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"hidden_size": -64}, "hidden_size"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"rms_norm_eps": "tiny"}, "rms_norm_eps"),
        ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
        ({"eos_token_id": 10**9}, "eos_token_id"),
        ({"bos_token_id": -1}, "bos_token_id"),
    ],
)
def test_bad_config_fields_refused(checkpoint, tmp_path, fields, needle):
    edit_config(checkpoint, **fields)
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "config.json", needle, out_dir=out)


def test_nan_weight_named(checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    shard = next(f for f in sorted(checkpoint.glob("*.safetensors")) if "q_proj" in str(load_file(f).keys()))
    tensors = load_file(shard)
    name = next(k for k in tensors if "q_proj.weight" in k)
    tensors[name][0, 0] = np.nan
    save_file(tensors, shard)
    out = tmp_path / "out"
    line = assert_clean_failure(invoke(*compile_args(checkpoint, out)), "NaN", out_dir=out)
    assert name.rsplit(".", 2)[0].replace("q_proj", "") in line


def test_tokenizer_id_outside_vocabulary_refused(checkpoint, tmp_path):
    tokenizer = checkpoint / "tokenizer.json"
    data = json.loads(tokenizer.read_text())
    data["added_tokens"][0]["id"] = 10**6
    tokenizer.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "tokenizer.json", "1000000", out_dir=out)


def test_chat_template_that_raises_refused(checkpoint, tmp_path):
    config = checkpoint / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["chat_template"] = "{{ messages[0]['content'] / 0 }}"
    config.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "chat template", out_dir=out)


# ------------------------------------------------------------------------------------------ artifacts
@pytest.fixture
def artifact(compiled, tmp_path) -> Path:
    """A private copy of a compiled tiny model (its own path: its checksums are verified on first load)."""
    return Path(shutil.copytree(compiled("llama_tied", "q0f32"), tmp_path / "artifact"))


def run_args(folder: Path) -> list[str]:
    return ["run", str(folder), "--no-chat", "--prompt", "the quick", "--max-tokens", "4", "--temperature", "0"]


def edit_json(file: Path, edit) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def test_flipped_byte_in_weight_shard_caught_before_any_token(artifact):
    shard = artifact / "params_shard_0.bin"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    shard.write_bytes(raw)
    result = invoke(*run_args(artifact))
    assert_clean_failure(result, "params_shard_0.bin", "checksum")
    assert result.stdout == "", "no token may be printed"


def test_verify_forces_the_check_after_a_verified_load(artifact):
    assert invoke(*run_args(artifact)).exit_code == 0  # first load: hashed and recorded
    shard = artifact / "params_shard_0.bin"
    info = shard.stat()
    raw = bytearray(shard.read_bytes())
    raw[7] ^= 1
    with open(shard, "r+b") as f:  # same inode, size and (restored) mtime: only a full check sees it
        f.write(raw)
    os.utime(shard, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert_clean_failure(invoke("verify", str(artifact)), "params_shard_0.bin", "checksum")
    raw[7] ^= 1
    shard.write_bytes(raw)
    result = invoke("verify", str(artifact))
    assert result.exit_code == 0 and "verified" in result.stdout


@pytest.mark.parametrize("field", ["dataPath", "library"])
def test_paths_outside_the_artifact_refused(artifact, field):
    outside = artifact.parent / "outside.bin"
    if field == "dataPath":
        shutil.copy2(artifact / "params_shard_0.bin", outside)
        edit_json(artifact / "tensor-cache.json", lambda d: d["records"][0].update(dataPath="../outside.bin"))
    else:
        library = json.loads((artifact / "llmc-config.json").read_text())["library"]
        shutil.copy2(artifact / library, outside)
        edit_json(artifact / "llmc-config.json", lambda d: d.update(library=str(outside)))
    assert_clean_failure(invoke(*run_args(artifact)), "outside", "refusing")


def test_symlink_leaving_the_artifact_refused(artifact):
    outside = artifact.parent / "elsewhere.bin"
    shard = artifact / "params_shard_0.bin"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    assert_clean_failure(invoke(*run_args(artifact)), "points outside")


def test_truncated_library_refused_before_dlopen(artifact):
    library = artifact / json.loads((artifact / "llmc-config.json").read_text())["library"]
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 3])
    assert_clean_failure(invoke(*run_args(artifact)), library.name, "truncated")


def test_malformed_artifact_config_refused(artifact):
    edit_json(artifact / "llmc-config.json", lambda d: d["model"].update(num_hidden_layers="two"))
    assert_clean_failure(invoke(*run_args(artifact)), "llmc-config.json", "num_hidden_layers")


def test_cuda_artifact_without_a_gpu(artifact):
    edit_json(artifact / "llmc-config.json", lambda d: d.update(device="cuda", target="cuda"))
    assert_clean_failure(invoke(*run_args(artifact)), "compiled for target cuda", "--device cuda")
    assert_clean_failure(invoke(*run_args(artifact), "--device", "cuda"), "not present on this machine")


def test_memory_preflight_refuses_with_the_numbers(artifact):
    edit_json(artifact / "llmc-config.json", lambda d: d.update(param_bytes=1 << 50))
    assert_clean_failure(
        invoke(*run_args(artifact)), "needs about 1073741", "MiB is available", "LLMC_SKIP_MEMORY_CHECK"
    )
    result = invoke(*run_args(artifact), env={"LLMC_SKIP_MEMORY_CHECK": "1"})
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------ process level
def test_second_writer_to_the_same_output_fails_at_once(checkpoints, tmp_path):
    from llmc.artifact import output_lock

    out = tmp_path / "out"
    with output_lock(out.resolve()):
        started = time.time()
        assert_clean_failure(invoke(*compile_args(checkpoints["llama_tied"], out)), "another llmc is writing")
        assert time.time() - started < 30
    assert not out.exists() and not (tmp_path / ".out.lock").exists()


def test_interrupt_during_the_tvm_build_reported_as_interrupted(checkpoints, tmp_path):
    out = tmp_path / "out"
    llmc = Path(sys.executable).parent / "llmc"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [str(llmc), *compile_args(checkpoints["llama_tied"], out)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".out.tmp-*/tensor-cache.json")):
        time.sleep(0.05)  # the weights are written: the library build comes next
    assert process.poll() is None, process.communicate()
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "failed to build" not in stderr
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_model_url_is_validated_before_it_reaches_kotlin_or_swift(tmp_path):
    from llmc.errors import ConfigError
    from llmc.package.spec import check_model_url

    for bad in ['https://x.org/a"; evil()', "https://x.org/${secret}", "javascript:alert(1)", "https://x.org/a\\b"]:
        with pytest.raises(ConfigError, match="model_url"):
            check_model_url(tmp_path / "app.json", "models[0]", bad)
    assert check_model_url(tmp_path / "app.json", "models[0]", "https://huggingface.co/x/y?a=1&b=%20") is not None


def test_package_config_with_a_hostile_url_fails_cleanly(tmp_path):
    config = json.loads((REPO / "configs/package/android-example.json").read_text())
    config["models"][0].update(bundle_weights=False, model_url='https://example.org/w"; System.exit(0); "')
    file = tmp_path / "app.json"
    file.write_text(json.dumps(config))
    out = tmp_path / "bundle"
    assert_clean_failure(invoke("package", str(file), "-o", str(out)), "app.json", "model_url", out_dir=out)


def test_engine_refuses_token_ids_outside_the_vocabulary(compiled):
    from llmc.errors import GenerationError
    from llmc.runtime.engine import Engine

    engine = Engine(compiled("llama_tied", "q0f32"))
    engine.add_sequence(0)
    for bad in (-1, engine.vocab_size, 10**9):
        with pytest.raises(GenerationError, match="outside the vocabulary"):
            engine.prefill(0, [1, bad])


def test_chat_template_error_at_run_time_is_a_generation_error():
    from llmc.errors import GenerationError
    from llmc.runtime.tokenizer import render_chat_template

    with pytest.raises(GenerationError, match="failed to render"):
        render_chat_template("{{ messages[5]['content'] / 0 }}", [{"role": "user", "content": "x"}], True)
    with pytest.raises(GenerationError, match="failed to render"):
        render_chat_template("{{ 1 / 0 }}", [], True)


def test_identical_inputs_give_byte_identical_artifacts(compiled, checkpoints, tmp_path):
    """Timings live in build-info.json; every other file of a recompile is byte-identical."""
    from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK

    from llmc.compile import CompileOptions, compile_model

    first = compiled("llama_tied", "q0f32")
    options = CompileOptions(
        quant="q0f32",
        output=tmp_path / "again",
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        max_batch_size=4,
    )
    second = compile_model(str(checkpoints["llama_tied"]), options)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and "build-info.json" in names
    differing = [n for n in names if (first / n).read_bytes() != (second / n).read_bytes()]
    assert set(differing) <= {"build-info.json"}
