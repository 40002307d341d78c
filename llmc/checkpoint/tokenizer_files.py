"""Put a checkpoint's tokenizer into an artifact folder as ``tokenizer.json`` + ``tokenizer_config.json``.

HF folders have these files already (they are copied); GGUF files carry the vocabulary and merges
as metadata, from which a ``tokenizers`` byte-level BPE is built with llama.cpp's pre-tokenizer
for the file's ``tokenizer.ggml.pre``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmc.errors import CheckpointError

HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)

# llama.cpp's split regexes, by ``tokenizer.ggml.pre``
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "default": [GPT2_SPLIT],
    "gpt-2": [GPT2_SPLIT],
    # digits one by one, then GPT-2's split (starcoder, smollm, refact, ...)
    "smollm": [r"\p{N}", GPT2_SPLIT],
    "starcoder": [r"\p{N}", GPT2_SPLIT],
    "refact": [r"\p{N}", GPT2_SPLIT],
    "llama-bpe": [LLAMA3_SPLIT],
    "llama3": [LLAMA3_SPLIT],
    "smaug-bpe": [LLAMA3_SPLIT],
    "dbrx": [LLAMA3_SPLIT],
    "qwen2": [QWEN2_SPLIT],
    "deepseek-r1-qwen": [QWEN2_SPLIT],
}
CONTROL_TOKEN_TYPE = 3
USER_DEFINED_TOKEN_TYPE = 4


def write_tokenizer_files(reader, out_dir: Path) -> dict:
    """Write tokenizer files for ``reader`` into ``out_dir``; return the tokenizer section of llmc-config.

    Every special token id and every id the tokenizer can produce must index the embedding table, and
    the chat template must render a one-message conversation: both are checked here, before compiling.
    """
    if hasattr(reader, "tokenizer_metadata"):
        info = _from_gguf(reader, out_dir)
    else:
        info = _from_hf_folder(reader.path, reader.config, out_dir)
    # a multimodal config.json (gemma3, llama4) gives its language model's vocabulary in text_config
    vocab_size = reader.config.get("vocab_size") or (reader.config.get("text_config") or {}).get("vocab_size")
    check_token_ids(info, vocab_size, reader.path)
    if info.get("has_tokenizer"):
        check_tokenizer_ids(out_dir / "tokenizer.json", vocab_size, reader.path)
    check_chat_template(info, reader.path)
    return info


def check_token_ids(info: dict, vocab_size, source: Path) -> None:
    """bos / eos ids: integers inside the vocabulary (an id past it would read outside the embedding table)."""
    ids = [("bos_token_id", info.get("bos_token_id"))] if info.get("bos_token_id") is not None else []
    ids += [("eos_token_id", token_id) for token_id in info.get("eos_token_ids") or []]
    for key, token_id in ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < (vocab_size or 0):
            raise CheckpointError(
                f"{source}: {key} {token_id!r} is outside the vocabulary of {vocab_size} tokens. "
                "The tokenizer metadata is corrupt or belongs to another model."
            )


def check_tokenizer_ids(tokenizer_file: Path, vocab_size, source: Path) -> None:
    """Every id of ``tokenizer.json`` (vocabulary and added tokens) is below the model's vocab_size."""
    try:
        data = json.loads(tokenizer_file.read_text())
        vocab = (data.get("model") or {}).get("vocab") or {}
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
        ids += [token.get("id") for token in data.get("added_tokens") or []]
    except (ValueError, AttributeError, TypeError) as err:
        raise CheckpointError(f"{tokenizer_file.name} of {source}: malformed tokenizer ({err}).") from err
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < (vocab_size or 0)]
    if bad:
        raise CheckpointError(
            f"{source}: tokenizer.json has token id {bad[0]!r} outside the model's vocabulary of {vocab_size} "
            "(config.json vocab_size); the tokenizer belongs to another model or is corrupt."
        )


def check_chat_template(info: dict, source: Path) -> None:
    """A chat template that cannot render one user message is refused at compile time."""
    template = info.get("chat_template")
    if template is None:
        return
    from llmc.runtime.tokenizer import render_chat_template

    try:
        render_chat_template(
            template,
            [{"role": "user", "content": "Hello"}],
            True,
            bos_token=info.get("bos_token") or "",
            eos_token=info.get("eos_token") or "",
        )
    except Exception as err:  # noqa: BLE001 - jinja2 templates may raise anything; name the file either way
        raise CheckpointError(
            f"{source}: the chat template fails to render a one-message conversation "
            f"({err.__class__.__name__}: {err}). Fix or remove it."
        ) from err


