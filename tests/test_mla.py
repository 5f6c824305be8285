"""SlamLatentAttention (MLA, DESIGN §5): latent cache layout, cached == uncached, absorbed == expanded, masks."""

import pytest
import torch
from transformers import PretrainedConfig

from slam_hf.slam_compat import DynamicCache
from slam_hf.slam_layers import SlamRotaryEmbedding
from slam_hf.slam_mla import SlamLatentAttention

B, L = 2, 7


def mla_config(**overrides):
    """The fields SlamV3Config will provide, small; nope != v != rope so a swapped split fails loudly."""
    fields = dict(
        hidden_size=32,
        num_attention_heads=4,
        kv_lora_rank=12,
        q_lora_rank=None,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=6,
        attention_bias=False,
        norm_eps=1e-6,
        attention_dropout=0.0,
    )
    fields.update(overrides)
    config = PretrainedConfig()  # a real config: older peft calls `model.config.get`
    for name, value in fields.items():
        setattr(config, name, value)
    config._attn_implementation = "eager"
    return config


def make_layer(absorb="auto", **overrides):
    layer = SlamLatentAttention(mla_config(**overrides), layer_idx=0, absorb=absorb).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped term shows up
        for name, param in layer.named_parameters():
            if "layernorm" in name or name.endswith("bias"):
                param.add_(0.3 * torch.randn_like(param))
    return layer


def rope(layer, positions):
    return SlamRotaryEmbedding(layer.qk_rope_head_dim, theta=10000.0)(positions, torch.float32)


def padded_mask(pad, length):
    """Float (B, 1, L, L) mask as transformers builds it: causal plus `pad[b]` left-padding keys."""
    keep = torch.ones(len(pad), length, dtype=torch.bool)
    for b, p in enumerate(pad):
        keep[b, :p] = False
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & keep[:, None, :]
    mask = torch.zeros(len(pad), 1, length, length).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    return mask, keep


def positions_for(keep):
    return (keep.long().cumsum(-1) - 1).clamp(min=0)  # left padding: first real token at position 0


def decode(layer, x, mask, positions):
    """Token by token through a DynamicCache; the mask row of step t, sliced to the t + 1 keys seen so far."""
    cache, outs = DynamicCache(), []
    for t in range(x.shape[1]):
        step_mask = None if mask is None else mask[:, :, t : t + 1, : t + 1]
        out, _ = layer(x[:, t : t + 1], rope(layer, positions[:, t : t + 1]), step_mask, cache=cache)
        outs.append(out)
    return torch.cat(outs, dim=1), cache


def test_cache_holds_compressed_latent():
    layer = make_layer()
    x = torch.randn(B, L, 32)
    cache = DynamicCache()
    layer(x, rope(layer, torch.arange(L).expand(B, L)), None, cache=cache)
    layer(x[:, :1], rope(layer, torch.full((B, 1), L)), None, cache=cache)
    keys, values = cache.layers[0].keys, cache.layers[0].values
    assert keys.shape == (B, 1, L + 1, 12) and values.shape == (B, 1, L + 1, 4)


@pytest.mark.parametrize("q_lora_rank", [None, 10])
@pytest.mark.parametrize("absorb", [False, True, "auto"])
def test_decode_matches_full_forward(q_lora_rank, absorb):
    layer = make_layer(absorb=absorb, q_lora_rank=q_lora_rank)
    x = torch.randn(B, L, 32)
    positions = torch.arange(L).expand(B, L)
    with torch.no_grad():
        full, _ = layer(x, rope(layer, positions), None)
        stepped, _ = decode(layer, x, None, positions)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_lora_rank", [None, 10])
@pytest.mark.parametrize("attention_bias", [False, True])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_absorbed_matches_expanded_with_left_padding(q_lora_rank, attention_bias, implementation):
    expanded = make_layer(absorb=False, q_lora_rank=q_lora_rank, attention_bias=attention_bias)
    expanded.config._attn_implementation = implementation
    absorbed = make_layer(absorb=True, q_lora_rank=q_lora_rank, attention_bias=attention_bias)
    absorbed.load_state_dict(expanded.state_dict())
    absorbed.config._attn_implementation = implementation
    x = torch.randn(B, L, 32)
    mask, keep = padded_mask([0, 3], L)
    cos_sin = rope(expanded, positions_for(keep))
    with torch.no_grad():
        reference, _ = expanded(x, cos_sin, mask)
        prefill, _ = absorbed(x, cos_sin, mask)
        stepped, _ = decode(absorbed, x, mask, positions_for(keep))
        stepped_expanded, _ = decode(expanded, x, mask, positions_for(keep))
    for out in (prefill, stepped, stepped_expanded):  # padded query rows are garbage by contract
        torch.testing.assert_close(out[keep], reference[keep], atol=1e-4, rtol=1e-4)


