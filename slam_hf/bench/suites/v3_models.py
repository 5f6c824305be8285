"""The decoder models of the SLAM v3 benchmark: SLAM v3 (MLA latent self-attention), the same model with standard
MHA self-attention (every other weight shared), and the transformers references of the same width (Bart, Llama,
DeepSeek-V3)."""

import copy

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, LlamaConfig, LlamaForCausalLM

from slam_hf import SlamV3Config, SlamV3ForConditionalGeneration
from slam_hf.slam_attention import SlamAttention
from slam_hf.slam_layers import SlamRotaryEmbedding

from .v3_timing import set_threads

CACHE_TARGET = 0.2  # SLAM v3 self-attention cache bytes per token / MHA (<=)
DECODE_TARGET = 1.0  # absorbed MLA decode step time / MHA decode step time (<=)
PATHS_TARGET = 1.5  # sequential / batched encoder-path time (>=)
EQUAL_TOL = 1e-4


def tiny_vision():
    return dict(patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def v3_config(args):
    config = SlamV3Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        encoder_layers=1,
        decoder_layers=args.decoder_layers,
        kv_lora_rank=args.kv_lora_rank,
        q_lora_rank=args.q_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        max_position_embeddings=args.context + 4 * args.decode_steps + 64,
        vision_config=tiny_vision(),
        attn_implementation="sdpa",
    )
    return config


class MHASelfAttention(nn.Module):
    """Drop-in for SlamLatentAttention in a SlamV3DecoderLayer: standard MHA (SlamAttention, the module of the SLAM
    v1/v2 layers) with RoPE over the full head_dim and K/V (B, heads, S, head_dim) in the cache. Positions come from
    the cache length (the decoder hands MLA the cos/sin of its narrower decoupled RoPE key)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = SlamAttention(config, layer_idx, is_causal=True)
        self.rotary = SlamRotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        past = 0 if cache is None else cache.get_seq_length(self.layer_idx)
        length = hidden_states.shape[1]
        positions = torch.arange(past, past + length, device=hidden_states.device)[None]
        cos_sin = self.rotary(positions, hidden_states.dtype)
        return self.attn(hidden_states, cos_sin, attention_mask, cache)


def v3_with_mha(model, seed):
    """The same SLAM v3 model (every weight shared by value) with MHA self-attention in the decoder."""
    mha = copy.deepcopy(model)
    torch.manual_seed(seed + 1)
    std = model.config.initializer_range
    for index, layer in enumerate(mha.model.decoder.layers):
        layer.self_attn = MHASelfAttention(mha.config, index)
        for module in layer.self_attn.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
    return mha.eval()


def bart_config(args):
    # FFN sized to the parameters of SLAM's GeGLU MLP (3 * H * I == 2 * H * ffn); no biases-free option in Bart
    config = BartConfig(
        vocab_size=args.vocab_size,
        d_model=args.hidden_size,
        encoder_layers=1,
        decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.num_heads,
        decoder_attention_heads=args.num_heads,
        encoder_ffn_dim=3 * args.intermediate_size // 2,
        decoder_ffn_dim=3 * args.intermediate_size // 2,
        max_position_embeddings=max(args.context + 4 * args.decode_steps + 64, 256),
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        forced_bos_token_id=None,
        attn_implementation="sdpa",
    )
    return config


def llama_model(args):
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        num_hidden_layers=args.decoder_layers,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def deepseek_model(args):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        moe_intermediate_size=args.intermediate_size // 4,
        num_hidden_layers=args.decoder_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=args.decoder_layers,
        kv_lora_rank=args.kv_lora_rank,
        q_lora_rank=args.q_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_mtp_layers=0,
        attn_implementation="sdpa",
    )
    return DeepseekV3ForCausalLM(config).eval()


def set_absorb(model, absorb):
    for layer in model.model.decoder.layers:
        layer.self_attn.absorb = absorb


def build_decoder_models(args, report):
    torch.manual_seed(args.seed)
    set_threads(args.setup_threads)
    v3 = SlamV3ForConditionalGeneration(v3_config(args)).eval()
    v3_mha = v3_with_mha(v3, args.seed)
    torch.manual_seed(args.seed + 2)
    bart = BartForConditionalGeneration(bart_config(args)).eval()
    set_threads(args.threads)
    return {"v3": v3, "v3_mha": v3_mha, "bart": bart}
