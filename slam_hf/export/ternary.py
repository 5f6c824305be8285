"""BitNet b1.58 deployment: a folder that stock transformers loads through its own BitNet quantizer.

`export_ternary(model, folder)` writes every `TernaryLinear` as transformers' `BitLinear` stores it (2-bit ternary
values packed four output rows per uint8, `weight_scale` = 1 / gamma; slam_ternary's docstring gives the layout) and
records `quantization_config = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode":
"offline", "modules_to_not_convert": [...]}` in config.json, so `AutoModel*.from_pretrained(folder,
trust_remote_code=True)` in a process without slam_hf builds BitLinear layers and loads the packed bytes as they are.
The rest of the folder is an ordinary SLAM save (remote code, auto_map, checksums.json).

BitLinear unpacks its weight on every call, slowly on CPU (transformers warns about it). `load_ternary(folder)` loads
the same folder and replaces each BitLinear by slam_ternary's `Int8TernaryLinear` (unpacked once into int8,
`torch._int_mm`); its outputs equal BitLinear's bit for bit (benchmarks/bench_ternary.py measures the speed).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ..slam_ternary import TernaryLinear, pack_ternary, ternary_weight, to_int8_ternary


def _ternary_layers(model: nn.Module) -> dict[str, TernaryLinear]:
    layers = {name: module for name, module in model.named_modules() if isinstance(module, TernaryLinear)}
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no ternary projection to export: build it from a config with "
            "`ternary_linear=True` (and train it so), then export."
        )
    return layers


def ternary_quantization_config(model: nn.Module) -> dict:
    """config.json's `quantization_config` for `model`: every linear layer that is not a `TernaryLinear` (lm_head,
    routers, confidence heads, the vision tower, full-precision projections) by its full module name, because
    transformers' quantizer would otherwise turn every `nn.Linear` into a BitLinear."""
    full_precision = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not isinstance(module, TernaryLinear)
    ]
    return {
        "quant_method": "bitnet",
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
        "modules_to_not_convert": sorted(full_precision),
    }


def packed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each ternary projection's `weight` packed (uint8, out / 4 rows) and its
    `weight_scale` (1 / gamma, shape (1,), the model's float dtype) added."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    for name, layer in _ternary_layers(model).items():
        try:
            weight_q, gamma = ternary_weight(layer.weight.detach())
            state[f"{name}.weight"] = pack_ternary(weight_q)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        state[f"{name}.weight_scale"] = (1 / gamma.float()).reshape(1).to(layer.weight.dtype)
    return state


@contextlib.contextmanager
def _quantization_config_set(config, quantization_config: dict):
    had = hasattr(config, "quantization_config")
    previous = getattr(config, "quantization_config", None)
    config.quantization_config = quantization_config
    try:
        yield
    finally:
        if had:
            config.quantization_config = previous
        else:
            del config.quantization_config


def export_ternary(model: nn.Module, save_directory: str | Path, **save_kwargs) -> Path:
    """Write `model` (with `TernaryLinear` projections) to `save_directory` in transformers' BitNet format (module
    docstring). The model itself is left unchanged. Returns the folder."""
    if getattr(model.config, "quantization_config", None) is not None:
        raise ValueError(
            "this model is already quantized (its config has `quantization_config`); export the full-precision "
            "training model (`ternary_linear=True`), not a loaded export."
        )
    state = packed_state_dict(model)
    with _quantization_config_set(model.config, ternary_quantization_config(model)):
        model.save_pretrained(save_directory, state_dict=state, **save_kwargs)
    return Path(save_directory)


def load_ternary(path: str | Path, model_class=None, **from_pretrained_kwargs) -> nn.Module:
    """Load an `export_ternary` folder through transformers' BitNet quantizer, then unpack every BitLinear once into
    an `Int8TernaryLinear` (the fast CPU path). `model_class` defaults to AutoModelForCausalLM (the class that the
    folder's config names is what AutoModel* picks); pass e.g. AutoModelForImageTextToText for SLAM v3."""
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    model = model_class.from_pretrained(path, **from_pretrained_kwargs)
    return to_int8_ternary(model)


__all__ = ["export_ternary", "load_ternary", "packed_state_dict", "ternary_quantization_config"]
