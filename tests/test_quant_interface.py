"""The quantization scheme interface: every registered scheme is a ``QuantScheme`` answering every hook,
callers use the hooks without probing for them, and ``llmc/quant`` has no import cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from tvm.relax.frontend import nn

from llmc.checkpoint.quantized import QuantizedCheckpoint
from llmc.quant import QUANTS, QuantScheme
from llmc.quant.encode import encode_q8_0
from llmc.quant.rewrite import rewrite_modules
from llmc.quant.stored import StoredScheme

LLMC = Path(__file__).resolve().parent.parent / "llmc"
QUANT_DIR = LLMC / "quant"
PACKAGE = "llmc.quant"


# ---------------------------------------------------------------------- import graph
def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The ``llmc.quant`` modules one import statement of ``module`` loads (``llmc.quant``: the package)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package of ``module``
            parent = module.rsplit(".", node.level)[0] if module != PACKAGE else PACKAGE
            base = f"{parent}.{base}" if base else parent
        # ``from llmc.quant import int_dot`` loads a submodule; ``from llmc.quant import X`` the package
        names = [
            f"{base}.{alias.name}" if (QUANT_DIR / f"{alias.name}.py").exists() and base == PACKAGE else base
            for alias in node.names
        ]
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``llmc.quant`` modules it imports anywhere (functions and TYPE_CHECKING blocks too)."""
    graph = {}
    for file in sorted(QUANT_DIR.glob("*.py")):
        module = PACKAGE if file.stem == "__init__" else f"{PACKAGE}.{file.stem}"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(module, node)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_quant_package_has_no_import_cycle():
    graph = import_graph()
    assert "llmc.quant.int_dot" in graph["llmc.quant.group"]  # ``from llmc.quant import int_dot``: the submodule
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_submodules_take_nothing_from_the_package():
    """Only the registry imports the schemes; no scheme module reads names of ``llmc/quant/__init__.py``."""
    users = [module for module, edges in import_graph().items() if PACKAGE in edges]
    assert users == []


def test_int_dot_layout_is_a_leaf():
    assert import_graph()["llmc.quant.int_dot"] == set()


def test_callers_do_not_probe_scheme_hooks():
    probe = re.compile(r"\b(hasattr|getattr)\(\s*[\w.]*(scheme|quant)\b")
    found = [
        f"{file.relative_to(LLMC)}:{number}"
        for file in sorted(LLMC.rglob("*.py"))
        for number, line in enumerate(file.read_text().splitlines(), 1)
        if probe.search(line)
    ]
    assert found == []


# ---------------------------------------------------------------------- the hooks
class _Block(nn.Module):
    def __init__(self):
        self.fc = nn.Linear(64, 64, bias=False)
        self.norm = nn.Parameter((64,))


class _Tiny(nn.Module):
    def __init__(self):
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.proj = nn.Linear(64, 32, bias=False)


WEIGHTS = {"layers.0.fc.weight", "layers.1.fc.weight", "proj.weight"}


class _Reader:
    """The one call ``--quant keep`` makes of a GGUF reader: every tensor's GGML type and shape."""

    def tensor_types(self) -> dict:
        types = {name: ("Q8_0", tuple(p.shape)) for name, p in _Tiny().named_parameters() if name in WEIGHTS}
        return types | {f"layers.{i}.norm": ("F32", (64,)) for i in range(2)}