def test_causal():
    for absorb in (False, True):
        layer = make_layer(absorb=absorb)
        x = torch.randn(B, L, 32)
        changed = x.clone()
        changed[:, 4:] = torch.randn(B, L - 4, 32)
        cos_sin = rope(layer, torch.arange(L).expand(B, L))
        with torch.no_grad():
            before, after = layer(x, cos_sin, None)[0], layer(changed, cos_sin, None)[0]
        torch.testing.assert_close(after[:, :4], before[:, :4], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(after[:, 4:], before[:, 4:])


@pytest.mark.parametrize("absorb", [False, True])
def test_eager_matches_sdpa(absorb):
    layer = make_layer(absorb=absorb, q_lora_rank=10)
    x = torch.randn(B, L, 32)
    cos_sin = rope(layer, torch.arange(L).expand(B, L))
    mask, keep = padded_mask([0, 2], L)
    with torch.no_grad():
        for attention_mask in (None, mask, mask == 0):  # plain causal, float, boolean
            layer.config._attn_implementation = "eager"
            eager, _ = layer(x, cos_sin, attention_mask)
            layer.config._attn_implementation = "sdpa"
            sdpa, _ = layer(x, cos_sin, attention_mask)
            torch.testing.assert_close(sdpa[keep], eager[keep], atol=1e-5, rtol=1e-5)


def test_auto_absorbs_only_short_inference_blocks():
    layer = make_layer(kv_lora_rank=256, qk_nope_head_dim=64, v_head_dim=64, hidden_size=64)
    assert layer.use_absorption(1) and layer.use_absorption(64) and not layer.use_absorption(512)
    assert not layer.train().use_absorption(1)


def test_lora_targets_and_absorbs_through_adapter():
    peft = pytest.importorskip("peft")
    layer = make_layer(absorb=False, q_lora_rank=None)
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "kv_b_proj", "o_proj"])
    layer = peft.inject_adapter_in_model(lora, layer)
    wrapped = {n for n, m in layer.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped == {"q_proj", "kv_b_proj", "o_proj"}
    with torch.no_grad():  # a non-zero adapter, so the absorbed path must see the LoRA delta of kv_b_proj
        for name, param in layer.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    x = torch.randn(B, L, 32)
    cos_sin = rope(layer, torch.arange(L).expand(B, L))
    with torch.no_grad():
        expanded, _ = layer(x, cos_sin, None)
        layer.absorb = True
        absorbed, _ = layer(x, cos_sin, None)
    torch.testing.assert_close(absorbed, expanded, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("q_lora_rank", [None, 10])
@pytest.mark.parametrize("absorb", ["auto", True])
def test_gradient_reaches_every_parameter(q_lora_rank, absorb):
    layer = make_layer(absorb=absorb, q_lora_rank=q_lora_rank, attention_bias=True).train()
    x = torch.randn(B, L, 32)
    out, _ = layer(x, rope(layer, torch.arange(L).expand(B, L)), None)
    out.square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if absorb is True:  # absorbed: the key bias of kv_b_proj cancels in softmax, so only its value half gets grad
        key_bias_grad = layer.kv_b_proj.bias.grad.view(layer.num_heads, -1)[:, : layer.qk_nope_head_dim]
        assert key_bias_grad.abs().sum() == 0
        missing = [n for n in missing if n != "kv_b_proj.bias"]
    assert not missing


@pytest.mark.parametrize(
    "field, value",
    [("qk_rope_head_dim", 5), ("kv_lora_rank", 0), ("qk_nope_head_dim", None), ("v_head_dim", -1), ("q_lora_rank", 0)],
)
def test_invalid_dims_raise(field, value):
    with pytest.raises(ValueError, match=field):
        SlamLatentAttention(mla_config(**{field: value}), layer_idx=0)
