"""Multi-head Latent Attention (MLA, DeepSeek-V2) for the SLAM v3 decoder (DESIGN §5).

Keys and values are rebuilt from a small per-token latent `c_kv` (kv_lora_rank wide) plus one RoPE key
shared by all heads (qk_rope_head_dim wide). Only these two are cached, viewed as single-head tensors in
the two slots of a standard transformers Cache (HF_GUIDE §3.3): keys slot = c_kv (B, 1, S, kv_lora_rank),
values slot = k_rope (B, 1, S, qk_rope_head_dim). No custom Cache class, so beam search, cropping and
offloading see ordinary [B, H, S, D] tensors.

Two mathematically identical ways to attend over the cached latent:

* expanded: run `kv_b_proj` over every cached latent to get per-head K/V, then ordinary attention. Cheapest
  for training and long prefills (per query-key pair it costs heads * (qk_head_dim + v_head_dim)).
* absorbed: fold kv_b_proj's key half into the query (q_nope @ W_UK is a query in latent space) and its
  value half into the output (attend over latents, then W_UV). The latent is never expanded, so decoding
  reads (kv_lora_rank + qk_rope_head_dim) numbers per cached token instead of re-projecting the whole cache
  through kv_b_proj every step. Per query-key pair it costs heads * (2 * kv_lora_rank + qk_rope_head_dim),
  more than expanded, so it only pays off for short query blocks (decoding).

`absorb` picks the path: True / False force it; "auto" (default) absorbs when not training and the query
block is short enough that skipping the expansion of the S cached latents saves more than the wider
query-key products cost (see `use_absorption`). Training keeps the expanded path, the DeepSeek reference.
"""

import torch
from torch import nn

from .configuration_slam import check_latent_attention_dims
from .slam_attention import SlamAttentionBase, run_attention
from .slam_layers import SlamRMSNorm, apply_rotary_pos_emb, is_ternary, make_linear, make_sub_norm


def causal_bool_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    # (1, 1, Lq, S), True = attend; bottom-right aligned: the queries are the last q_len of the kv_len positions
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return (torch.arange(kv_len, device=device)[None, :] <= rows)[None, None]


