"""The one place that touches version-sensitive transformers internals (remote code).

Everything else imports these names from here, so a transformers release that moves one of them is
fixed in a single file. Only public, documented entry points are used.
"""

import inspect

import torch
from transformers import masking_utils
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:  # transformers >= 5: init helpers that skip tensors already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older releases
    import torch.nn.init as init


# transformers < 5.3 still required `cache_position` in the mask builders; later releases derive it.
_MASK_NEEDS_CACHE_POSITION = "cache_position" in inspect.signature(masking_utils.create_causal_mask).parameters


def create_causal_mask(config, inputs_embeds, attention_mask, past_key_values):
    kwargs = {}
    if _MASK_NEEDS_CACHE_POSITION:
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        kwargs["cache_position"] = torch.arange(past, past + inputs_embeds.shape[1], device=inputs_embeds.device)
    return masking_utils.create_causal_mask(  # the embeds argument was renamed in 5.x: pass it positionally
        config,
        inputs_embeds,
        attention_mask,
        past_key_values=past_key_values,
        position_ids=None,  # positions come from the attention mask; no packed-sequence detection
        **kwargs,
    )


def create_bidirectional_mask(config, inputs_embeds, attention_mask):
    return masking_utils.create_bidirectional_mask(config, inputs_embeds, attention_mask)


def get_attention_function(implementation: str, eager_fallback):
    """The attention kernel registered under `implementation` (sdpa, flash_attention_2, flex_attention, ...)."""
    if implementation == "eager":
        return eager_fallback
    return ALL_ATTENTION_FUNCTIONS[implementation]


__all__ = [
    "Cache",
    "DynamicCache",
    "GradientCheckpointingLayer",
    "create_bidirectional_mask",
    "create_causal_mask",
    "get_attention_function",
    "init",
]
