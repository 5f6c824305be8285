"""Deployment formats of trained SLAM models (never imported by the Hub remote code)."""

from .ternary import export_ternary, load_ternary, ternary_quantization_config

__all__ = ["export_ternary", "load_ternary", "ternary_quantization_config"]
