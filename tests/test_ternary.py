"""BitNet b1.58 `TernaryLinear`: the published quantisation formulas, computed independently here; straight-through
gradients; an `nn.Linear` to PEFT."""

import torch
from torch import nn

from slam_hf.slam_ternary import TernaryLinear


def reference_output(layer, inputs):
    """y = (x_q @ W_q^T) * gamma / s_x + b with integer x_q, W_q (BitNet b1.58), in float64."""
    weight = layer.weight.double()
    gamma = weight.abs().mean().clamp(min=1e-5)
    weight_q = torch.clamp(torch.round(weight / gamma), -1, 1)
    x = inputs.double()
    scale = 127 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    x_q = torch.clamp(torch.round(x * scale), -128, 127)
    assert set(weight_q.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert x_q.abs().max() <= 128 and torch.equal(x_q, x_q.round())
    output = (x_q @ weight_q.T) * gamma / scale
    return output + layer.bias.double() if layer.bias is not None else output


def test_forward_is_the_bitnet_formula():
    torch.manual_seed(0)
    for bias in (False, True):
        layer = TernaryLinear(48, 20, bias=bias)
        inputs = torch.randn(3, 7, 48) * torch.linspace(0.01, 10, 7)[None, :, None]  # per-token ranges differ
        output = layer(inputs)
        expected = reference_output(layer, inputs).float()
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(output, nn.functional.linear(inputs, layer.weight, layer.bias), atol=1e-3)


def test_three_weight_levels_and_eval_equals_train():
    torch.manual_seed(1)
    layer = TernaryLinear(32, 16)
    inputs = torch.randn(2, 5, 32)
    gamma = layer.weight.abs().mean()
    effective = torch.autograd.functional.jacobian(lambda x: layer(x), inputs[:1, :1])  # d y / d x_deq = W_eff
    levels = effective.reshape(16, 32).unique()
    assert len(levels) <= 3 and torch.allclose(levels.abs().max(), gamma)
    assert torch.equal(layer.train()(inputs), layer.eval()(inputs))


def test_straight_through_gradients():
    """The roundings pass gradients through unchanged: dL/dW = g^T x_deq, dL/dx = g W_deq (as for a linear layer
    whose weight and input were the dequantised values)."""
    torch.manual_seed(2)
    layer = TernaryLinear(24, 12, bias=True)
    inputs = torch.randn(4, 24, requires_grad=True)
    upstream = torch.randn(4, 12)
    (layer(inputs) * upstream).sum().backward()

    weight = layer.weight.detach()
    gamma = weight.abs().mean()
    weight_deq = (weight / gamma).round().clamp(-1, 1) * gamma
    scale = 127 / inputs.detach().abs().amax(-1, keepdim=True)
    inputs_deq = (inputs.detach() * scale).round().clamp(-128, 127) / scale
    torch.testing.assert_close(layer.weight.grad, upstream.T @ inputs_deq)
    torch.testing.assert_close(inputs.grad, upstream @ weight_deq)
    torch.testing.assert_close(layer.bias.grad, upstream.sum(0))


def test_is_an_nn_linear_that_peft_wraps():
    from peft import LoraConfig, get_peft_model

    model = nn.Sequential()
    model.add_module("q_proj", TernaryLinear(16, 16))
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    lora_layer = wrapped.base_model.model.q_proj
    assert isinstance(lora_layer.base_layer, TernaryLinear)
    assert wrapped(torch.randn(2, 16)).shape == (2, 16)
