"""SLAM v3 decoder side (DESIGN §5): cross-attention to the encoder memory and the MLA decoder layer.

    decoder layer: h += MLA(norm(h))            causal self-attention over the compressed latent cache
                   h += CrossAttn(norm(h), M)   memory M = fused encoder sequence or its learned latents
                   h += MLP(norm(h))

The cross-attention K/V depend only on the memory, so during generation they are computed on the first step,
stored in `EncoderDecoderCache.cross_attention_cache` and marked in `is_updated` (the transformers convention,
as in BART); every later step reads them back instead of re-projecting the memory.
"""

import torch
from torch import nn

from .slam_attention import SlamAttentionBase, run_attention
from .slam_compat import GradientCheckpointingLayer
from .slam_layers import SlamMLP, make_linear, make_norm, make_sub_norm
from .slam_mla import SlamLatentAttention


class SlamCrossAttention(SlamAttentionBase):
    """Queries from the decoder (or latents), keys and values from the memory; Llama projection names, GQA."""

    is_causal = False

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__(config, layer_idx, config.head_dim**-0.5)
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = make_linear(config, hidden, config.num_attention_heads * self.head_dim, bias, "q_proj")
        self.k_proj = make_linear(config, hidden, config.num_key_value_heads * self.head_dim, bias, "k_proj")
        self.v_proj = make_linear(config, hidden, config.num_key_value_heads * self.head_dim, bias, "v_proj")
        self.attn_sub_norm = make_sub_norm(config, config.num_attention_heads * self.head_dim, "o_proj")
        self.o_proj = make_linear(config, config.num_attention_heads * self.head_dim, hidden, bias, "o_proj")

    def memory_key_values(self, memory, cache=None):
        """(B, S, hidden) -> K, V (B, kv_heads, S, D), projected once per generation when a cache is given."""
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        batch, length, _ = memory.shape
        key = self.k_proj(memory).view(batch, length, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(memory).view(batch, length, -1, self.head_dim).transpose(1, 2)
        if cache is not None:
            key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return key, value

    def forward(self, hidden_states, memory, memory_mask=None, cache=None):
        """hidden_states (B, L, hidden), memory (B, S, hidden), memory_mask (B, 1, 1, S) bool or None."""
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        key, value = self.memory_key_values(memory, cache)
        output, _ = run_attention(self, query, key, value, memory_mask, is_causal=False)
        return self.o_proj(self.attn_sub_norm(output.reshape(batch, length, -1)))


class SlamV3DecoderLayer(GradientCheckpointingLayer):
    """Causal MLA self-attention, cross-attention to the memory, MLP; pre- or post-norm like `SlamLayer`."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = SlamLatentAttention(config, layer_idx)
        self.cross_attn = SlamCrossAttention(config, layer_idx)
        self.mlp = SlamMLP(config)
        self.attn_norm = make_norm(config)
        self.cross_attn_norm = make_norm(config)
        self.mlp_norm = make_norm(config)
        self.pre_norm = config.norm_position == "pre"
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _residual(self, norm, hidden_states, sublayer):
        if self.pre_norm:
            return hidden_states + self.dropout(sublayer(norm(hidden_states)))
        return norm(hidden_states + self.dropout(sublayer(hidden_states)))

    def forward(
        self,
        hidden_states,
        position_embeddings,
        attention_mask=None,
        memory=None,
        memory_mask=None,
        cache=None,
    ):
        self_cache = None if cache is None else cache.self_attention_cache
        hidden_states = self._residual(
            self.attn_norm,
            hidden_states,
            lambda x: self.self_attn(x, position_embeddings, attention_mask, self_cache)[0],
        )
        hidden_states = self._residual(
            self.cross_attn_norm, hidden_states, lambda x: self.cross_attn(x, memory, memory_mask, cache)
        )
        return self._residual(self.mlp_norm, hidden_states, self.mlp)


class SlamLatentBottleneck(GradientCheckpointingLayer):
    """`fusion_num_latents` learned latents read the fused sequence (one cross-attention + MLP, Perceiver style)
    and become the decoder's memory: (B, L, hidden) -> (B, n, hidden), whatever the input length."""

    def __init__(self, config):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(config.fusion_num_latents, config.hidden_size))
        self.cross_attn = SlamCrossAttention(config)
        self.mlp = SlamMLP(config)
        self.latent_norm = make_norm(config)
        self.memory_norm = make_norm(config)
        self.mlp_norm = make_norm(config)

    def forward(self, fused, fused_mask):
        latents = self.latents[None].expand(fused.shape[0], -1, -1)
        latents = latents + self.cross_attn(self.latent_norm(latents), self.memory_norm(fused), fused_mask)
        return latents + self.mlp(self.mlp_norm(latents))


__all__ = ["SlamCrossAttention", "SlamLatentBottleneck", "SlamV3DecoderLayer"]
