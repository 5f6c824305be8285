"""One layer of several blocks as one batched computation: slot g of the input runs through block g.

SLAM v2 runs its four encoder-fusion blocks side by side. Their weights stay ordinary per-block modules
(`nn.Linear` with Llama names, so PEFT, quantisation and checkpoints see the usual layout); when every
module is a plain `nn.Linear` / norm, the weights are stacked and a slot-batched matmul (`bmm`) runs all
blocks at once. Anything else (a LoRA-wrapped or quantised projection, or a single block) is called as a
module, one block at a time, so its own forward, hooks and adapters apply. That includes accelerate's
offloading hooks, which load a module's weights only when the module itself is called.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .slam_layers import SlamRMSNorm, rms_normalize


def stackable(modules, kinds) -> bool:
    """Plain modules of one kind whose weights can be stacked: no subclass, adapter or hook of any kind."""
    kind = type(modules[0])
    return kind in kinds and all(
        type(m) is kind and not (m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook")) for m in modules
    )


def grouped_linear(linears, x: torch.Tensor) -> torch.Tensor:
    # x: (G, N, in) -> (G, N, out); slot g uses linears[g]
    if len(linears) == 1:
        return linears[0](x[0])[None]
    if not stackable(linears, (nn.Linear,)):
        return torch.stack([linear(x[g]) for g, linear in enumerate(linears)])
    weight = torch.stack([linear.weight for linear in linears]).transpose(1, 2)  # (G, in, out)
    if linears[0].bias is None:
        return torch.bmm(x, weight)
    bias = torch.stack([linear.bias for linear in linears])[:, None]  # (G, 1, out)
    return torch.baddbmm(bias, x, weight)


def grouped_norm(norms, x: torch.Tensor) -> torch.Tensor:
    # x: (G, N, hidden) -> (G, N, hidden)
    if len(norms) == 1 or not stackable(norms, (nn.LayerNorm, SlamRMSNorm)):
        return torch.stack([norm(x[g]) for g, norm in enumerate(norms)])
    weight = torch.stack([norm.weight for norm in norms])[:, None]  # (G, 1, hidden)
    if type(norms[0]) is SlamRMSNorm:
        return weight * rms_normalize(x, norms[0].eps)
    normed = F.layer_norm(x, norms[0].normalized_shape, eps=norms[0].eps) * weight
    if norms[0].bias is not None:
        normed = normed + torch.stack([norm.bias for norm in norms])[:, None]
    return normed


def grouped_mlp(mlps, x: torch.Tensor) -> torch.Tensor:
    if len(mlps) == 1:
        return mlps[0](x[0])[None]
    first = mlps[0]
    up = grouped_linear([mlp.up_proj for mlp in mlps], x)
    if first.gated:
        hidden = first.act_fn(grouped_linear([mlp.gate_proj for mlp in mlps], x)) * up
    else:
        hidden = first.act_fn(up)
    return grouped_linear([mlp.down_proj for mlp in mlps], hidden)


__all__ = ["grouped_linear", "grouped_mlp", "grouped_norm", "stackable"]
