"""SLAM v3 vision tower (slam_hf/slam_vision.py): patches, 2D RoPE, blocks, projector and aux projector."""

import math

import pytest
import torch
from torch.nn import functional as F
from transformers import PretrainedConfig

from slam_hf.modeling_slam import SlamPreTrainedModel
from slam_hf.slam_layers import SlamRotaryEmbedding, apply_rotary_pos_emb
from slam_hf.slam_vision import (
    SlamAuxProjector,
    SlamPatchEmbedding,
    SlamRotaryEmbedding2D,
    SlamVisionTower,
    patch_grid_positions,
)


class TinyVisionConfig(PretrainedConfig):
    """Exactly the fields `SlamVisionTower` reads (see the slam_vision module docstring)."""

    model_type = "slam_vision_test"

    def __init__(
        self,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=37,
        mlp_type="geglu",
        norm_type="rmsnorm",
        norm_position="pre",
        norm_eps=1e-6,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        position_embedding_type="rope",
        rope_theta=10000.0,
        projector_type="mlp",
        text_hidden_size=24,
        initializer_range=0.02,
        **kwargs,
    ):
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.mlp_type = mlp_type
        self.norm_type = norm_type
        self.norm_position = norm_position
        self.norm_eps = norm_eps
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.projector_type = projector_type
        self.text_hidden_size = text_hidden_size
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


def make_config(attn_implementation="eager", **overrides):
    config = TinyVisionConfig(**overrides)
    config._attn_implementation = attn_implementation
    return config


