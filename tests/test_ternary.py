"""BitNet b1.58 `TernaryLinear`: the published quantisation formulas, computed independently here; straight-through
gradients; an `nn.Linear` to PEFT."""

import copy
import pickle

import pytest
import torch
from torch import nn

from slam_hf.slam_ternary import (
    Int8TernaryLinear,
    TernaryLinear,
    onednn_int8_linear_available,
    pack_ternary,
    ternary_weight,
    unpack_ternary,
)


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


def uncompiled(function):
    """transformers decorates its BitNet helpers with torch.compile; the tests call the Python function itself."""
    return getattr(function, "_torchdynamo_orig_callable", function)


def test_packing_is_transformers_bitlinear_layout():
    from transformers.integrations import bitnet

    torch.manual_seed(3)
    weight_q = torch.randint(-1, 2, (24, 10)).float()
    packed = pack_ternary(weight_q)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 10)
    assert torch.equal(packed, uncompiled(bitnet.pack_weights)(weight_q.clone()))
    assert torch.equal(uncompiled(bitnet.unpack_weights)(packed, dtype=torch.float32), weight_q)
    assert torch.equal(unpack_ternary(packed), weight_q.to(torch.int8))


def test_packing_refuses_rows_that_do_not_fill_a_byte():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_ternary(torch.zeros(10, 8))


@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (2, 17, 64), (130, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_layer_equals_training_layer_bit_for_bit(shape, bias):
    """Integer-valued float products are exact, so `_int_mm` and the float path must agree to the last bit."""
    torch.manual_seed(4)
    layer = TernaryLinear(64, 40, bias=bias).eval()
    inputs = torch.randn(shape) * 3
    fast = Int8TernaryLinear.from_ternary_linear(layer)
    assert fast.int8_weight().dtype == torch.int8 and fast.int8_weight().shape == (64, 40)
    with torch.no_grad():
        assert torch.equal(fast(inputs), layer(inputs))


def test_int8_layer_from_transformers_bitlinear_equals_bitlinear():
    from transformers.integrations.bitnet import BitLinear, unpack_weights

    torch.manual_seed(5)
    layer = TernaryLinear(32, 16, bias=True).eval()
    weight_q, gamma = ternary_weight(layer.weight.detach())
    stock = BitLinear(32, 16, bias=True, dtype=torch.float32)
    stock.weight.copy_(pack_ternary(weight_q))
    stock.weight_scale.fill_(1 / gamma.item())
    stock.bias.copy_(layer.bias.detach())
    inputs = torch.randn(5, 32)
    # BitLinear's forward, its compiled helpers called uncompiled (same arithmetic, no compile time in the suite)
    activations_q, scale = uncompiled(BitLinear.activation_quant)(stock, inputs)
    product = nn.functional.linear(activations_q.float(), uncompiled(unpack_weights)(stock.weight, dtype=torch.float32))
    expected = product / (stock.weight_scale * scale) + stock.bias
    with torch.no_grad():
        assert torch.equal(Int8TernaryLinear.from_bitlinear(stock)(inputs), expected)
        assert torch.equal(layer(inputs), expected)


@pytest.mark.skipif(not onednn_int8_linear_available(), reason="this torch build has no oneDNN int8 linear")
def test_int8_layer_packs_large_weights_for_onednn_with_the_same_outputs():
    """Layers of at least `onednn_min_weights` run oneDNN's int8 linear on a weight packed once: the same outputs as
    the training layer bit for bit, 1 byte per weight, and .to(), deepcopy and pickle still work."""
    torch.manual_seed(6)
    layer = TernaryLinear(512, 2048, bias=True).eval()
    fast = Int8TernaryLinear.from_ternary_linear(layer)
    assert fast.packed_weight is not None and fast.weight_t is None
    assert torch.equal(fast.int8_weight(), ternary_weight(layer.weight.detach())[0].to(torch.int8).T)
    small = Int8TernaryLinear.from_ternary_linear(TernaryLinear(32, 64))
    assert small.packed_weight is None and small.weight_t is not None  # below onednn_min_weights: _int_mm
    inputs = torch.randn(2, 9, 512)
    with torch.no_grad():
        expected = layer(inputs)
        assert torch.equal(fast(inputs), expected)
        assert torch.equal(fast(inputs[:1, :1]), layer(inputs[:1, :1]))  # one row: decode
        assert torch.equal(copy.deepcopy(fast)(inputs), expected)
        restored = pickle.loads(pickle.dumps(fast))
        assert restored.packed_weight is not None and torch.equal(restored(inputs), expected)
        moved = copy.deepcopy(fast).to(torch.float64)  # unpacked for the move, packed again on the CPU
        assert moved.packed_weight is not None and moved.weight_scale.dtype == torch.float64


def test_int8_layer_falls_back_to_int_mm_when_packing_is_not_exact(monkeypatch):
    """A packed product that differs from `_int_mm` on the probe (an op whose meaning changed) is not used."""
    monkeypatch.setattr(Int8TernaryLinear, "_onednn_product", lambda self, x, packed: torch.zeros(1))
    layer = TernaryLinear(512, 2048).eval()
    fast = Int8TernaryLinear.from_ternary_linear(layer)
    assert fast.packed_weight is None
    with torch.no_grad():
        assert torch.equal(fast(torch.ones(3, 512)), layer(torch.ones(3, 512)))
