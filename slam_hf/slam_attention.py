"""Multi-head / grouped-query self-attention dispatched through transformers' attention interface, and the one way
every SLAM attention calls a kernel (`run_attention`, `SlamAttentionBase`, `masked_attention_implementation`)."""

import torch
from torch import nn

from .slam_compat import get_attention_function
from .slam_layers import apply_rotary_pos_emb, make_linear, make_sub_norm


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    # (B, kv_heads, L, D) -> (B, kv_heads * n_rep, L, D)
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, length, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, length, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention. Accepts the float masks transformers builds and the boolean masks of EF windows."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    # softmax in float32 at least (float64 models stay float64)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32))
    weights = weights.to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def masked_attention_implementation(config) -> str:
    """The kernel for attention under SLAM's own boolean masks (windows, segments, encoder paths): eager when the
    model runs eager, else sdpa, which takes any mask and so also serves the other backends a model may request."""
    return "eager" if config._attn_implementation == "eager" else "sdpa"


def run_attention(module, query, key, value, attention_mask, implementation=None, **kwargs):
    """Attention through transformers' attention interface, with what `module` (a `SlamAttentionBase`) holds: the
    backend of its config unless `implementation` is given, its `scaling`, its `attention_dropout` while training.

    query (N, heads, Lq, D), key / value (N, kv_heads, Lk, D) -> (output (N, Lq, heads, Dv), weights or None).
    """
    attention_fn = get_attention_function(implementation or module.config._attn_implementation, eager_attention_forward)
    dropout = module.attention_dropout if module.training else 0.0
    return attention_fn(module, query, key, value, attention_mask, scaling=module.scaling, dropout=dropout, **kwargs)


class SlamAttentionBase(nn.Module):
    """What every SLAM attention holds for `run_attention` and the kernels: its config, cache layer, causality
    (None keeps the class's), softmax scaling and dropout."""

    def __init__(self, config, layer_idx: int | None, scaling: float, is_causal: bool | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        if is_causal is not None:
            self.is_causal = is_causal
        self.scaling = scaling
        self.attention_dropout = config.attention_dropout


class SlamAttention(SlamAttentionBase):
    """Self-attention with Llama projection names; `num_key_value_heads < num_attention_heads` gives GQA.

    `project` and `attend` are separate so windowed layers can gather windows between the two.
    """

    def __init__(self, config, layer_idx: int, is_causal: bool = True):
        super().__init__(config, layer_idx, config.head_dim**-0.5, is_causal)
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.use_rope = config.position_embedding_type == "rope"
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = make_linear(config, hidden, self.num_heads * self.head_dim, bias, "q_proj")
        self.k_proj = make_linear(config, hidden, self.num_key_value_heads * self.head_dim, bias, "k_proj")
        self.v_proj = make_linear(config, hidden, self.num_key_value_heads * self.head_dim, bias, "v_proj")
        self.attn_sub_norm = make_sub_norm(config, self.num_heads * self.head_dim, "o_proj")
        self.o_proj = make_linear(config, self.num_heads * self.head_dim, hidden, bias, "o_proj")

    def project(self, hidden_states, position_embeddings):
        # (B, L, hidden) -> q: (B, heads, L, D), k, v: (B, kv_heads, L, D)
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        return q, k, v

    def attend(self, q, k, v, attention_mask, implementation=None, **kwargs):
        # q: (N, heads, Lq, D), k, v: (N, kv_heads, Lk, D) -> (N, Lq, hidden)
        output, weights = run_attention(self, q, k, v, attention_mask, implementation, **kwargs)
        output = output.reshape(*output.shape[:2], -1).contiguous()
        return self.o_proj(self.attn_sub_norm(output)), weights

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        q, k, v = self.project(hidden_states, position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        return self.attend(q, k, v, attention_mask, **kwargs)


__all__ = [
    "SlamAttention",
    "SlamAttentionBase",
    "eager_attention_forward",
    "masked_attention_implementation",
    "repeat_kv",
    "run_attention",
]
