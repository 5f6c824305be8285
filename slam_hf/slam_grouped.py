"""The layers of several blocks applied slot-wise: slot g of a (G, N, ...) input runs through block g.

SLAM v2 runs its four encoder-fusion blocks side by side. The blocks stay ordinary modules (`nn.Linear`
with Llama names, so PEFT, quantisation and checkpoints see the usual layout). `StackedLayers` stacks
their weights once per forward and runs every layer of all blocks as one batched matmul (`bmm`);
`ModuleLayers` offers the same calls but runs each block's own modules, one slot at a time, so adapters,
quantised layers, forward hooks and accelerate's offloading hooks (which load a module's weights only
when the module itself is called) all apply.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .slam_layers import SlamRMSNorm, rms_normalize

NORM_NAMES = ("attn_norm", "mlp_norm")
LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_NAMES = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def is_plain(module, kinds) -> bool:
    """Exactly one of `kinds` (no subclass or adapter wrapper) and no hook of any kind."""
    return type(module) in kinds and not (
        module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook")
    )


class ModuleLayers:
    """Slot g through block g's own modules (any module type, hooks included)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def _apply(self, name, x):
        return torch.stack([block.get_submodule(name)(x[g]) for g, block in enumerate(self.blocks)])

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._apply(name, x)

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._apply(name, x)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply("mlp", x)

    def attention_output(self, x: torch.Tensor) -> torch.Tensor:
        """o_proj after BitNet's SubLN (`attn_sub_norm`: the identity unless o_proj is ternary)."""
        return self.linear("self_attn.o_proj", self._apply("self_attn.attn_sub_norm", x))


class StackedLayers:
    """All blocks at once: weights stacked along a leading block axis, one `bmm` per layer.

    Build it once per forward (`try_build`) and share it by every cycle: the stacks are then made, and
    kept for the backward pass, once instead of once per cycle.
    """

    def __init__(self, blocks):
        first = blocks[0]
        self.gated = first.mlp.gated
        self.act_fn = first.mlp.act_fn
        self.norm_kind = type(first.attn_norm)
        self.norm_eps = first.attn_norm.eps
        self.weights = {}  # name -> (weight (G, in, out), bias (G, 1, out) or None)
        for name in LINEAR_NAMES + MLP_NAMES[(0 if self.gated else 1) :]:
            modules = [block.get_submodule(name) for block in blocks]
            bias = None if modules[0].bias is None else torch.stack([m.bias for m in modules])[:, None]
            self.weights[name] = (torch.stack([m.weight for m in modules]).transpose(1, 2), bias)
        for name in NORM_NAMES:
            modules = [block.get_submodule(name) for block in blocks]
            bias = getattr(modules[0], "bias", None)
            bias = None if bias is None else torch.stack([m.bias for m in modules])[:, None]
            self.weights[name] = (torch.stack([m.weight for m in modules])[:, None], bias)

    @classmethod
    def try_build(cls, blocks):
        """A `StackedLayers` if every layer of every block is a plain module of one configuration, else None."""
        first = blocks[0]
        linears = LINEAR_NAMES + MLP_NAMES[(0 if first.mlp.gated else 1) :]
        plain = all(is_plain(b.get_submodule(n), (nn.Linear,)) for b in blocks for n in linears) and all(
            is_plain(b.get_submodule(n), (nn.LayerNorm, SlamRMSNorm))
            and type(b.get_submodule(n)) is type(first.attn_norm)
            for b in blocks
            for n in NORM_NAMES
        )
        return cls(blocks) if plain and all(is_plain(b.mlp, (type(first.mlp),)) for b in blocks) else None

    def attention_output(self, x: torch.Tensor) -> torch.Tensor:
        # plain layers only: a SubLN exists only in front of a ternary o_proj, which is not plain
        return self.linear("self_attn.o_proj", x)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # x: (G, N, in) -> (G, N, out)
        weight, bias = self.weights[name]
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weights[name]
        if self.norm_kind is SlamRMSNorm:
            return weight * rms_normalize(x, self.norm_eps)
        normed = F.layer_norm(x, x.shape[-1:], eps=self.norm_eps) * weight
        return normed if bias is None else normed + bias

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        up = self.linear("mlp.up_proj", x)
        hidden = self.act_fn(self.linear("mlp.gate_proj", x)) * up if self.gated else self.act_fn(up)
        return self.linear("mlp.down_proj", hidden)


def finish_grouped(layers, residual, attn_output, pre_norm: bool, dropout: nn.Module) -> torch.Tensor:
    """`SlamLayer.finish` for slot-wise layers: residual, norms and MLP of every slot at once."""
    hidden_states = residual + dropout(attn_output)
    if pre_norm:
        return hidden_states + dropout(layers.mlp(layers.norm("mlp_norm", hidden_states)))
    hidden_states = layers.norm("attn_norm", hidden_states)
    return layers.norm("mlp_norm", hidden_states + dropout(layers.mlp(hidden_states)))


__all__ = ["ModuleLayers", "StackedLayers", "finish_grouped", "is_plain"]