class SlamLatentAttention(SlamAttentionBase):
    """Causal MLA self-attention with DeepSeek projection names (q_proj or q_a_proj/q_a_layernorm/q_b_proj,
    kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj), so DeepSeek / Llama LoRA target lists apply.

    `attention_bias` applies to every projection; a kv_b_proj bias stays exact under absorption (its key part
    adds a per-query constant that softmax ignores, its value part passes through the convex average). Absorption
    needs kv_b_proj to be affine: a BitNet ternary kv_b_proj quantises each latent to int8 first, so such a layer
    always runs expanded (the path it trains on).
    """

    is_causal = True
    num_key_value_groups = 1  # read by the attention kernels; both paths hand them matching head counts

    def __init__(self, config, layer_idx: int, absorb="auto"):
        # Fail at construction, naming the field, instead of with a shape error deep inside forward.
        check_latent_attention_dims(config)
        super().__init__(config, layer_idx, (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5)
        if is_ternary(config, "kv_b_proj"):
            if absorb is True:
                raise ValueError(
                    "absorb=True folds kv_b_proj into the queries, which is exact only for an affine kv_b_proj; this "
                    "config makes it BitNet ternary (int8 activations): leave `kv_b_proj` out of `ternary_modules` "
                    "or use absorb='auto' (expanded attention)."
                )
            absorb = False
        self.absorb = absorb
        self.num_heads = config.num_attention_heads
        self.kv_lora_rank = config.kv_lora_rank
        self.q_lora_rank = getattr(config, "q_lora_rank", None)
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        hidden, bias, heads = config.hidden_size, config.attention_bias, self.num_heads
        if self.q_lora_rank is None:
            self.q_proj = make_linear(config, hidden, heads * self.qk_head_dim, bias, "q_proj")
        else:
            self.q_a_proj = make_linear(config, hidden, self.q_lora_rank, bias, "q_a_proj")
            self.q_a_layernorm = SlamRMSNorm(self.q_lora_rank, eps=config.norm_eps)
            self.q_b_proj = make_linear(config, self.q_lora_rank, heads * self.qk_head_dim, bias, "q_b_proj")
        self.kv_a_proj_with_mqa = make_linear(
            config, hidden, self.kv_lora_rank + self.qk_rope_head_dim, bias, "kv_a_proj_with_mqa"
        )
        self.kv_a_layernorm = SlamRMSNorm(self.kv_lora_rank, eps=config.norm_eps)
        self.kv_b_proj = make_linear(
            config, self.kv_lora_rank, heads * (self.qk_nope_head_dim + self.v_head_dim), bias, "kv_b_proj"
        )
        self.attn_sub_norm = make_sub_norm(config, heads * self.v_head_dim, "o_proj")
        self.o_proj = make_linear(config, heads * self.v_head_dim, hidden, bias, "o_proj")

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, absorb={self.absorb!r}"

    def use_absorption(self, q_len: int) -> bool:
        """Auto rule (FLOP count per cached token S): expanded pays S * r * heads * (nope + v) once to expand
        the latents plus q_len * heads * (nope + rope + v) per query; absorbed pays q_len * heads * (2r + rope).
        So absorb iff q_len * (2r - nope - v) < r * (nope + v) — about 85 queries at r=256, nope=v=64: every
        decoding step, short prefills, never a long prompt. Training stays expanded (the reference path)."""
        if self.absorb != "auto":
            return bool(self.absorb)
        if self.training or not isinstance(q_len, int):
            # A symbolic length (torch.export with a dynamic decoder length) cannot pick a path without a guard
            # that would pin its range: the expanded path is right for every length.
            return False
        r, nope, v = self.kv_lora_rank, self.qk_nope_head_dim, self.v_head_dim
        return q_len * (2 * r - nope - v) < r * (nope + v)

    def project(self, hidden_states, position_embeddings):
        # (B, L, hidden) -> q_nope (B, h, L, nope), q_rope (B, h, L, rope), c_kv (B, 1, L, r), k_rope (B, 1, L, rope)
        batch, length, _ = hidden_states.shape
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q = q.view(batch, length, self.num_heads, self.qk_head_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        c_kv, k_rope = self.kv_a_proj_with_mqa(hidden_states).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)[:, None]  # (B, 1, L, r): "single head" so any cache layer stores it
        q_rope, k_rope = apply_rotary_pos_emb(q_rope, k_rope[:, None], *position_embeddings)
        return q_nope, q_rope, c_kv, k_rope

    def kv_b_weights(self, like: torch.Tensor):
        """kv_b_proj as (W_UK (h, nope, r), W_UV (h, v, r), value bias (h, v) or None) for absorption.

        A plain nn.Linear is read directly. Anything else (a PEFT LoRA wrapper, a quantised make_linear
        subclass, a layer with hooks such as accelerate's offloading hook, whose weight is on the meta device
        until the layer is called) is probed with the identity: exact for any affine map, and it honours
        unmerged adapters, whose `.weight` would be the frozen base weight only. The probe takes the device and
        dtype of `like` (an activation), which the layer accepts even when its own weight is not loaded yet.
        """
        layer, r = self.kv_b_proj, self.kv_lora_rank
        hooked = layer._forward_hooks or layer._forward_pre_hooks or hasattr(layer, "_hf_hook")
        if type(layer) is nn.Linear and not hooked:
            weight, bias = layer.weight, layer.bias  # (h * (nope + v), r)
        else:
            probe = torch.cat([like.new_zeros(1, r), torch.eye(r, dtype=like.dtype, device=like.device)])
            out = layer(probe)  # (1 + r, h * (nope + v))
            bias, weight = out[0], (out[1:] - out[:1]).T
        weight = weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, r)
        w_uk, w_uv = weight.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        if bias is not None:
            bias = bias.view(self.num_heads, -1)[:, self.qk_nope_head_dim :]
        return w_uk, w_uv, bias

    def attend_expanded(self, q_nope, q_rope, c_kv, k_rope, attention_mask, implementation, **kwargs):
        # latents (B, 1, S, r) -> per-head k (B, h, S, nope + rope), v (B, h, S, v); returns (B, Lq, h * v)
        batch, _, kv_len, _ = c_kv.shape
        q_len = q_nope.shape[2]
        kv = self.kv_b_proj(c_kv[:, 0]).view(batch, kv_len, self.num_heads, -1).transpose(1, 2)
        k_nope, value = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        key = torch.cat([k_nope, k_rope.expand(-1, self.num_heads, -1, -1)], dim=-1)
        query = torch.cat([q_nope, q_rope], dim=-1)
        if attention_mask is None and q_len > 1 and (q_len != kv_len or implementation == "eager"):
            # eager has no is_causal, and the kernels' is_causal aligns top-left (wrong after a cached prefix)
            attention_mask = causal_bool_mask(q_len, kv_len, query.device)
        output, _ = run_attention(self, query, key, value, attention_mask, implementation, **kwargs)
        return output.reshape(batch, q_len, -1)

    def attend_absorbed(self, q_nope, q_rope, c_kv, k_rope, attention_mask, implementation, **kwargs):
        # Attend in latent space: MQA with one shared (r + rope)-dim key and r-dim value per cached token.
        # Heads are folded into the query length, (B, h, L, .) -> (B, 1, h * L, .), so every kernel sees
        # plain single-head attention and the latent is read once, never repeated per head.
        batch, heads, q_len, _ = q_nope.shape
        kv_len = c_kv.shape[2]
        w_uk, w_uv, v_bias = self.kv_b_weights(c_kv)
        q_latent = torch.einsum("bhln,hnr->bhlr", q_nope, w_uk)  # (B, h, L, r)
        query = torch.cat([q_latent, q_rope], dim=-1).reshape(batch, 1, heads * q_len, -1)
        key = torch.cat([c_kv, k_rope], dim=-1)  # (B, 1, S, r + rope)
        if attention_mask is None and q_len > 1:
            attention_mask = causal_bool_mask(q_len, kv_len, query.device)
        if attention_mask is not None:
            # (B|1, 1, L, S) -> (B|1, 1, h * L, S), row h * L + l gets query l's mask
            mask = attention_mask[..., :kv_len]
            attention_mask = mask.expand(-1, heads, -1, -1).reshape(mask.shape[0], 1, heads * q_len, kv_len)
        # The values are the latents, i.e. the first r columns of the key: attending over the key itself and
        # dropping its RoPE columns afterwards gives the same result, and equal key/value widths keep CPU SDPA on
        # its fused kernel (unequal widths fall back to the math kernel, ~1.6x slower at 1k context).
        kwargs["is_causal"] = False
        output, _ = run_attention(self, query, key, key, attention_mask, implementation, **kwargs)
        latent = output[..., : self.kv_lora_rank].reshape(batch, heads, q_len, self.kv_lora_rank)  # (B, h, L, r)
        output = torch.einsum("bhlr,hvr->blhv", latent, w_uv)  # (B, L, h, v)
        if v_bias is not None:
            output = output + v_bias  # softmax weights sum to one, so the bias passes through unchanged
        return output.reshape(batch, q_len, -1)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        """hidden_states (B, L, H), position_embeddings (cos, sin) of width qk_rope_head_dim, attention_mask a
        4D float/bool mask as transformers builds it (None = plain causal) -> ((B, L, H), None)."""
        q_nope, q_rope, c_kv, k_rope = self.project(hidden_states, position_embeddings)
        if cache is not None:
            # the cache stores and returns the compressed latent: keys (B, 1, S, r), values (B, 1, S, rope)
            c_kv, k_rope = cache.update(c_kv, k_rope, self.layer_idx)
        attend = self.attend_absorbed if self.use_absorption(q_nope.shape[2]) else self.attend_expanded
        output = attend(q_nope, q_rope, c_kv, k_rope, attention_mask, self.config._attn_implementation, **kwargs)
        return self.o_proj(self.attn_sub_norm(output)), None


__all__ = ["SlamLatentAttention", "causal_bool_mask"]
