"""Tiny random configs of 27 Hugging Face decoder types (dense, mixture-of-experts, latent attention; pre-norm,
post-norm, sandwich-norm, parallel and residual-inside blocks), built offline with ``AutoConfig.for_model``."""
from __future__ import annotations

import torch

from .conftest import VOCAB

DENSE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2", "gpt_neox", "gemma2", "gemma3_text", "phi3", "phi",
         "olmo", "olmo2", "stablelm", "granite", "cohere", "starcoder2", "gptj", "falcon", "bloom", "opt")
MIXTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "granitemoe", "phimoe")
DECODER_TYPES = DENSE + MIXTURES
#: One decoder of each block shape (as ``find_branches`` reports it), for the slower checks.
ONE_PER_SHAPE = {"pre-norm": "llama", "sandwich-norm": "gemma2", "post-norm": "olmo2", "parallel": "gptj",
                 "residual inside the branches": "bloom", "chain MLP": "opt", "mixture of experts": "mixtral",
                 "latent attention": "deepseek_v3"}

_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, head_dim=8, n_embd=32, n_layer=2, n_head=4,
              n_positions=64, n_inner=64, ffn_dim=64, word_embed_proj_dim=32, rotary_dim=4, num_kv_heads=2,
              num_local_experts=4, num_experts=4, n_routed_experts=4, num_experts_per_tok=2,
              moe_intermediate_size=16, shared_expert_intermediate_size=32, n_shared_experts=1, n_group=1,
              topk_group=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
              qk_nope_head_dim=4, v_head_dim=8, sliding_window=16, pad_token_id=2, bos_token_id=0, eos_token_id=1)
_DROPOUTS = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout",
             "attention_probs_dropout_prob", "hidden_dropout_prob", "embedding_dropout", "ffn_dropout",
             "activation_dropout", "residual_dropout", "resid_dropout", "router_jitter_noise", "input_jitter_noise")


def decoder_config(model_type: str, layers: int = 2):
    """A tiny config of ``model_type`` with every dropout off (so gradient comparisons are exact); eager attention
    and experts, so a FLOP counter sees every product."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    for name, value in {**_SIZES, "num_hidden_layers": layers, "n_layer": layers}.items():
        if hasattr(config, name):
            try:
                setattr(config, name, value)
            except AttributeError:  # a read-only property (Falcon's head_dim)
                pass
    for name in _DROPOUTS:
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    if getattr(config, "layer_types", None) is not None:
        kinds = config.layer_types if model_type.startswith("gemma") else ["full_attention"]
        config.layer_types = [kinds[i % len(kinds)] for i in range(layers)]
    if model_type == "deepseek_v3":
        config.head_dim, config.num_key_value_heads = config.qk_rope_head_dim, config.num_attention_heads
    if model_type == "phi3":
        config.pad_token_id = 2
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def decoder_model(model_type: str, method: str = "full", seed: int = 0, layers: int = 2):
    """A seeded tiny causal LM of ``model_type`` in train mode, optionally with PEFT LoRA on every linear layer."""
    from .conftest import seeded_model

    return seeded_model(decoder_config(model_type, layers), method, seed, attn_implementation="eager",
                        experts_implementation="eager")
