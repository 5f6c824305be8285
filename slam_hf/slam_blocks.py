"""Transformer layers: the full-attention layer, the windowed layer of SLAM v1's EF blocks, SLAM v2's
cyclic segment fusion and its mixture-of-attention-experts layer."""

from dataclasses import dataclass

import torch
from torch import nn

from .slam_attention import SlamAttention, run_attention
from .slam_compat import GradientCheckpointingLayer
from .slam_grouped import ModuleLayers, StackedLayers, finish_grouped
from .slam_layers import SlamMLP, apply_rotary_pos_emb, make_norm
from .slam_moa import SlamMixtureOfAttention
from .slam_windows import SegmentPlan, WindowPlan


class SlamLayer(GradientCheckpointingLayer):
    """Attention + MLP with residuals; `norm_position` picks pre-norm or the published post-norm."""

    attention_class = SlamAttention

    def __init__(self, config, layer_idx: int | None, is_causal: bool = True):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = self.attention_class(config, layer_idx, is_causal=is_causal)
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

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        attn_output, _ = self.self_attn(self.attention_input(hidden_states), position_embeddings, attention_mask, cache)
        return self.finish(hidden_states, attn_output)


class SlamWindowedLayer(SlamLayer):
    """A layer that only attends inside its windows (an EF block), so attention costs O(L * w).

    Without a cache, a window's keys are exactly its own tokens: the normalised tokens are gathered into
    (batch * windows) short sequences and projected there. With a cache, Q/K/V are projected once per new
    token (they do not depend on the window: RoPE uses absolute positions), K/V go to this layer's cache
    slot, and each window gathers its keys from it. o_proj and the MLP run only on window slots that hold
    a real token. Returns per-token sums of the window outputs; the caller averages over all blocks of the
    cycle with the plans' `coverage`. (Only tensors computed here are returned: under reentrant gradient
    checkpointing an output that is a plan's own tensor never gets its backward replay.)
    """

    def forward(self, hidden_states, position_embeddings=None, window_plan: WindowPlan = None, cache=None):
        plan = window_plan
        normed = self.attention_input(hidden_states)

        def gather(states, index):  # (B, L, ...) -> (B * windows, window tokens, ...)
            return states[plan.batch_index, index].flatten(0, 1)

        if cache is None:
            if plan.num_windows == 0:
                return self._no_windows(hidden_states)
            window_positions = None
            if position_embeddings is not None:
                window_positions = tuple(gather(t, plan.query_slots) for t in position_embeddings)
            q, k, v = self.self_attn.project(gather(normed, plan.query_slots), window_positions)
        else:
            q, k, v = self.self_attn.project(normed, position_embeddings)
            k, v = cache.update(k, v, self.layer_idx)
            if plan.num_windows == 0:  # the cache still holds this block's K/V of every token
                return self._no_windows(hidden_states)
            # (B, heads, L, D) -> (B * windows, heads, window tokens, D)
            q = gather(q.transpose(1, 2), plan.query_slots).transpose(1, 2)
            k = gather(k.transpose(1, 2), plan.key_index).transpose(1, 2)
            v = gather(v.transpose(1, 2), plan.key_index).transpose(1, 2)

        attn_output, _ = self.self_attn.attend(q, k, v, plan.mask, implementation=plan.implementation)
        rows = plan.valid_rows
        residual = gather(hidden_states, plan.query_slots).flatten(0, 1)[rows]
        window_out = self.finish(residual, attn_output.flatten(0, 1)[rows])  # (real window slots, hidden)
        return plan.scatter_sum(window_out, hidden_states.shape[:2])

    @staticmethod
    def _no_windows(hidden_states):  # e.g. block B of a sequence that fits in the first window
        return torch.zeros_like(hidden_states)


class SlamEncoderFusionCycle(nn.Module):
    """SLAM v1 EF cycle: windows alternate between block A and block B; a token covered by several
    windows takes the mean of their outputs (DESIGN §3)."""

    def __init__(self, config, first_layer_idx: int, is_causal: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            [SlamWindowedLayer(config, first_layer_idx + b, is_causal=is_causal) for b in range(2)]
        )

    def forward(self, hidden_states, position_embeddings=None, window_plans=None, cache=None, **kwargs):
        total = torch.zeros_like(hidden_states)
        for block, plan in zip(self.blocks, window_plans):
            total = total + block(hidden_states, position_embeddings, window_plan=plan, cache=cache)
        count = sum(plan.coverage for plan in window_plans).to(hidden_states.dtype)  # (B, L, 1)
        # Tokens no window covers are padding: pass them through unchanged instead of dividing by zero.
        return torch.where(count > 0, total / count.clamp(min=1), hidden_states)


class SlamMoALayer(SlamLayer):
    """SLAM v2 Level 3: mixture of attention experts over the full sequence, then the MLP and norms.
    Returns (hidden states, router logits)."""

    attention_class = SlamMixtureOfAttention

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        attn_output, router_logits = self.self_attn(
            self.attention_input(hidden_states), position_embeddings, attention_mask, cache
        )
        return self.finish(hidden_states, attn_output), router_logits


@dataclass
class _SlotGroup:
    """Slots that run together, the layers that run them, input rows and projected Q/K/V (g, rows, heads, D)."""

    slots: list
    layers: object  # StackedLayers or ModuleLayers
    rows: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


