"""Tiny random checkpoints made with transformers (every family llmc has), their tokenizer, and the sizes the
tests compile them at. Used by tests/conftest.py's fixtures, by tests directly and by bench/ scripts
(``sys.path`` gets ``tests/``, then ``from support.checkpoints import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. A compiler turns source code into machine code. "
    "def add(a, b):\n    return a + b\n Numbers 0123456789 and symbols !?.,;:()[]{} appear here. "
) * 20

# context window / prefill chunk small enough that tests cross KV pages (16) and chunk prompts
TINY_CONTEXT_WINDOW = 128
TINY_PREFILL_CHUNK = 24

TINY_MODELS = {
    # Llama 3 style: GQA and llama3 rope scaling (original context 32 so scaling matters)
    "llama_gqa": dict(
        arch="LlamaForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    # Qwen2: q/k/v bias
    "qwen2_bias": dict(arch="Qwen2ForCausalLM", num_attention_heads=4, num_key_value_heads=2),
    # SmolLM style: tied embeddings, MHA
    "llama_tied": dict(arch="LlamaForCausalLM", num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
}


# tests/test_models_families.py: one tiny checkpoint per family feature (the sliding windows are shorter
# than the longest test prompt and at least the prefill chunk)
FAMILY_MODELS = {
    # Qwen3: QK-norm, explicit head_dim (4 x 32 != hidden 64), q/k/v/o bias
    "qwen3": dict(
        arch="Qwen3ForCausalLM", num_attention_heads=4, num_key_value_heads=2, head_dim=32, attention_bias=True
    ),
    # Mistral: every layer a 32-token sliding window
    "mistral": dict(arch="MistralForCausalLM", num_attention_heads=4, num_key_value_heads=2, sliding_window=32),
    # Gemma 3: a sliding (24 tokens, local base) and a global layer (linear-scaled rope), query_pre_attn_scalar
    "gemma3": dict(
        arch="Gemma3ForCausalLM",
        config_class="Gemma3TextConfig",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=24,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=24,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    ),
    # Gemma 2: attention and final-logit soft-capping (small caps so they bite), every other layer sliding
    "gemma2": dict(
        arch="Gemma2ForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=24,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        pad_token_id=0,
    ),
    # Phi-3: fused qkv / gate_up in the checkpoint, longrope (short factors: context below the original
    # context, as transformers picks for these lengths) with its attention factor, partial rotary 0.5.
    # Phi3Config's own original_max_position_embeddings (default 4096) overrides the 200 below; the long
    # factors are tested in tests/test_rope_types.py
    "phi3": dict(
        arch="Phi3ForCausalLM",
        pad_token_id=0,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.3, 1.7, 2.5],
            "long_factor": [2.0, 3.0, 5.0, 9.0],
            "original_max_position_embeddings": 200,
        },
    ),
    # OLMo 2: norms after attention and MLP, QK-norm over all heads
    "olmo2": dict(arch="Olmo2ForCausalLM", num_attention_heads=4, num_key_value_heads=2, pad_token_id=0),
    # Mixtral: 6 experts, top-2 (renormalized), every layer sparse, a 32-token sliding window
    "mixtral": dict(
        arch="MixtralForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=6,
        num_experts_per_tok=2,
        sliding_window=32,
    ),
    # Qwen3-MoE: 8 experts, top-3 (not renormalized), layer 1 dense (mlp_only_layers), QK-norm
    "qwen3_moe": dict(
        arch="Qwen3MoeForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=3,
        moe_intermediate_size=32,
        norm_topk_prob=False,
        mlp_only_layers=[1],
    ),
    # GPT-2: LayerNorm, learned positions, Conv1D weights, tied head
    "gpt2": dict(arch="GPT2LMHeadModel", config_class="GPT2Config", num_attention_heads=4, n_inner=96),
    # Llama with YaRN rope scaling (applied by the module, not the KV cache)
    "llama_yarn": dict(
        arch="LlamaForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    # LayerNorm / parallel-block families (llmc/models/neox.py's module)
    # Phi-2: parallel attention + GELU MLP on one norm, partial rotary 0.5 (applied by the KV cache), biases,
    # LM-head bias; QK LayerNorm shared by the heads (Phi-2 itself has none)
    "phi": dict(arch="PhiForCausalLM", num_attention_heads=4, qk_layernorm=True, pad_token_id=0),
    # GPT-NeoX: parallel residual on two norms, rotary on 25% of each head, per-head fused query_key_value, exact GELU
    "gpt_neox": dict(arch="GPTNeoXForCausalLM", num_attention_heads=4, pad_token_id=0),
    # StableLM: sequential block, GQA, q/k/v bias, per-head QK LayerNorm, partial rotary with linear scaling
    # (applied by the module)
    "stablelm": dict(
        arch="StableLmForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        use_qkv_bias=True,
        qk_layernorm=True,
        pad_token_id=0,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    ),
    # StarCoder2: LayerNorm, GELU MLP with biases, GQA, every layer a 32-token sliding window, tied head
    "starcoder2": dict(arch="Starcoder2ForCausalLM", num_attention_heads=4, num_key_value_heads=2, sliding_window=32),
    # Cohere: bias-free LayerNorm, parallel block, interleaved rotary, per-head QK-norm, logit scale, tied head
    "cohere": dict(
        arch="CohereForCausalLM", num_attention_heads=4, num_key_value_heads=2, use_qk_norm=True, logit_scale=0.5
    ),
    # Llama-shaped families (LlamaVariant switches; their family files in llmc/models/)
    # InternLM3 (run by transformers as Llama): q/k/v/o and MLP biases
    "internlm3": dict(
        arch="LlamaForCausalLM",
        config_class="InternLM3Config",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        attention_bias=True,
        mlp_bias=True,
    ),
    # Seed-OSS: q/k/v bias without an o_proj bias (attention_out_bias), explicit head_dim (4 x 32 != 64)
    "seed_oss": dict(
        arch="SeedOssForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        attention_bias=True,
        attention_out_bias=False,
    ),
    # Granite: its four scales, none 1 (attention 0.1 instead of 16 ** -0.5)
    "granite": dict(
        arch="GraniteForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        embedding_multiplier=3.0,
        residual_multiplier=0.5,
        attention_multiplier=0.1,
        logits_scaling=2.0,
    ),
    # Arcee: ungated ReLU^2 MLP (up_proj, down_proj)
    "arcee": dict(arch="ArceeForCausalLM", num_attention_heads=4, num_key_value_heads=2),
    # OLMo 1: weightless LayerNorms, q/k/v clipped at 0.8 (about one standard deviation here), q/k/v/o bias
    "olmo": dict(
        arch="OlmoForCausalLM", num_attention_heads=4, num_key_value_heads=2, clip_qkv=0.8, attention_bias=True
    ),
    # SmolLM3: layer 1 of 2 without RoPE (no_rope_layer_interval 2), tied embeddings
    "smollm3": dict(
        arch="SmolLM3ForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        no_rope_layer_interval=2,
        pad_token_id=0,
    ),
    # Ernie 4.5: interleaved RoPE pairs, use_bias on every projection, tied embeddings
    "ernie4_5": dict(
        arch="Ernie4_5ForCausalLM", num_attention_heads=4, num_key_value_heads=2, head_dim=16, use_bias=True
    ),
    # GLM-4: partial (0.5) interleaved RoPE, q/k/v bias without o_proj bias, fused gate_up_proj
    "glm": dict(arch="GlmForCausalLM", num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0),
    # EXAONE 4: a 32-token sliding layer with RoPE, then a global NoPE layer; QK-norm, norms after attention/MLP
    "exaone4": dict(
        arch="Exaone4ForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=32,
        sliding_window_pattern=2,
    ),
    # multi-head latent attention (llmc/models/deepseek_v2.py): a dense layer, then a MoE layer with shared experts
    # DeepSeek-V2: q_proj (no q LoRA), interleaved rope with yarn (mscale != mscale_all_dim: the cos/sin factor and
    # the softmax mscale both bite), softmax routing limited to 1 of 2 expert groups, routed scaling
    "deepseek_v2": dict(
        arch="DeepseekV2ForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=None,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        first_k_dense_replace=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=2,
        topk_method="group_limited_greedy",
        n_group=2,
        topk_group=1,
        routed_scaling_factor=1.5,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 32,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
        },
    ),
    # DeepSeek-V3: q LoRA, rope_interleave, sigmoid routing + e_score_correction_bias (randomized), groups scored by
    # their top-2 sum, norm_topk_prob, routed scaling
    "deepseek_v3": dict(
        arch="DeepseekV3ForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        first_k_dense_replace=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        rope_interleave=True,
    ),
    # Llama 4 (llmc/models/llama4.py, checked in tests/test_models_llama4.py): layer 0 with interleaved llama3 rope,
    # weightless QK-norm, chunked attention (attention_chunk_size 128: the tests' context window) and a dense MLP;
    # layer 1 NoPE with temperature tuning (floor_scale 8: it bites from position 7) and a MoE (4 experts, top-2
    # sigmoid scores on the expert inputs, a shared expert); q/k/v/o biases
    "llama4_text": dict(
        arch="Llama4ForCausalLM",
        config_class="Llama4TextConfig",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=32,
        intermediate_size_mlp=96,
        num_local_experts=4,
        num_experts_per_tok=2,
        interleave_moe_layer_step=2,
        no_rope_layer_interval=2,
        attention_chunk_size=128,
        floor_scale=8,
        attn_scale=0.5,
        attention_bias=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    # GPT-OSS: attention sinks, an 8-token sliding layer then a full one (tests/test_models_gptoss.py: prefill chunks
    # longer than the window), q/k/v/o bias, yarn without truncation, 4 experts top-2 with biases, a SwiGLU clamp at
    # 0.5 (it bites: pre-activations are about 1 here)
    "gpt_oss": dict(
        arch="GptOssForCausalLM",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        num_local_experts=4,
        num_experts_per_tok=2,
        swiglu_limit=0.5,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 4.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 32,
        },
    ),
}


def make_tokenizer(folder: Path) -> int:
    """Train a small byte-level BPE, save tokenizer.json + tokenizer_config.json; return its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([TRAINING_TEXT], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHATML_TEMPLATE,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "add_bos_token": False,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return tokenizer.get_vocab_size()


def randomize(model, seed: int) -> None:
    """Re-draw every parameter (HF inits biases to 0 and norms to 1, which would hide mapping bugs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or ".ln_" in name:  # RMSNorm / LayerNorm scales near one (GPT-2: ln_1, ln_f)
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(0.125 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's router bias: zeros would hide a mapping bug
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))


def make_checkpoint(folder: Path, name: str, seed: int = 0, overrides: dict | None = None) -> Path:
    """``overrides``: config fields over the tiny defaults and the model's spec."""
    import torch
    import transformers

    spec = dict(TINY_MODELS[name] if name in TINY_MODELS else FAMILY_MODELS[name])
    arch = spec.pop("arch")
    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(folder)
    config_class = getattr(transformers, spec.pop("config_class", arch.replace("ForCausalLM", "Config")))
    fields = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=2,
    )
    config = config_class(**{**fields, **spec, **(overrides or {})})
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config).eval()
    randomize(model, seed)
    model.save_pretrained(folder, max_shard_size="40KB")
    assert (folder / "model.safetensors.index.json").exists(), "fixture must be sharded"
    return folder


def make_trained_checkpoint(folder: Path, steps: int = 40, seed: int = 0) -> Path:
    """A tiny Llama briefly trained on the fixture text: peaked, structured logits like a real LLM's
    (an untrained Gaussian model's near-isotropic logits make any weight noise look large)."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(folder)
    ids = torch.tensor(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TRAINING_TEXT).ids)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,))
        batch = torch.stack([ids[s : s + 64] for s in starts])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder, max_shard_size="200KB")
    return folder


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """Reference logits for every position of ``ids``: (len, vocab)."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