def _from_hf_folder(folder: Path, config: dict, out_dir: Path) -> dict:
    for name in HF_TOKENIZER_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, out_dir / name)
    tok_config = _read_json(folder / "tokenizer_config.json")
    gen_config = _read_json(folder / "generation_config.json")
    chat_template = tok_config.get("chat_template")
    if (folder / "chat_template.jinja").exists():
        chat_template = (folder / "chat_template.jinja").read_text()
    eos = gen_config.get("eos_token_id", config.get("eos_token_id"))
    return {
        "has_tokenizer": (folder / "tokenizer.json").exists(),
        "bos_token_id": gen_config.get("bos_token_id", config.get("bos_token_id")),
        "eos_token_ids": _as_list(eos),
        "add_bos_token": bool(tok_config.get("add_bos_token", False)),
        "chat_template": chat_template if isinstance(chat_template, str) else None,
        "bos_token": _token_text(tok_config.get("bos_token")),
        "eos_token": _token_text(tok_config.get("eos_token")),
    }


def _from_gguf(reader, out_dir: Path) -> dict:
    meta = reader.tokenizer_metadata()
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if model not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{reader.path}: GGUF tokenizer model {model!r} is not supported yet "
            "(byte-level BPE 'gpt2' and SentencePiece 'llama' are); compile the Hugging Face checkpoint instead."
        )
    try:
        if model == "gpt2":
            tokenizer = build_bpe_tokenizer(
                tokens,
                meta.get("tokenizer.ggml.merges") or [],
                meta.get("tokenizer.ggml.token_type") or [],
                meta.get("tokenizer.ggml.pre"),
            )
        else:
            tokenizer = build_spm_tokenizer(
                tokens,
                meta.get("tokenizer.ggml.scores") or [],
                meta.get("tokenizer.ggml.token_type") or [],
                bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            )
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception on a bad vocabulary
        raise CheckpointError(f"{reader.path}: the GGUF vocabulary or merges are malformed ({err}).") from err
    tokenizer.save(str(out_dir / "tokenizer.json"))
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    info = {
        "has_tokenizer": True,
        "bos_token_id": bos_id,
        "eos_token_ids": _as_list(eos_id),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "chat_template": meta.get("tokenizer.chat_template"),
        "bos_token": tokens[bos_id] if bos_id is not None and bos_id < len(tokens) else None,
        "eos_token": tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else None,
    }
    tok_config = {k: info[k] for k in ("add_bos_token", "chat_template", "bos_token", "eos_token")}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    return info


def build_bpe_tokenizer(tokens: list[str], merges: list[str], token_types: list[int], pre: str | None):
    """A byte-level BPE ``tokenizers.Tokenizer`` equivalent to llama.cpp's for this vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=False))
    splits = PRE_TOKENIZER_SPLITS.get(pre or "default", [GPT2_SPLIT])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, token_types)
        if kind == CONTROL_TOKEN_TYPE
    ]
    plain = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(tokens, token_types)
        if kind == USER_DEFINED_TOKEN_TYPE
    ]
    tokenizer.add_special_tokens(specials)
    tokenizer.add_tokens(plain)
    return tokenizer


SPM_SPACE = "\u2581"
BYTE_TOKEN_TYPE = 6


def build_spm_tokenizer(tokens: list[str], scores: list[float], token_types: list[int], add_space_prefix: bool):
    """A ``tokenizers.Tokenizer`` for a SentencePiece vocabulary (GGUF ``tokenizer.ggml.model == "llama"``:
    Gemma, Llama 2, Mistral), tokenizing as llama.cpp does: spaces become U+2581 (one prepended when
    ``add_space_prefix``), the adjacent pair whose union has the highest score merges first, pieces
    outside the vocabulary fall back to ``<0xXX>`` byte tokens, control / user-defined tokens match whole.

    Score-ordered merging is BPE whose merge ranks follow the merged piece's score: every split of a
    vocabulary piece into two vocabulary pieces is a merge, ranked by that score.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = {token: index for index, token in enumerate(tokens)}
    merges = []
    for index, token in enumerate(tokens):
        if token_types and token_types[index] != 1:  # only normal pieces are made by merging
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((-(scores[index] if scores else -index), index, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = next((t for t, kind in zip(tokens, token_types) if kind == 2), None)
    bpe = models.BPE(
        vocab=vocab,
        merges=[(m[4], m[5]) for m in merges],
        unk_token=unk,
        byte_fallback=True,
        fuse_unk=True,
        ignore_merges=False,
    )
    tokenizer = Tokenizer(bpe)
    steps = [normalizers.Prepend(SPM_SPACE)] if add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPM_SPACE)])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else [])
    )
    specials = [
        AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, token_types) if k == CONTROL_TOKEN_TYPE
    ]
    plain = [
        AddedToken(t, special=False, normalized=False)
        for t, k in zip(tokens, token_types)
        if k == USER_DEFINED_TOKEN_TYPE
    ]
    tokenizer.add_special_tokens(specials)
    tokenizer.add_tokens(plain)
    return tokenizer


def _read_json(file: Path) -> dict:
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{file}: not valid JSON ({err}).") from err
    return data if isinstance(data, dict) else {}


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]  # types checked by check_token_ids


def _token_text(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None
