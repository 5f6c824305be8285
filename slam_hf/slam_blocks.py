"""Transformer layers: the full-attention layer and the windowed layer that EF blocks are made of."""

import torch
from torch import nn

from .slam_attention import SlamAttention
from .slam_compat import GradientCheckpointingLayer
from .slam_layers import SlamMLP, make_norm
from .slam_windows import WindowPlan


class SlamLayer(GradientCheckpointingLayer):
    """Attention + MLP with residuals; `norm_position` picks pre-norm or the published post-norm."""

    def __init__(self, config, layer_idx: int, is_causal: bool = True):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = SlamAttention(config, layer_idx, is_causal=is_causal)
        self.mlp = SlamMLP(config)
        self.attn_norm = make_norm(config)
        self.mlp_norm = make_norm(config)
        self.pre_norm = config.norm_position == "pre"
        self.dropout = nn.Dropout(config.hidden_dropout)

    def attention_input(self, hidden_states):
        return self.attn_norm(hidden_states) if self.pre_norm else hidden_states

    def finish(self, residual, attn_output):
        """Everything after attention: residual, norms and the MLP (token-wise, so it works on windows too)."""
        hidden_states = residual + self.dropout(attn_output)
        if self.pre_norm:
            return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))
        hidden_states = self.attn_norm(hidden_states)
        return self.mlp_norm(hidden_states + self.dropout(self.mlp(hidden_states)))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        attn_output, _ = self.self_attn(
            self.attention_input(hidden_states), position_embeddings, attention_mask, past_key_values
        )
        return self.finish(hidden_states, attn_output)


class SlamWindowedLayer(SlamLayer):
    """A layer that only attends inside its windows (an EF block), so attention costs O(L * w).

    Without a cache, a window's keys are exactly its own tokens: the normalised tokens are gathered into
    (batch * windows) short sequences and projected there. With a cache, Q/K/V are projected once per new
    token (they do not depend on the window: RoPE uses absolute positions), K/V go to this layer's cache
    slot, and each window gathers its keys from it. o_proj and the MLP run only on window slots that hold
    a real token. Returns per-token sums of the window outputs and how many windows covered each token;
    the caller averages over all blocks of the cycle.
    """

    def forward(self, hidden_states, position_embeddings=None, window_plan: WindowPlan = None, past_key_values=None):
        plan = window_plan
        normed = self.attention_input(hidden_states)

        def gather(states, index):  # (B, L, ...) -> (B * windows, window tokens, ...)
            return states[plan.batch_index, index].flatten(0, 1)

        if past_key_values is None:
            if plan.num_windows == 0:
                return self._no_windows(hidden_states)
            window_positions = None
            if position_embeddings is not None:
                window_positions = tuple(gather(t, plan.query_slots) for t in position_embeddings)
            q, k, v = self.self_attn.project(gather(normed, plan.query_slots), window_positions)
        else:
            q, k, v = self.self_attn.project(normed, position_embeddings)
            k, v = past_key_values.update(k, v, self.layer_idx)
            if plan.num_windows == 0:  # the cache still holds this block's K/V of every token
                return self._no_windows(hidden_states)
            # (B, heads, L, D) -> (B * windows, heads, window tokens, D)
            q, k, v = (gather(t.transpose(1, 2), index).transpose(1, 2) for t, index in
                       ((q, plan.query_slots), (k, plan.key_index), (v, plan.key_index)))  # fmt: skip

        attn_output, _ = self.self_attn.attend(q, k, v, plan.mask, implementation=plan.implementation)
        rows = plan.valid_rows
        residual = gather(hidden_states, plan.query_slots).flatten(0, 1)[rows]
        window_out = self.finish(residual, attn_output.flatten(0, 1)[rows])  # (real window slots, hidden)
        return plan.scatter_sum(window_out, hidden_states.shape[:2]), plan.coverage.to(window_out.dtype)

    @staticmethod
    def _no_windows(hidden_states):  # e.g. block B of a sequence that fits in the first window
        zeros = torch.zeros_like(hidden_states)
        return zeros, zeros[..., :1]


class SlamEncoderFusionCycle(nn.Module):
    """SLAM v1 EF cycle: windows alternate between block A and block B; a token covered by several
    windows takes the mean of their outputs (DESIGN §3)."""

    def __init__(self, config, first_layer_idx: int, is_causal: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            [SlamWindowedLayer(config, first_layer_idx + b, is_causal=is_causal) for b in range(2)]
        )

    def forward(self, hidden_states, position_embeddings=None, window_plans=None, past_key_values=None, **kwargs):
        total = torch.zeros_like(hidden_states)
        count = hidden_states.new_zeros(hidden_states.shape[:2] + (1,))
        for block, plan in zip(self.blocks, window_plans):
            block_sum, block_count = block(
                hidden_states, position_embeddings, window_plan=plan, past_key_values=past_key_values
            )
            total, count = total + block_sum, count + block_count
        # Tokens no window covers are padding: pass them through unchanged instead of dividing by zero.
        return torch.where(count > 0, total / count.clamp(min=1), hidden_states)


__all__ = ["SlamEncoderFusionCycle", "SlamLayer", "SlamWindowedLayer"]
