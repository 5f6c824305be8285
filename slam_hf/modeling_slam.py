"""SLAM models for transformers: the entry point of the Hub remote code, and where every model class is named.

transformers loads this file for every SLAM model class: a saved `config.json` names the classes as
`auto_map[<Auto factory>] = "modeling_slam.<Class>"`, whichever sibling defines them, and
`SlamPreTrainedModel.save_pretrained` copies this file and its single-dot imports next to the weights. The code
lives in one file per variant:

    slam_v1.py          SLAM v1 (DESIGN §3): full-attention layer -> `ef_cycles` encoder-fusion cycles over overlapping
                        windows (blocks A and B alternate) -> full-attention layer; heads: causal LM, masked LM,
                        sequence classification.
    slam_v2.py          SLAM v2 (DESIGN §4): full-attention layer -> `ef_cycles` cycles of four shared blocks rotating
                        over non-overlapping segments -> mixture of attention experts; the same three heads, with the
                        MoA load-balancing loss.
    slam_v3.py          SLAM v3 (DESIGN §5), encoder-decoder: image+text (+aux) encoder with four parallel paths and a
                        fusion node (-> latent bottleneck), MLA decoder with cross-attention to the memory; head:
                        conditional generation.
    slam_loop.py        the latent-loop transformer (DESIGN §6): prelude -> a shared core iterated up to N times per
                        token with the prelude output re-injected -> coda; a per-token confidence head stops tokens
                        early at inference (slam_loop_training.py: sampled depth, confidence targets); heads: causal LM,
                        image-text to text (vision-tower patches in the sequence, 2D RoPE for them).
    slam_pretrained.py  what the variants share: `SlamPreTrainedModel` (flags, init, embeddings and input preparation,
                        save/load with checksums and a complete auto_map), input validation, `PreparedInputs`.
    slam_heads.py       the task-head mixins of the decoder-only variants (v1, v2).

The layers they are built from are in the other slam_*.py siblings (blocks, attention, windows, MoA, MLA, fusion,
vision). This file only re-exports: `from slam_hf.modeling_slam import X` keeps working for every name it defined
before the split into per-variant files.
"""

# Besides the classes in __all__, the helpers this file defined before the split stay importable from it
# (`from slam_hf.modeling_slam import memory_padding_mask`), hence `noqa: F401`.
from .slam_heads import (  # noqa: F401
    SlamForCausalLMMixin,
    SlamForMaskedLMMixin,
    SlamForSequenceClassificationMixin,
    SlamHeadMixin,
    SlamLMHeadMixin,
    mean_pool,
    router_aux_loss,
    with_causality,
)
from .slam_loop import (
    SlamLoopForCausalLM,
    SlamLoopForImageTextToText,
    SlamLoopModel,
    SlamLoopPreTrainedModel,
)
from .slam_pretrained import (  # noqa: F401
    PreparedInputs,
    SlamPreTrainedModel,
    raise_if_output_attentions,
    refuse_static_cache,
    validate_inputs,
    validate_labels,
)
from .slam_v1 import (
    SlamV1ForCausalLM,
    SlamV1ForMaskedLM,
    SlamV1ForSequenceClassification,
    SlamV1Model,
    SlamV1PreTrainedModel,
)
from .slam_v2 import (  # noqa: F401
    SlamV2ForCausalLM,
    SlamV2ForMaskedLM,
    SlamV2ForSequenceClassification,
    SlamV2MaskedLMOutput,
    SlamV2Model,
    SlamV2PreTrainedModel,
    SlamV2SequenceClassifierOutput,
)
from .slam_v3 import (  # noqa: F401
    V3_ATTENTIONS,
    CausalConfigView,
    SlamV3Decoder,
    SlamV3Encoder,
    SlamV3ForConditionalGeneration,
    SlamV3Model,
    SlamV3PreTrainedModel,
    memory_padding_mask,
    shift_tokens_right,
)

__all__ = [
    "SlamForCausalLMMixin",
    "SlamLoopForCausalLM",
    "SlamLoopForImageTextToText",
    "SlamLoopModel",
    "SlamLoopPreTrainedModel",
    "SlamForMaskedLMMixin",
    "SlamForSequenceClassificationMixin",
    "SlamPreTrainedModel",
    "SlamV2ForCausalLM",
    "SlamV2ForMaskedLM",
    "SlamV2ForSequenceClassification",
    "SlamV2Model",
    "SlamV2PreTrainedModel",
    "SlamV1ForCausalLM",
    "SlamV1ForMaskedLM",
    "SlamV1ForSequenceClassification",
    "SlamV1Model",
    "SlamV1PreTrainedModel",
    "SlamV3ForConditionalGeneration",
    "SlamV3Model",
    "SlamV3PreTrainedModel",
]


def __getattr__(name):
    # transformers resolves auto_map's "modeling_slam.<Class>" with getattr: name what this file does define.
    if name.startswith("Slam"):
        known = ", ".join(n for n in __all__ if n.startswith("Slam"))
        raise AttributeError(
            f"modeling_slam.py defines no {name} (it defines {known}); the auto_map in config.json names a class "
            "from another slam_hf release: fix auto_map in config.json, or copy the matching modeling_slam.py and "
            "its slam_*.py siblings into the repo."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
