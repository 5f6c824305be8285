"""BitNet b1.58 ternary projections (DESIGN §2): `TernaryLinear`, an `nn.Linear` whose forward quantises on the fly.

The recipe of "The Era of 1-bit LLMs" (Ma et al., 2024), as transformers' `AutoBitLinear` computes it online:

    weights      gamma = mean(|W|)                       (per tensor, absmean)
                 W_q   = RoundClip(W / gamma, -1, 1)     in {-1, 0, 1}
    activations  s_x   = 127 / max(|x|)                  (per token, absmax over the features)
                 x_q   = Clip(Round(x * s_x), -128, 127) (int8 range)
    output       y     = (x_q @ W_q^T) * gamma / s_x (+ bias)

with gamma and max(|x|) floored at 1e-5. Training keeps full-precision master weights and passes gradients straight
through both roundings (the straight-through estimator: d RoundClip(v) / dv := 1), so `Trainer`, optimizers and
PEFT (which wraps any `nn.Linear` subclass) see an ordinary linear layer; evaluation runs the same quantised math.
"""

import torch
from torch import nn
from torch.nn import functional as F

WEIGHT_EPS = 1e-5  # floor of gamma = mean|W|
ACTIVATION_EPS = 1e-5  # floor of max|x| per token
ACTIVATION_MAX = 127  # int8: x_q in [-128, 127]


def ternary_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_q in {-1, 0, 1} as float, gamma): the per-tensor absmean quantisation of a weight, in float32."""
    weight = weight.float()
    gamma = weight.abs().mean().clamp(min=WEIGHT_EPS)
    return (weight / gamma).round().clamp(-1, 1), gamma


def int8_activations(hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q in [-128, 127] as float, s_x (..., 1)): the per-token absmax quantisation of activations, in float32."""
    hidden_states = hidden_states.float()
    scale = ACTIVATION_MAX / hidden_states.abs().amax(dim=-1, keepdim=True).clamp(min=ACTIVATION_EPS)
    return (hidden_states * scale).round().clamp(-ACTIVATION_MAX - 1, ACTIVATION_MAX), scale


def straight_through(value: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """`quantised` in the forward, the identity's gradient to `value` in the backward."""
    return value + (quantised.to(value.dtype) - value).detach()


class TernaryLinear(nn.Linear):
    """A linear layer with BitNet b1.58 ternary weights and int8 activations (see the module docstring).

    The parameters are an ordinary `nn.Linear`'s (full-precision `weight`, optional `bias`), so checkpoints, PEFT
    and optimizers treat it as one; only the forward differs. The product runs on the dequantised values
    (gamma * W_q and x_q / s_x), which equals the integer product rescaled, up to float rounding.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight_q, gamma = ternary_weight(self.weight)
        activations_q, scale = int8_activations(hidden_states)
        weight = straight_through(self.weight, weight_q * gamma)
        hidden_states = straight_through(hidden_states, activations_q / scale)
        return F.linear(hidden_states, weight, self.bias)


__all__ = ["TernaryLinear", "int8_activations", "straight_through", "ternary_weight"]
