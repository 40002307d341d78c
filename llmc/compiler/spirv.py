"""TVM's WGSL kernels -> SPIR-V laid out the way TVM's Vulkan runtime binds arguments.

TVM's Vulkan runtime (``VulkanModuleNode::GetPipeline`` / ``VulkanWrappedFunc``) binds, in
descriptor set 0, buffer argument i at binding i (storage buffers) and, when the shader's flag has
the UBO bit, one uniform buffer at binding ``num_buffers`` holding every scalar argument as a
64-bit slot (``ArgUnion64``: an i32/u32/f32 in the low 4 bytes). It dispatches exactly the grid
the host computed. TVM's WebGPU codegen instead packs scalars 4 bytes apart, appends a
``packGridDimX`` member and guards every kernel with it (the browser runtime splits big grids).

So each kernel's WGSL is rewritten before translation: scalar members get ``@size(8)``, the
``packGridDimX`` member and its guard go (a Vulkan dispatch never overshoots), and a kernel without
scalars loses the uniform block. naga (npm ``naga-wasm``, run by node) translates WGSL to SPIR-V;
``spirv-val`` validates it; ``decorations`` reads bindings and offsets back for tests.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from llmc.errors import LlmcError

NAGA_VERSION = "30.1.0"
NAGA_DIR = Path(os.environ.get("LLMC_NAGA_DIR", Path.home() / ".cache" / "llmc" / "naga"))
SPIRV_ENV = "vulkan1.1"

_POD_STRUCT = re.compile(r"\nstruct (PODArgs\w*) \{\n(.*?)\n\}\n", re.S)
_GUARD = re.compile(r"^\s*if \(blockIdx\.z \* gridDim\.x \+ blockIdx\.x > \w+\.packGridDimX\w*\) \{ return; \}\n", re.M)

# node program: JSON {name: wgsl} on stdin -> JSON {name: {"spirv": base64} | {"error": text}} on stdout
_NAGA_JS = r"""
import { pathToFileURL } from "node:url";
const naga = await import(pathToFileURL(process.argv[1] + "/node_modules/naga-wasm/dist/node.js"));
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = {};
for (const [name, source] of Object.entries(JSON.parse(input))) {
  try {
    const words = naga.translate({ from: "wgsl", to: "spirv", source });
    out[name] = { spirv: Buffer.from(words.buffer, words.byteOffset, words.byteLength).toString("base64") };
  } catch (e) {
    out[name] = { error: String(e.formatted || e.message || e) };
  }
}
process.stdout.write(JSON.stringify(out));
"""


class SpirvError(LlmcError):
    """WGSL -> SPIR-V translation or validation failed."""


def split_wgsl(source: str) -> dict[str, str]:
    """TVM's aggregated WGSL dump (``// Function: name`` blocks) -> one WGSL module per kernel."""
    chunks = re.split(r"(?m)^// Function: (\S+)\n//-+\n(?:// Function: \S+\n//-+\n)?", source)
    return {chunks[i]: chunks[i + 1] for i in range(1, len(chunks), 2)}


def wgsl_for_vulkan(code: str) -> tuple[str, int]:
    """Rewrite one kernel's WGSL to TVM's Vulkan argument layout; returns (wgsl, number of scalars)."""
    found = _POD_STRUCT.search(code)
    if found is None:
        raise SpirvError("WGSL kernel without TVM's PODArgs block; is this TVM's webgpu codegen output?")
    type_name, body = found.groups()
    members = [line.strip().rstrip(",") for line in body.splitlines() if line.strip()]
    if not members or not members[-1].startswith("packGridDimX"):
        raise SpirvError(f"WGSL {type_name} does not end with packGridDimX: {members}")
    scalars = members[:-1]
    code = _GUARD.sub("", code, count=1)
    if "packGridDimX" in code[found.end() :]:
        raise SpirvError("WGSL kernel reads packGridDimX beyond TVM's bounds guard; cannot drop it")
    if scalars:
        struct_text = "\nstruct {} {{\n{}\n}}\n".format(type_name, ",\n".join(f"  @size(8) {m}" for m in scalars))
        return code[: found.start()] + struct_text + code[found.end() :], len(scalars)
    uniform = re.compile(r"^@group\(0\) @binding\(\d+\) var<uniform> \w+ : " + type_name + r";\n", re.M)
    code, n = uniform.subn("", code[: found.start()] + "\n" + code[found.end() :])
    if n != 1:
        raise SpirvError(f"WGSL kernel: no uniform binding of {type_name}")
    return code, 0


def naga_available() -> bool:
    return shutil.which("node") is not None and (NAGA_DIR / "node_modules" / "naga-wasm" / "dist" / "node.js").exists()


def require_naga() -> None:
    """Raise a clear error unless node and naga-wasm are installed."""
    if not naga_available():
        raise SpirvError(
            f"--target vulkan translates WGSL to SPIR-V with naga-wasm@{NAGA_VERSION} under {NAGA_DIR} (node "
            "needed); install it with `make install-vulkan` (or set LLMC_NAGA_DIR to a folder holding it)."
        )


