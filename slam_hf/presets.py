"""Preset sizes of every SLAM variant: `slam_hf/preset_configs/<model_type>-<size>.json`, size tiny | small | base.

    config = load_preset("slam_v2", "small")          # a SlamV2Config
    model = AutoModelForCausalLM.from_config(config)

tiny is the shape the CLI configs train in minutes on a CPU; small is the published SLAM test shape (hidden 512,
16 heads, FFN 2048); base is BERT-base width (768, 12 heads, FFN 3072). All use the shipped 8192-token tokenizer,
pre-RMSNorm and a gated MLP. The latent loop (`slam_loop`) keeps its description's GQA and GeGLU and loops its core
up to 4 times: tiny 1 prelude + 2 core + 1 coda layers, small 1 + 4 + 1, base 2 + 6 + 2 (about 93M parameters, 28
layer applications at full depth). Keyword overrides are applied on top (`load_preset("slam_v1", "tiny",
ef_cycles=3)`).
Not remote code: nothing in the model files imports this module.
"""

import json
from pathlib import Path

PRESET_SIZES = ("tiny", "small", "base")
PRESET_VARIANTS = ("slam_v1", "slam_v2", "slam_v3", "slam_loop")


def preset_path(variant: str, size: str) -> Path:
    """The preset file, shipped inside the package (`slam_hf/preset_configs/`)."""
    if variant not in PRESET_VARIANTS:
        raise ValueError(f"Unknown SLAM variant {variant!r}; choose one of {', '.join(PRESET_VARIANTS)}.")
    if size not in PRESET_SIZES:
        raise ValueError(f"Unknown preset size {size!r}; choose one of {', '.join(PRESET_SIZES)}.")
    path = Path(__file__).resolve().parent / "preset_configs" / f"{variant}-{size}.json"
    if not path.is_file():
        raise FileNotFoundError(f"preset {path.name} is missing from {path.parent}.")
    return path


def load_preset(variant: str, size: str, **overrides):
    """The variant's config class built from the preset, with `overrides` applied (validated as usual)."""
    from transformers import AutoConfig

    from . import register_auto_classes

    register_auto_classes()  # AutoConfig.for_model needs the SLAM model types
    fields = json.loads(preset_path(variant, size).read_text())
    return AutoConfig.for_model(**{**fields, **overrides})


__all__ = ["PRESET_SIZES", "PRESET_VARIANTS", "load_preset", "preset_path"]
