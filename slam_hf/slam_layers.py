"""Generic building blocks shared by every SLAM variant (DESIGN §2): norms, MLPs, positions.

Each block is chosen in `__init__` from config data; `forward` holds no structural branching.
Projections are built through `make_linear` by name, so BitNet b1.58's `TernaryLinear` (an `nn.Linear` subclass)
replaces the ones a config names without touching the blocks, and PEFT keeps matching them by name.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .slam_ternary import TernaryLinear


def is_ternary(config, name: str) -> bool:
    """Whether the projection `name` (q_proj, down_proj, ...) is BitNet b1.58 ternary under `config`; configs
    without the ternary fields (the vision tower's) are full precision."""
    return name in getattr(config, "ternary_projections", ())


def make_linear(config, in_features: int, out_features: int, bias: bool, name: str) -> nn.Linear:
    """The projection `name`: `nn.Linear`, or BitNet b1.58's `TernaryLinear` (an `nn.Linear` subclass, so PEFT and
    checkpoints see a linear layer) when the config's `ternary_projections` include `name`."""
    linear_class = TernaryLinear if is_ternary(config, name) else nn.Linear
    return linear_class(in_features, out_features, bias=bias)


def make_sub_norm(config, width: int, name: str) -> nn.Module:
    """BitNet's SubLN in front of the ternary projection `name` (an RMSNorm over its input), else the identity (no
    parameters, so a full-precision checkpoint keeps its keys)."""
    if getattr(config, "ternary_subln", False) and is_ternary(config, name):
        return SlamRMSNorm(width, eps=config.norm_eps)
    return nn.Identity()


def rms_normalize(hidden_states: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32 at least: bf16 squares lose too much precision.
    dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.promote_types(dtype, torch.float32))
    return (hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


class SlamRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalize(hidden_states, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def make_norm(config) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return SlamRMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


class SlamMLP(nn.Module):
    """gelu: down(gelu(up x)); geglu / swiglu: down(act(gate x) * up x), with Llama projection names."""

    def __init__(self, config):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gated = config.mlp_type in ("geglu", "swiglu")
        if self.gated:
            self.gate_proj = make_linear(config, hidden, inner, bias, "gate_proj")
        self.up_proj = make_linear(config, hidden, inner, bias, "up_proj")
        self.ffn_sub_norm = make_sub_norm(config, inner, "down_proj")
        self.down_proj = make_linear(config, inner, hidden, bias, "down_proj")
        self.act_fn = F.silu if config.mlp_type == "swiglu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.ffn_sub_norm(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))
        return self.down_proj(self.ffn_sub_norm(self.act_fn(self.up_proj(x))))


def rope_inverse_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


class SlamRotaryEmbedding(nn.Module):
    """1D RoPE: (cos, sin) for arbitrary integer positions; no length limit.

    `inv_freq` is a non-persistent buffer, so `SlamPreTrainedModel._init_weights` recomputes it after
    a meta-device `from_pretrained` (otherwise it would hold uninitialised memory).
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, theta), persistent=False)

    def reset_inv_freq(self):
        return rope_inverse_frequencies(self.head_dim, self.theta, device=self.inv_freq.device)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, L) -> cos, sin: (B, L, head_dim), computed in float32 for long sequences
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads_dim: int = 1):
    # q, k: (B, heads, L, head_dim) with cos, sin: (B, L, head_dim); `heads_dim` = where q and k keep their heads
    cos, sin = cos.unsqueeze(heads_dim), sin.unsqueeze(heads_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


__all__ = [
    "SlamMLP",
    "SlamRMSNorm",
    "SlamRotaryEmbedding",
    "apply_rotary_pos_emb",
    "is_ternary",
    "make_linear",
    "make_sub_norm",
    "make_norm",
    "rms_normalize",
    "rope_inverse_frequencies",
]