def wgsl_to_spirv(kernels: dict[str, str]) -> dict[str, list[int]]:
    """Translate WGSL modules with naga; every failure is reported with the kernel name."""
    require_naga()
    done = subprocess.run(
        ["node", "--input-type=module", "-e", _NAGA_JS, str(NAGA_DIR)],
        input=json.dumps(kernels),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SpirvError(f"naga (node) failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    errors = {k: v["error"] for k, v in result.items() if "error" in v}
    if errors:
        name, text = next(iter(errors.items()))
        raise SpirvError(f"naga could not translate {len(errors)} kernel(s); first, {name}: {text.strip()[:1500]}")
    out = {}
    for name, value in result.items():
        raw = base64.b64decode(value["spirv"])
        out[name] = list(struct.unpack(f"<{len(raw) // 4}I", raw))
    return out


def spirv_val(words: list[int], name: str = "kernel", env: str = SPIRV_ENV) -> None:
    """Run ``spirv-val`` on one module; raises SpirvError with its message when invalid."""
    if shutil.which("spirv-val") is None:
        raise SpirvError("spirv-val not found; install Debian's spirv-tools (`make install-vulkan`).")
    with tempfile.NamedTemporaryFile(suffix=".spv") as f:
        f.write(struct.pack(f"<{len(words)}I", *words))
        f.flush()
        done = subprocess.run(["spirv-val", "--target-env", env, f.name], capture_output=True, text=True)
    if done.returncode != 0:
        raise SpirvError(f"spirv-val rejected {name}: {(done.stdout + done.stderr).strip()[:1500]}")


_OP_CAPABILITY = 17
CAP_STORAGE_INPUT_OUTPUT_16 = 4436


def drop_capability(words: list[int], capability: int) -> list[int]:
    """Remove one ``OpCapability`` from a module (a word-stream edit: only that instruction goes).

    naga declares StorageInputOutput16 in every fp16 module although compute kernels have no 16-bit
    shader inputs or outputs; many GPUs (NVIDIA's among them) lack that feature, and wgpu's SPIR-V
    reader rejects it. spirv-val afterwards proves the module did not need it."""
    out = list(words[:5])
    i = 5
    while i < len(words):
        count = words[i] >> 16
        if count == 0:
            raise SpirvError(f"corrupt SPIR-V: zero-length instruction at word {i}")
        if not (words[i] & 0xFFFF == _OP_CAPABILITY and words[i + 1] == capability):
            out.extend(words[i : i + count])
        i += count
    return out


# SPIR-V opcodes and decorations the layout reader needs
_OP_NAME, _OP_MEMBER_NAME, _OP_ENTRY_POINT, _OP_DECORATE, _OP_MEMBER_DECORATE, _OP_VARIABLE = 5, 6, 15, 71, 72, 59
_DEC_NON_WRITABLE, _DEC_BINDING, _DEC_DESCRIPTOR_SET, _DEC_OFFSET = 24, 33, 34, 35
STORAGE_CLASSES = {2: "Uniform", 9: "PushConstant", 12: "StorageBuffer", 4: "Workgroup"}


def _string(words: list[int]) -> str:
    raw = struct.pack(f"<{len(words)}I", *words)
    return raw.split(b"\0", 1)[0].decode()


def decorations(words: list[int]) -> dict:
    """Entry points, resource variables (set, binding, storage class) and member offsets of a module."""
    if len(words) < 5 or words[0] != 0x07230203:
        raise SpirvError("not a SPIR-V module (bad magic number)")
    names: dict[int, str] = {}
    bindings: dict[int, dict] = {}
    offsets: dict[int, dict[int, int]] = {}
    variables: dict[int, int] = {}
    entry_points = []
    i = 5
    while i < len(words):
        count, op = words[i] >> 16, words[i] & 0xFFFF
        if count == 0:
            raise SpirvError(f"corrupt SPIR-V: zero-length instruction at word {i}")
        args = words[i + 1 : i + count]
        if op == _OP_NAME:
            names[args[0]] = _string(args[1:])
        elif op == _OP_ENTRY_POINT:
            entry_points.append(_string(args[2:]))
        elif op == _OP_DECORATE and args[1] == _DEC_NON_WRITABLE:
            bindings.setdefault(args[0], {})["readonly"] = True
        elif op == _OP_DECORATE and args[1] in (_DEC_BINDING, _DEC_DESCRIPTOR_SET):
            key = "binding" if args[1] == _DEC_BINDING else "set"
            bindings.setdefault(args[0], {})[key] = args[2]
        elif op == _OP_MEMBER_DECORATE and args[2] == _DEC_OFFSET:
            offsets.setdefault(args[0], {})[args[1]] = args[3]
        elif op == _OP_VARIABLE:
            variables[args[1]] = args[2]
        i += count
    resources = {
        names.get(var, str(var)): {
            "readonly": False,
            **b,
            "storage": STORAGE_CLASSES.get(variables.get(var), variables.get(var)),
        }
        for var, b in bindings.items()
        if "binding" in b
    }
    return {"entry_points": entry_points, "resources": resources, "member_offsets": offsets}
