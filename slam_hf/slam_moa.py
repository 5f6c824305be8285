"""Mixture of attention experts (MoA), the Level-3 layer of SLAM v2 (DESIGN §4).

Every expert has its own query and output projection; all experts share one key and value projection.
A router sends each token to its top-k experts; the token's output is the gate-weighted sum of those
experts' attention outputs. Because K/V are shared, the k routed queries of a token are simply extra
query heads over the same keys: one dense attention call serves all experts, and only the q/o
projections are sparse (each token passes through exactly k of them).

Under torch.compile / torch.export (`is_tracing()`) the per-expert token counts cannot size the dispatch (they are
data), so every expert projects every routed slot and each slot keeps its own expert's result: the same values
for num_experts times the q/o projection work.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .slam_attention import SlamAttentionBase, run_attention
from .slam_compat import is_tracing
from .slam_layers import apply_rotary_pos_emb, make_linear, make_sub_norm


class SlamAttentionExpert(nn.Module):
    """One attention expert: `q_proj` and `o_proj` (plain `nn.Linear`, so PEFT can target them)."""

    def __init__(self, config, width: int):
        super().__init__()
        self.q_proj = make_linear(config, config.hidden_size, width, config.attention_bias, "q_proj")
        self.o_proj = make_linear(config, width, config.hidden_size, config.attention_bias, "o_proj")


class SlamMixtureOfAttention(SlamAttentionBase):
    """Top-k routed attention experts with shared K/V.

    Returns the attention output and the router logits (B, L, experts). `moa_top_k = moa_num_experts`
    is the dense softmax mixture of all experts.
    """

    def __init__(self, config, layer_idx: int, is_causal: bool = True):
        super().__init__(config, layer_idx, config.head_dim**-0.5, is_causal)
        self.head_dim = config.head_dim
        self.num_experts = config.moa_num_experts
        self.top_k = config.moa_top_k
        self.expert_heads = config.moa_expert_heads
        self.num_key_value_heads = config.moa_key_value_heads
        self.kv_groups = self.expert_heads // self.num_key_value_heads
        # Read by the attention kernels: query heads per K/V head over all routed experts of a token.
        self.num_key_value_groups = self.top_k * self.kv_groups
        self.use_rope = config.position_embedding_type == "rope"
        hidden, bias = config.hidden_size, config.attention_bias
        self.router = nn.Linear(hidden, self.num_experts, bias=False)
        self.k_proj = make_linear(config, hidden, self.num_key_value_heads * self.head_dim, bias, "k_proj")
        self.v_proj = make_linear(config, hidden, self.num_key_value_heads * self.head_dim, bias, "v_proj")
        self.experts = nn.ModuleList(
            [SlamAttentionExpert(config, self.expert_heads * self.head_dim) for _ in range(self.num_experts)]
        )
        self.attn_sub_norm = make_sub_norm(config, self.expert_heads * self.head_dim, "o_proj")

    def route(self, hidden_states):
        """Router logits (B, L, E), and per token the top-k experts (B, L, k) with renormalised gates."""
        router_logits = self.router(hidden_states)
        probabilities = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        gates, experts = probabilities.topk(self.top_k, dim=-1)
        gates = gates / gates.sum(-1, keepdim=True)
        return router_logits, experts, gates.to(hidden_states.dtype)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        batch, length, _ = hidden_states.shape
        k, kv_heads, groups, head_dim = self.top_k, self.num_key_value_heads, self.kv_groups, self.head_dim
        router_logits, experts, gates = self.route(hidden_states)

        assignment = experts.flatten()  # (B * L * k,)
        tracing = is_tracing()
        if tracing:  # no data-dependent split: all experts on every slot, in (token, slot) order
            slot_inputs = hidden_states[:, :, None].expand(-1, -1, k, -1).flatten(0, 2)  # (B * L * k, hidden)
            queries = self._every_expert("q_proj", slot_inputs, assignment)
        else:
            # Sort the (token, slot) assignments by expert, so each expert runs one matmul on its tokens.
            order = assignment.argsort(stable=True)
            restore = order.argsort()
            counts = torch.bincount(assignment, minlength=self.num_experts).tolist()
            used = [e for e, count in enumerate(counts) if count]  # skip idle experts (most of them while decoding)
            tokens = hidden_states.flatten(0, 1)[order // k].split(counts)
            queries = torch.cat([self.experts[e].q_proj(tokens[e]) for e in used])[restore]
        # (B * L * k, heads * D) -> (B, kv_heads * k * groups, L, D): the k routed queries of a token become
        # query heads, ordered so that attention kernels pair each with its shared K/V head.
        q = queries.view(batch, length, k, kv_heads, groups, head_dim)
        q = q.permute(0, 3, 2, 4, 1, 5).reshape(batch, kv_heads * k * groups, length, head_dim)
        key = self.k_proj(hidden_states).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        if self.use_rope:
            q, key = apply_rotary_pos_emb(q, key, *position_embeddings)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        output, _ = run_attention(self, q, key, value, attention_mask)
        # (B, L, kv_heads * k * groups, D) -> (B * L * k, expert width), back in (token, slot) order
        output = output.reshape(batch, length, kv_heads, k, groups, head_dim).permute(0, 1, 3, 2, 4, 5)
        output = self.attn_sub_norm(output.reshape(batch * length * k, -1))  # per token: equal before or after routing
        if tracing:
            expert_outputs = self._every_expert("o_proj", output, assignment)
        else:
            output = output[order].split(counts)
            expert_outputs = torch.cat([self.experts[e].o_proj(output[e]) for e in used])[restore]
        expert_outputs = expert_outputs.view(batch, length, k, -1)
        return (expert_outputs * gates[..., None]).sum(2), router_logits

    def _every_expert(self, name, rows, assignment):
        """rows (N, in) -> (N, out): row i through `name` of expert assignment[i], with static shapes (tracing).

        Every expert projects every row and each row keeps its expert's result: the values of the dispatch in
        `forward`, without sizes that depend on the routing."""
        outputs = torch.stack([getattr(expert, name)(rows) for expert in self.experts])  # (E, N, out)
        return outputs[assignment, torch.arange(rows.shape[0], device=rows.device)]


def load_balancing_loss(router_logits: torch.Tensor, top_k: int, token_mask: torch.Tensor | None = None):
    """Switch-Transformer balancing loss: num_experts * sum_e (share of routed slots_e * mean gate prob_e).

    router_logits: (N, E); token_mask: (N,) bool, True for real tokens (padding does not count).
    It equals 1 for perfectly balanced routing and grows as routing concentrates on a few experts.
    """
    if token_mask is not None and is_tracing():
        return _masked_load_balancing_loss(router_logits, top_k, token_mask)
    if token_mask is not None:
        router_logits = router_logits[token_mask]
    num_experts = router_logits.shape[-1]
    if router_logits.shape[0] == 0:
        return router_logits.new_zeros((), dtype=torch.float32)
    probabilities = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    chosen = probabilities.topk(top_k, dim=-1).indices
    routed_share = F.one_hot(chosen, num_experts).float().sum(1).mean(0) / top_k  # (E,), sums to 1
    return num_experts * (routed_share * probabilities.mean(0)).sum()


def _masked_load_balancing_loss(router_logits, top_k, token_mask):
    """`load_balancing_loss` with padding weighted out instead of removed (a boolean index has a data-dependent
    size, which torch.compile / torch.export cannot trace): means over the real tokens, 0 when there are none."""
    num_experts = router_logits.shape[-1]
    weights = token_mask.float()[:, None]  # (N, 1)
    count = weights.sum()
    probabilities = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    chosen = F.one_hot(probabilities.topk(top_k, dim=-1).indices, num_experts).float().sum(1)  # (N, E)
    routed_share = (chosen * weights).sum(0) / (count.clamp(min=1) * top_k)
    mean_probability = (probabilities * weights).sum(0) / count.clamp(min=1)
    loss = num_experts * (routed_share * mean_probability).sum()
    return torch.where(count > 0, loss, loss.new_zeros(()))


__all__ = ["SlamAttentionExpert", "SlamMixtureOfAttention", "load_balancing_loss"]
