"""The one place that touches version-sensitive transformers internals (remote code).

Everything else imports these names from here, so a transformers release that moves one of them is
fixed in a single file. Only public, documented entry points are used; all of them exist unchanged
from the supported floor (5.10.1) to the newest release.
"""

from transformers import initialization as init  # init helpers that skip tensors loaded from a checkpoint
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def get_attention_function(implementation: str, eager_fallback):
    """The attention kernel registered under `implementation` (sdpa, flash_attention_2, flex_attention, ...)."""
    if implementation == "eager":
        return eager_fallback
    return ALL_ATTENTION_FUNCTIONS[implementation]


__all__ = [
    "Cache",
    "DynamicCache",
    "EncoderDecoderCache",
    "GradientCheckpointingLayer",
    "create_bidirectional_mask",
    "create_causal_mask",
    "get_attention_function",
    "init",
]
