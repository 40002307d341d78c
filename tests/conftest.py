"""Shared fixtures: tiny random checkpoints saved by transformers (sharded safetensors, a real BPE
tokenizer trained here) and compiled artifacts cached per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.checkpoints import (
    FAMILY_MODELS,
    TINY_CONTEXT_WINDOW,
    TINY_MODELS,
    TINY_PREFILL_CHUNK,
    make_checkpoint,
    make_tokenizer,
    randomize,
)

from llmc.compile import CompileOptions, compile_model

# resource markers (registered in pyproject.toml): skipped unless `--run NAME` (or `--run all`) selects them
RESOURCES = {
    "slow": "minutes more: make test-all (the families: make test-models)",
    "vulkan": "whole models on Mesa lavapipe: make test-vulkan",
    "web": ".wasm links and a headless browser: make test-web",
    "mobile": "every OpenCL kernel on PoCL: make test-mobile",
    "real_models": "real GGUF models from PyPI: make test-models-real / make test-keep-real",
    "builds": "every family or GGUF for every GPU target: make test-models-builds / make test-keep-targets",
    "index": "the wheel installed with its dependencies from the package index (~4 min): make test-wheel",
}


def pytest_addoption(parser):
    parser.addoption(
        "--run",
        action="append",
        default=[],
        metavar="RESOURCE",
        help=f"also run the tests marked with RESOURCE ({', '.join(RESOURCES)}, or all); comma-separated or repeated",
    )


def selected_resources(config) -> set[str]:
    chosen = {name.strip() for value in config.getoption("--run") for name in value.split(",") if name.strip()}
    unknown = chosen - set(RESOURCES) - {"all"}
    if unknown:
        raise pytest.UsageError(f"--run {', '.join(sorted(unknown))}: choose from {', '.join(RESOURCES)} or all")
    return set(RESOURCES) if "all" in chosen else chosen


def pytest_collection_modifyitems(config, items):
    chosen = selected_resources(config)
    for item in items:
        for name in RESOURCES.keys() - chosen:
            if name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"{name}: {RESOURCES[name]}"))
                break


@pytest.fixture(scope="session")
def every_kernel(request) -> bool:
    """Tests that sample kernels by default run them all under `--run mobile` / `--run vulkan`."""
    return bool(selected_resources(request.config) & {"mobile", "vulkan"})


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(root / name, name, seed) for seed, name in enumerate(TINY_MODELS)}


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """FAMILY_MODELS saved by transformers, made on first use (only the family tests pay for them)."""
    root = tmp_path_factory.mktemp("family-checkpoints")
    cache: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            cache[name] = make_checkpoint(root / name, name, seed=10 + list(FAMILY_MODELS).index(name))
            self[name] = cache[name]
            return cache[name]

    return Lazy()


@pytest.fixture(scope="session")
def hf_models(checkpoints):
    """The transformers reference models, loaded back from the saved checkpoints (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    return {
        name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for name, path in checkpoints.items()
    }


@pytest.fixture(scope="session")
def compiled(checkpoints, family_checkpoints, tmp_path_factory):
    """compiled(name, quant, target) -> artifact folder, built once per session (TINY_MODELS and FAMILY_MODELS)."""
    root = shared_build_root(tmp_path_factory)
    cache: dict[tuple[str, str, str], Path] = {}

    def get(name: str, quant: str = "q0f32", target: str = "llvm", cpu_kernels: str = "int8") -> Path:
        """``cpu_kernels="float"``: the CPU reference path (the GPU builds' float kernels and layout)."""
        key = (name, quant, target, cpu_kernels)
        if key not in cache:
            source = checkpoints[name] if name in checkpoints else family_checkpoints[name]
            folder = f"{name}-{quant}" if target == "llvm" else f"{name}-{quant}-{target}"
            output = root / f"{folder if cpu_kernels == 'int8' else f'{folder}-float'}-{folder_digest(source)}"
            options = CompileOptions(
                target=target,
                quant=quant,
                output=output,
                quiet=True,
                context_window=TINY_CONTEXT_WINDOW,
                prefill_chunk=TINY_PREFILL_CHUNK,
                max_batch_size=4,
                cpu_kernels=cpu_kernels,
            )
            cache[key] = built_once(output, lambda: compile_model(str(source), options))
        return cache[key]

    return get


def shared_build_root(tmp_path_factory) -> Path:
    """A folder every xdist worker of this run shares (their base temp folders' parent), else the session's."""
    import os

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-artifacts"
    root.mkdir(exist_ok=True)
    return root


def folder_digest(folder: Path) -> str:
    """The checkpoint's content (a worker's checkpoint may differ from another's: then so do the builds)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def built_once(output: Path, build) -> Path:
    """``output`` built by the first worker that asks (the others wait on a lock, then reuse it)."""
    import fcntl
    import shutil

    with open(output.with_name(output.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (output / "llmc-config.json").exists():
            return output
        shutil.rmtree(output, ignore_errors=True)  # a build another worker left unfinished
        return build()


@pytest.fixture(scope="session")
def serving_artifact(tmp_path_factory) -> Path:
    """A random Llama wide enough (hidden 512, 4 layers) that one decode step outweighs Python and HTTP
    overheads, so that continuous batching shows in wall time: max batch 8, context 512 (~6 s to build)."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("serving") / "checkpoint"
    folder.mkdir()
    config = transformers.LlamaConfig(
        vocab_size=make_tokenizer(folder),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    randomize(model, 0)
    model.save_pretrained(folder)
    options = CompileOptions(
        target="llvm",
        quant="q0f32",
        output=folder.parent / "serving-q0f32",
        quiet=True,
        context_window=512,
        prefill_chunk=64,
        max_batch_size=8,
    )
    return compile_model(str(folder), options)