class SlamCyclicFusion(GradientCheckpointingLayer):
    """SLAM v2 Level 2: `ef_num_blocks` blocks shared by all cycles; one call runs one cycle (DESIGN §4).

    In cycle c, segment s is processed by block (s + c) mod G on input h_s + x_s (its output of the previous
    stage plus its original embedded input) and attends only inside the segment. Segments sit in G slots
    (`SegmentPlan`, segment k in slot k mod G), so in cycle c block b takes slot (b - c) mod G. When every
    slot holds tokens, all blocks run as one batched computation (`StackedLayers`, built once per forward
    and passed to every cycle); otherwise (short inputs, decoding) only the occupied slots run, one block
    each. Cycle c writes its K/V to cache layer `first_layer_idx + c`.
    """

    def __init__(self, config, first_layer_idx: int, is_causal: bool = True):
        super().__init__()
        self.first_layer_idx = first_layer_idx
        self.blocks = nn.ModuleList([SlamLayer(config, None, is_causal=is_causal) for _ in range(config.ef_num_blocks)])
        self.pre_norm = config.norm_position == "pre"
        # False runs occupied slots one block at a time even when all are occupied (the reference path).
        self.batch_blocks = True

    def block_of_slot(self, slot: int, cycle: int) -> nn.Module:
        return self.blocks[(slot + cycle) % len(self.blocks)]

    def runs_batched(self, plan: SegmentPlan) -> bool:
        return self.batch_blocks and len(plan.active_slots) == plan.num_slots

    def stacked_layers(self, plan: SegmentPlan):
        """What the model builds once per forward for all cycles: stacked weights if they will be used."""
        return StackedLayers.try_build(list(self.blocks)) if self.runs_batched(plan) else None

    def forward(
        self,
        hidden_states,
        original_inputs,
        position_embeddings=None,
        cycle: int = 0,
        segment_plan: SegmentPlan = None,
        stacked_layers: StackedLayers | None = None,
        cache=None,
    ):
        plan = segment_plan
        num_blocks = len(self.blocks)
        if self.runs_batched(plan):  # block b takes slot (b - c) mod G
            slots = [(block - cycle) % num_blocks for block in range(num_blocks)]
            layers = stacked_layers or StackedLayers.try_build(list(self.blocks)) or ModuleLayers(list(self.blocks))
            groups = [(slots, layers)]
        else:
            groups = [([slot], ModuleLayers([self.block_of_slot(slot, cycle)])) for slot in plan.active_slots]
        inputs = hidden_states + original_inputs  # h_s + x_s
        groups = [self._project(plan, slots, layers, inputs, position_embeddings) for slots, layers in groups]
        if cache is not None:
            self._use_cache(plan, groups, hidden_states, cache, self.first_layer_idx + cycle)
        output = hidden_states  # padding sits in no segment and passes through unchanged
        for group in groups:
            output = plan.scatter(self._attend_and_finish(plan, group), group.slots, output)
        return output

    def _project(self, plan, slots, layers, inputs, position_embeddings) -> "_SlotGroup":
        """Q/K/V of the segments in `slots`: (g, B * m * q_len, heads, D)."""
        rows = plan.gather(inputs, slots)  # (g, B * m * q_len, hidden)
        normed = layers.norm("attn_norm", rows) if self.pre_norm else rows
        head_dim = self.blocks[0].self_attn.head_dim
        q, k, v = (
            layers.linear(f"self_attn.{name}", normed).unflatten(-1, (-1, head_dim))
            for name in ("q_proj", "k_proj", "v_proj")
        )
        if position_embeddings is not None:
            cos, sin = (plan.gather(t, slots) for t in position_embeddings)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, heads_dim=2)
        return _SlotGroup(slots, layers, rows, q, k, v)

    def _use_cache(self, plan, groups, hidden_states, cache, layer_idx):
        """Store this cycle's new K/V in token order (each token's from the one slot holding it), then give
        every segment its keys: the cached past of the segment plus its new tokens. With no group at all (nothing but
        padding in the batch) the cache still grows by the new (padding) positions, so later steps line up."""
        attention = self.blocks[0].self_attn
        kv_shape = (attention.num_key_value_heads, attention.head_dim)
        new_keys = hidden_states.new_zeros(*hidden_states.shape[:2], *kv_shape)  # (B, L, kv, D)
        new_values = torch.zeros_like(new_keys)
        for group in groups:
            new_keys = plan.scatter(group.k, group.slots, new_keys)
            new_values = plan.scatter(group.v, group.slots, new_values)
        keys, values = cache.update(new_keys.transpose(1, 2), new_values.transpose(1, 2), layer_idx)
        for group in groups:  # (B, kv, T, D) -> (g, B * m * k_len, kv, D)
            group.k = plan.gather(keys.transpose(1, 2), group.slots, keys=True)
            group.v = plan.gather(values.transpose(1, 2), group.slots, keys=True)

    def _attend_and_finish(self, plan, group):
        attention = self.blocks[0].self_attn
        segments = len(group.slots) * plan.token_index.shape[1] * plan.token_index.shape[2]  # g * B * m

        def split_segments(t):  # (g, B * m * tokens, heads, D) -> (g * B * m, heads, tokens, D)
            return t.reshape(segments, -1, *t.shape[2:]).transpose(1, 2)

        mask = None if plan.mask is None else plan.mask[group.slots].flatten(0, 1)
        q, k, v = split_segments(group.q), split_segments(group.k), split_segments(group.v)
        attn_output, _ = run_attention(attention, q, k, v, mask, plan.implementation)
        attn_output = attn_output.reshape(*group.rows.shape[:2], -1)  # (g, B * m * q_len, heads * D)
        output = group.layers.attention_output(attn_output)
        return finish_grouped(group.layers, group.rows, output, self.pre_norm, self.blocks[0].dropout)


__all__ = [
    "SlamCyclicFusion",
    "SlamEncoderFusionCycle",
    "SlamLayer",
    "SlamMoALayer",
    "SlamWindowedLayer",
]
