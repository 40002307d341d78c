"""Write an F32 GGUF from a quantized one (gguf-py): every tensor dequantized, every metadata KV pair copied.

The F32 file is the common source from which llama.cpp's own quantizer makes Q4_0 and Q8_0 of the same weights.

usage: python bench/gguf_f32.py IN.gguf OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FILE_TYPE_ALL_F32 = 0  # llama_ftype LLAMA_FTYPE_ALL_F32


def write_f32_gguf(source: Path, out: Path) -> Path:
    """Dequantize every tensor of ``source`` to F32 and write ``out`` with the same metadata and tokenizer."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(tmp, arch=arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # header fields; the writer adds the architecture itself
        if key == "general.file_type":
            writer.add_uint32(key, FILE_TYPE_ALL_F32)
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main_type, sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGML order -> numpy order
        writer.add_tensor(tensor.name, data.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out


if __name__ == "__main__":
    write_f32_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
