"""``quantization_config`` of a Hugging Face checkpoint: which pre-quantized format its weights are in.

llmc imports three families of such checkpoints as they are stored (``llmc.checkpoint.quantized`` reads
them, ``llmc.quant.stored`` compiles them):

* ``awq`` (AutoAWQ, ``version``/``format`` ``gemm``): 4-bit codes, an integer zero point and an fp16
  scale per group of input columns;
* ``gptq`` (AutoGPTQ / GPTQModel, ``checkpoint_format`` ``gptq`` (v1: zero points stored minus one) or
  ``gptq_v2``): 4- or 8-bit codes, zero points and scales per group, ``g_idx``;
* ``fp8``: float8 e4m3 weights with float32 scales, per block of rows x columns (``quant_method`` ``fp8``
  with ``weight_block_size``, as DeepSeek-V3 / Qwen3-FP8 store them), per output channel (``fbgemm_fp8``,
  compressed-tensors ``channel``) or per tensor (compressed-tensors ``tensor``, ``fp8`` without a block size).

``StoredLayout`` is the one format-independent description of the stored planes: every importer converts
its tensors into these planes, every target's module reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmc.errors import ConfigError

STORED_METHODS = ("awq", "gptq", "fp8")  # the llmc scheme names (``--quant``), one per family of formats
_FP8_ALIASES = ("fp8", "fbgemm_fp8", "compressed-tensors")


@dataclass(frozen=True)
class StoredLayout:
    """The planes of one imported weight ``[rows, cols]`` (``rows`` output features, ``cols`` input).

    ``kind == "int"`` (AWQ, GPTQ): ``qweight`` uint32 ``[rows, cols * bits / 32]`` (code ``k`` of a row at
    bits ``bits * (k % per_word)`` of word ``k // per_word``), ``qzeros`` uint32 ``[rows, ceil(groups / 4)]``
    (zero point of group ``g`` in byte ``g % 4`` of word ``g // 4``), ``scales`` ``[rows, groups]``;
    ``w = (code - zero) * scale``. ``group`` 0: one group per row (per-channel).

    ``kind == "fp8"``: ``qweight`` uint32 ``[rows, cols / 4]`` (the e4m3fn bytes, four per word) and
    ``scales`` float32 ``[ceil(rows / block[0]), ceil(cols / block[1])]``; ``w = fp8 * scale``. A block side of
    0 spans the whole dimension (``(0, 0)``: per tensor, ``(1, 0)``: per output channel).
    """

    kind: str
    bits: int
    group: int = 0
    scale_dtype: str = "float16"
    block: tuple[int, int] = (0, 0)

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    def group_size(self, cols: int) -> int:
        return self.group or cols

    def scale_block(self, rows: int, cols: int) -> tuple[int, int]:
        """fp8: (rows, cols) covered by one scale."""
        return self.block[0] or rows, self.block[1] or cols

    def plane_shapes(self, rows: int, cols: int) -> dict[str, tuple[tuple[int, int], str]]:
        """``{plane: (shape, dtype)}`` of a ``rows x cols`` weight, in storage order."""
        words = -(-cols // self.per_word)
        if self.kind == "fp8":
            block_rows, block_cols = self.scale_block(rows, cols)
            return {
                "qweight": ((rows, words), "uint32"),
                "scales": ((-(-rows // block_rows), -(-cols // block_cols)), "float32"),
            }
        groups = -(-cols // self.group_size(cols))
        return {
            "qweight": ((rows, words), "uint32"),
            "qzeros": ((rows, -(-groups // 4)), "uint32"),
            "scales": ((rows, groups), self.scale_dtype),
        }

    def bits_per_weight(self, rows: int, cols: int) -> float:
        planes = self.plane_shapes(rows, cols).values()
        total = sum(shape[0] * shape[1] * (2 if dtype == "float16" else 4) for shape, dtype in planes)
        return total * 8 / (rows * cols)

    def record(self) -> dict:
        return {
            "kind": self.kind,
            "bits": self.bits,
            "group": self.group,
            "scale_dtype": self.scale_dtype,
            "block": list(self.block),
        }

    @classmethod
    def from_record(cls, record: dict) -> StoredLayout:
        block = tuple(int(b) for b in record["block"])
        return cls(record["kind"], int(record["bits"]), int(record["group"]), record["scale_dtype"], block)


@dataclass(frozen=True)
class StoredQuant:
    """A checkpoint's ``quantization_config``, checked: llmc's scheme name and what its importer needs."""

    method: str  # "awq" | "gptq" | "fp8" (llmc's scheme)
    source_method: str  # quant_method as the checkpoint names it
    bits: int
    group: int = 0  # int formats: columns per group, 0 = per channel
    zero_offset: int = 0  # GPTQ v1 stores zero points minus one
    desc_act: bool = False
    block: tuple[int, int] = (0, 0)  # fp8 scale block, 0 = whole dimension
    scale_name: str = "weight_scale_inv"  # fp8: the scale tensor's suffix


def stored_method(hf_config: dict) -> str | None:
    """llmc's scheme for a checkpoint's own format (``awq``, ``gptq``, ``fp8``), None for a float checkpoint."""
    qc = hf_config.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = qc.get("quant_method")
    return "fp8" if method in _FP8_ALIASES else method if method in STORED_METHODS else None


def parse_quant_config(hf_config: dict, source: str) -> StoredQuant | None:
    """The checked ``quantization_config`` of ``config.json`` (``source`` names the file), None if absent.

    Anything llmc cannot read exactly is a ``ConfigError`` naming the field and the way out."""
    qc = hf_config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantization_config is {qc!r}; expected an object.")
    method = qc.get("quant_method")
    if method == "awq":
        return _awq(qc, source)
    if method == "gptq":
        return _gptq(qc, source)
    if method in _FP8_ALIASES:
        return _fp8(qc, method, source)
    raise ConfigError(
        f"{source}: quantization_config.quant_method {method!r} is not supported; llmc imports awq (gemm), "
        "gptq, fp8 (block / channel / tensor scales), fbgemm_fp8 and compressed-tensors fp8 checkpoints. "
        "Use the original float checkpoint instead."
    )


def _bits(qc: dict, source: str, allowed: tuple[int, ...], field: str = "bits") -> int:
    bits = qc.get(field)
    if bits not in allowed:
        raise ConfigError(
            f"{source}: quantization_config.{field} is {bits!r}; llmc imports {qc.get('quant_method')} checkpoints "
            f"with {' or '.join(map(str, allowed))} bits."
        )
    return bits


def _group(qc: dict, source: str) -> int:
    group = qc.get("group_size", 128)
    if not isinstance(group, int) or isinstance(group, bool) or (group < 1 and group != -1):
        raise ConfigError(f"{source}: quantization_config.group_size is {group!r}; expected a positive integer or -1.")
    return 0 if group == -1 else group


def _awq(qc: dict, source: str) -> StoredQuant:
    version = str(qc.get("version", qc.get("format", "gemm"))).lower()
    if version != "gemm":
        raise ConfigError(
            f"{source}: quantization_config.version is {version!r}; llmc imports AWQ checkpoints in the gemm layout "
            "(AutoAWQ's default). Re-save the model with version 'gemm'."
        )
    if qc.get("zero_point", True) is not True:
        raise ConfigError(f"{source}: quantization_config.zero_point is false; llmc imports AWQ with zero points only.")
    return StoredQuant("awq", "awq", _bits(qc, source, (4,)), _group(qc, source))


def _gptq(qc: dict, source: str) -> StoredQuant:
    bits = _bits(qc, source, (4, 8))
    fmt = str(qc.get("checkpoint_format", qc.get("format", "gptq"))).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ConfigError(
            f"{source}: quantization_config.checkpoint_format is {fmt!r}; llmc reads 'gptq' (v1) and 'gptq_v2'."
        )
    desc_act = qc.get("desc_act", False)
    if not isinstance(desc_act, bool):
        raise ConfigError(f"{source}: quantization_config.desc_act is {desc_act!r}; expected true or false.")
    offset = 1 if fmt == "gptq" else 0
    return StoredQuant("gptq", "gptq", bits, _group(qc, source), offset, desc_act)


def _fp8(qc: dict, method: str, source: str) -> StoredQuant:
    if method == "fbgemm_fp8":
        return StoredQuant("fp8", method, 8, block=(1, 0), scale_name="weight_scale")
    if method == "fp8":
        fmt = qc.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise ConfigError(f"{source}: quantization_config.fmt is {fmt!r}; llmc imports e4m3 fp8 weights.")
        block = qc.get("weight_block_size")
        if block is None:
            return StoredQuant("fp8", method, 8, block=(0, 0))
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise ConfigError(f"{source}: quantization_config.weight_block_size is {block!r}; expected [rows, cols].")
        return StoredQuant("fp8", method, 8, block=(block[0], block[1]))
    return _compressed_tensors(qc, source)


def _compressed_tensors(qc: dict, source: str) -> StoredQuant:
    """compressed-tensors ``float-quantized``: one config group of 8-bit float weights."""
    where = f"{source}: quantization_config"
    fmt = qc.get("format")
    groups = qc.get("config_groups")
    if fmt != "float-quantized" or not isinstance(groups, dict) or len(groups) != 1:
        raise ConfigError(
            f"{where}.format is {fmt!r}; llmc imports compressed-tensors checkpoints in the 'float-quantized' (fp8) "
            "format with one config group."
        )
    ((name, group),) = groups.items()
    weights = group.get("weights") if isinstance(group, dict) else None
    if not isinstance(weights, dict) or weights.get("type") != "float" or weights.get("num_bits") != 8:
        raise ConfigError(f"{where}.config_groups.{name}.weights must be 8-bit float (type 'float', num_bits 8).")
    strategy = weights.get("strategy")
    if strategy == "tensor":
        block = (0, 0)
    elif strategy == "channel":
        block = (1, 0)
    elif strategy == "block" and isinstance(weights.get("block_structure"), list):
        block = tuple(int(b) for b in weights["block_structure"])
    else:
        raise ConfigError(
            f"{where}.config_groups.{name}.weights.strategy is {strategy!r}; llmc reads tensor, channel and block."
        )
    return StoredQuant("fp8", "compressed-tensors", 8, block=block, scale_name="weight_scale")