class _Tensors:
    """An in-memory safetensors reader (names, get, describe) of ``_Tiny`` stored by AWQ, GPTQ or fp8."""

    CONFIGS = {
        "awq": {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm"},
        "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False},
        "fp8": {"quant_method": "fp8", "weight_block_size": None},
    }

    def __init__(self, method: str):
        self.path, self.config, self.tensors = "tiny", {"quantization_config": self.CONFIGS[method]}, {}
        rng = np.random.default_rng(0)

        def words(*shape: int) -> np.ndarray:
            return rng.integers(-(2**31), 2**31, shape).astype(np.int32)

        for name, p in _Tiny().named_parameters():
            base, shape = name.removesuffix(".weight"), tuple(int(d) for d in p.shape)
            if name not in WEIGHTS:
                self.tensors[name] = rng.standard_normal(shape).astype(np.float32)
            elif method == "fp8":
                self.tensors[name] = rng.standard_normal(shape).astype(ml_dtypes.float8_e4m3fn)
                self.tensors[f"{base}.weight_scale_inv"] = np.ones(1, np.float32)
            else:
                rows, cols = shape
                awq = method == "awq"
                self.tensors[f"{base}.qweight"] = words(cols, rows // 8) if awq else words(cols // 8, rows)
                self.tensors[f"{base}.qzeros"] = words(cols // 32, rows // 8)
                self.tensors[f"{base}.scales"] = rng.random((cols // 32, rows)).astype(np.float16)

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def describe(self, name: str) -> str:
        return "tiny/model.safetensors"


@pytest.mark.parametrize("name", list(QUANTS))
def test_every_scheme_answers_every_hook(name):
    from tvm.target import Target

    scheme = QUANTS[name]
    assert isinstance(scheme, QuantScheme) and scheme.name == name
    assert isinstance(scheme.keeps_raw, bool)
    assert isinstance(scheme.bits_per_param, float)
    # the checkpoint a scheme binds to: a GGUF file's tensor types, or a pre-quantized safetensors folder
    reader = QuantizedCheckpoint(_Tensors(name), *_quant(name)) if isinstance(scheme, StoredScheme) else _Reader()
    bound = scheme.prepare(reader, {}, "tiny.gguf")
    assert isinstance(bound, QuantScheme) and bound.name == name
    record = bound.record()
    assert isinstance(record, dict)
    stored = bound.with_stored(record)
    assert isinstance(stored, QuantScheme) and stored.record() == record
    target = Target("llvm")
    assert bound.compute_dtype(target) == "float32"
    assert bound.int_dot_isa(target) in (None, "avx512vnni", "avxvnni", "avx2")

    module = _Tiny()
    quantized = bound.quantize_module(module, True, None, None)
    assert quantized == (set() if name.startswith("q0") else WEIGHTS)
    rng = np.random.default_rng(0)
    stored_arrays = []
    for param, p in _Tiny().named_parameters():
        weight = rng.standard_normal(tuple(p.shape)).astype(np.float32)
        if param in quantized and isinstance(reader, QuantizedCheckpoint):
            stored_arrays += bound.convert_raw(param, [reader.get_raw(param)], False)
        elif param in quantized and bound.keeps_raw:
            stored_arrays += bound.convert_raw(param, [("Q8_0", encode_q8_0(weight))], False)
        else:
            stored_arrays += bound.convert(param, weight, quantized, None, False)
    if type(bound).convert_raw is QuantScheme.convert_raw:  # the default: float weights only
        with pytest.raises(NotImplementedError):
            bound.convert_raw("proj.weight", [], False)
    names = [n for n, _ in stored_arrays]
    assert names == [n for n, _ in module.named_parameters()]  # the rewritten module loads them as they are
    assert [bound.portable_name(n) for n in names] == names
    relaid = list(bound.relayout_stream(iter(stored_arrays), "float32", False))
    assert [n for n, _ in relaid] == names


def _quant(method: str) -> tuple:
    from llmc.checkpoint.quant_config import parse_quant_config

    return parse_quant_config(_Tensors(method).config, "tiny/config.json"), "tiny/config.json"


def test_rewrite_names_and_replaces_modules_depth_first():
    module, seen = _Tiny(), []

    def swap(name: str, child: nn.Module) -> nn.Module | None:
        seen.append(name)
        return nn.Linear(64, 8, bias=False) if name == "layers.1.fc" else None

    rewrite_modules(module, swap)
    assert seen == ["layers.0", "layers.0.fc", "layers.1", "layers.1.fc", "proj"]
    assert module.layers[1].fc.out_features == 8 and module.layers[0].fc.out_features == 64