class TinyVisionModel(SlamPreTrainedModel):
    """The tower inside a SlamPreTrainedModel, to exercise `_init_weights` and save / from_pretrained."""

    config_class = TinyVisionConfig
    _no_split_modules = ["SlamLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = SlamVisionTower(config)
        self.post_init()

    def get_input_embeddings(self):  # what activation checkpointing hooks to make inputs require grad
        return self.vision_tower.patch_embed

    def forward(self, pixel_values):
        return self.vision_tower(pixel_values)


VARIANTS = {
    "v3-default": {},
    "post-layernorm-gelu-mha-linear": dict(
        norm_type="layernorm", norm_position="post", mlp_type="gelu", num_key_value_heads=4, projector_type="linear"
    ),
    "swiglu-bias-no-rope": dict(mlp_type="swiglu", attention_bias=True, mlp_bias=True, position_embedding_type="none"),
}


# ---- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("height,width", [(8, 8), (8, 12), (16, 4)])
def test_output_shapes(variant, height, width):
    config = make_config(**VARIANTS[variant])
    tower = SlamVisionTower(config).eval()
    pixel_values = torch.randn(2, 3, height, width)
    out = tower(pixel_values)
    assert out.shape == (2, (height // 4) * (width // 4), config.text_hidden_size)
    assert torch.isfinite(out).all()


def test_explicit_text_hidden_size_overrides_config():
    tower = SlamVisionTower(make_config(), text_hidden_size=40)
    assert tower(torch.randn(1, 3, 8, 12)).shape == (1, 6, 40)


def test_batch_rows_are_independent():
    tower = SlamVisionTower(make_config()).eval()
    pixel_values = torch.randn(3, 3, 8, 12)
    batched = tower(pixel_values)
    single = torch.cat([tower(pixel_values[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_patch_embedding_is_a_strided_conv_in_row_major_order():
    config = make_config()
    embed = SlamPatchEmbedding(config)
    pixel_values = torch.randn(2, 3, 8, 12)
    weight = embed.patch_proj.weight.reshape(config.hidden_size, 3, 4, 4)  # a Conv2d kernel, as documented
    expected = F.conv2d(pixel_values, weight, embed.patch_proj.bias, stride=4)  # (B, hidden, 2, 3)
    expected = expected.flatten(2).transpose(1, 2)  # row-major patches
    torch.testing.assert_close(embed(pixel_values), expected, atol=1e-5, rtol=1e-5)


def test_image_grid_hw_is_checked():
    tower = SlamVisionTower(make_config()).eval()
    pixel_values = torch.randn(2, 3, 8, 12)
    assert tower(pixel_values, image_grid_hw=torch.tensor([[2, 3], [2, 3]])).shape == (2, 6, 24)
    with pytest.raises(ValueError, match="image_grid_hw"):
        tower(pixel_values, image_grid_hw=torch.tensor([[3, 2], [3, 2]]))
    with pytest.raises(ValueError, match="image_grid_hw"):
        tower(pixel_values, image_grid_hw=torch.tensor([[2, 3]]))


# ---- bad inputs and configs -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape",
    [(2, 3, 10, 8), (2, 3, 8, 10), (2, 1, 8, 8), (2, 4, 8, 8), (3, 8, 8), (2, 3, 0, 8), (2, 3, 2, 2)],
    ids=["height", "width", "1-channel", "4-channel", "3d", "empty", "smaller-than-patch"],
)
def test_bad_pixel_values_raise(shape):
    tower = SlamVisionTower(make_config())
    with pytest.raises(ValueError, match="pixel_values"):
        tower(torch.randn(*shape))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="head_dim divisible by 4"):
        SlamVisionTower(make_config(head_dim=6))
    with pytest.raises(ValueError, match="position_embedding_type"):
        SlamVisionTower(make_config(position_embedding_type="learned"))
    with pytest.raises(ValueError, match="projector_type"):
        SlamVisionTower(make_config(projector_type="conv"))


# ---- 2D RoPE --------------------------------------------------------------------------------------
def test_grid_positions_2x3():
    expected = [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert patch_grid_positions(2, 3).tolist() == expected


def test_rope_2d_matches_hand_written_angles():
    head_dim, theta = 8, 100.0
    rope = SlamRotaryEmbedding2D(head_dim, theta)
    cos, sin = rope(patch_grid_positions(2, 3)[None], torch.float64)
    assert cos.shape == sin.shape == (1, 6, head_dim)
    quarter = head_dim // 4
    for token, (row, col) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]):
        for pair in range(head_dim // 2):  # pair j rotates dimensions j and j + head_dim / 2
            if pair < quarter:  # first half of the pairs: the row
                angle = row * theta ** (-2 * pair / (head_dim / 2))
            else:  # second half: the column
                angle = col * theta ** (-2 * (pair - quarter) / (head_dim / 2))
            for dim in (pair, pair + head_dim // 2):
                assert cos[0, token, dim].item() == pytest.approx(math.cos(angle), abs=1e-6)
                assert sin[0, token, dim].item() == pytest.approx(math.sin(angle), abs=1e-6)


def _scores(rope, q, k, positions):
    # q, k: (1, heads, L, D); positions (L, 2) -> (heads, L, L) attention logits after RoPE.
    # The angles are float32 (as in the model), so equal offsets agree to ~1e-6, not to float64 precision.
    cos, sin = rope(positions[None], torch.float64)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return (q @ k.transpose(-1, -2))[0]


def test_rope_2d_score_depends_only_on_the_offset():
    rope = SlamRotaryEmbedding2D(16, 10000.0)
    q, k = torch.randn(2, 1, 2, 1, 16, dtype=torch.float64)
    pair = torch.tensor([[1, 2], [3, 0]])  # patches (1, 2) and (3, 0)
    base = _scores(rope, q, k, pair)
    for shift in ([0, 0], [5, 0], [0, 7], [4, 9], [-1, -2]):
        torch.testing.assert_close(_scores(rope, q, k, pair + torch.tensor(shift)), base, atol=1e-5, rtol=1e-5)
    # ...and it does depend on the offset, separately along rows and columns
    down_one = _scores(rope, q, k, torch.tensor([[0, 0], [1, 0]]))
    assert not torch.allclose(down_one, _scores(rope, q, k, torch.tensor([[0, 0], [0, 1]])), atol=1e-3)
    assert not torch.allclose(down_one, _scores(rope, q, k, torch.tensor([[0, 0], [2, 0]])), atol=1e-3)


def test_rope_2d_translation_of_a_2x3_grid():
    """The whole 2x3 score matrix is unchanged when the grid is moved anywhere in a larger image."""
    rope = SlamRotaryEmbedding2D(8, 10000.0)
    q, k = torch.randn(2, 1, 3, 6, 8, dtype=torch.float64)
    grid = patch_grid_positions(2, 3)
    base = _scores(rope, q, k, grid)
    for shift in ([1, 0], [0, 1], [3, 5]):
        torch.testing.assert_close(_scores(rope, q, k, grid + torch.tensor(shift)), base, atol=1e-5, rtol=1e-5)
    # swapping the grid's axes (a 3x2 layout of the same tokens) changes the scores
    assert not torch.allclose(_scores(rope, q, k, grid.flip(-1)), base, atol=1e-3)


def test_inv_freq_reset_matches_formula_and_init_weights_rebuilds_it():
    rope = SlamRotaryEmbedding2D(16, 500.0)
    assert isinstance(rope, SlamRotaryEmbedding)  # so SlamPreTrainedModel._init_weights handles it
    formula = torch.tensor([500.0 ** (-2 * k / 8) for k in range(4)])
    torch.testing.assert_close(rope.inv_freq, formula)
    torch.testing.assert_close(rope.reset_inv_freq(), formula)
    assert "inv_freq" not in rope.state_dict()  # non-persistent

    model = TinyVisionModel(make_config())
    buffer = model.vision_tower.rotary_emb.inv_freq
    buffer.fill_(float("nan"))
    model._init_weights(model.vision_tower.rotary_emb)
    torch.testing.assert_close(buffer, rope_formula(model.config))


def rope_formula(config):
    quarter = config.head_dim // 4
    return torch.tensor([config.rope_theta ** (-2 * k / (config.head_dim / 2)) for k in range(quarter)])


def test_save_and_from_pretrained_reproduce_the_tower(tmp_path):
    model = TinyVisionModel(make_config()).eval()
    pixel_values = torch.randn(2, 3, 8, 12)
    expected = model(pixel_values)
    model.save_pretrained(tmp_path)
    reloaded = TinyVisionModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    torch.testing.assert_close(reloaded.vision_tower.rotary_emb.inv_freq, rope_formula(model.config))
    torch.testing.assert_close(reloaded(pixel_values), expected)


# ---- training and backends ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_reaches_every_parameter(variant):
    tower = SlamVisionTower(make_config(**VARIANTS[variant])).train()
    tower(torch.randn(2, 3, 8, 12)).pow(2).mean().backward()
    for name, param in tower.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_eager_matches_sdpa(variant):
    eager = SlamVisionTower(make_config("eager", **VARIANTS[variant])).eval()
    sdpa = SlamVisionTower(make_config("sdpa", **VARIANTS[variant])).eval()
    sdpa.load_state_dict(eager.state_dict())
    pixel_values = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(sdpa(pixel_values), eager(pixel_values), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = TinyVisionModel(make_config()).train()
    pixel_values = torch.randn(2, 3, 8, 12)
    model(pixel_values).pow(2).mean().backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # 5.23 renamed gradient_checkpointing_enable (deprecated there); 5.10 only has the old name
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()
    model(pixel_values).pow(2).mean().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], msg=name)


def test_attention_is_bidirectional():
    """Changing the last patch changes the first patch's output (a causal mask would hide it)."""
    tower = SlamVisionTower(make_config()).eval()
    pixel_values = torch.randn(1, 3, 8, 12)
    changed = pixel_values.clone()
    changed[..., 4:, 8:] += 1.0  # the last patch (row 1, column 2)
    assert not torch.allclose(tower(pixel_values)[:, 0], tower(changed)[:, 0])


# ---- aux projector --------------------------------------------------------------------------------
def test_aux_projector_shapes_and_errors():
    projector = SlamAuxProjector(aux_dim=5, text_hidden_size=24)
    assert projector(torch.randn(2, 7, 5)).shape == (2, 7, 24)
    assert projector(torch.randn(2, 0, 5)).shape == (2, 0, 24)
    with pytest.raises(ValueError, match="aux_values"):
        projector(torch.randn(2, 7, 6))
    with pytest.raises(ValueError, match="aux_values"):
        projector(torch.randn(7, 5))
