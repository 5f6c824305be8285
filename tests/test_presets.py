"""Preset configs (slam_hf/preset_configs): every variant x size builds, sizes grow, overrides are validated."""

import pytest
import torch
from transformers import AutoModel

from slam_hf import SlamLoopConfig, SlamV1Config, SlamV2Config, SlamV3Config
from slam_hf.presets import PRESET_SIZES, PRESET_VARIANTS, load_preset, preset_path

CONFIG_CLASSES = {
    "slam_v1": SlamV1Config,
    "slam_v2": SlamV2Config,
    "slam_v3": SlamV3Config,
    "slam_loop": SlamLoopConfig,
}


def parameter_count(config) -> int:
    with torch.device("meta"):  # no memory, no init: only the shapes are built
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", PRESET_VARIANTS)
def test_presets_build_and_grow(variant):
    counts = []
    for size in PRESET_SIZES:
        config = load_preset(variant, size)
        assert type(config) is CONFIG_CLASSES[variant]
        assert config.vocab_size == 8192 and config.norm_position == "pre"
        counts.append(parameter_count(config))
    assert counts == sorted(counts) and len(set(counts)) == 3, counts
    # tiny trains on a CPU in minutes; base is BERT-base territory
    assert counts[0] < 5_000_000 and counts[2] > 50_000_000, counts


def test_small_is_the_published_test_shape():
    config = load_preset("slam_v2", "small")
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (512, 16, 2048)


def test_loop_presets_are_prelude_core_coda_decoders():
    """slam_loop: small is the suggested test shape (prelude 1, core 4, coda 1, 4 iterations at hidden 512); base
    loops 6 of its 10 layers; every size keeps the description's defaults (GQA, GeGLU, RoPE, confidence exit)."""
    shapes = {}
    for size in PRESET_SIZES:
        config = load_preset("slam_loop", size)
        shapes[size] = (config.hidden_size, config.prelude_layers, config.core_layers, config.coda_layers)
        assert config.loop_max_iterations == 4 and config.loop_cache == "per_iteration"
        assert config.num_key_value_heads < config.num_attention_heads and config.mlp_type == "geglu"
        assert config.position_embedding_type == "rope" and config.loop_exit_criterion == "confidence"
        slots = config.prelude_layers + 4 * config.core_layers + config.coda_layers
        assert config.num_hidden_layers == len(config.layer_schedule) == slots
    assert shapes == {"tiny": (128, 1, 2, 1), "small": (512, 1, 4, 1), "base": (768, 2, 6, 2)}
    base = parameter_count(load_preset("slam_loop", "base"))
    assert 80_000_000 < base < 110_000_000, base  # a ~100M decoder
    assert load_preset("slam_loop", "tiny", loop_max_iterations=2).num_hidden_layers == 1 + 2 * 2 + 1


def test_overrides_apply_and_are_validated():
    assert load_preset("slam_v1", "tiny", ef_cycles=3).num_hidden_layers == 2 + 2 * 3
    with pytest.raises(ValueError, match="ef_segment_overlap"):
        load_preset("slam_v1", "tiny", ef_segment_overlap=64)
    with pytest.raises(ValueError, match="loop_sampling_mean"):
        load_preset("slam_loop", "tiny", loop_sampling_mean=9.0)


def test_unknown_variant_or_size_names_the_choices():
    with pytest.raises(ValueError, match="slam_v1, slam_v2, slam_v3, slam_loop"):
        preset_path("slam_v9", "tiny")
    with pytest.raises(ValueError, match="tiny, small, base"):
        preset_path("slam_v1", "huge")
