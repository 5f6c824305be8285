"""SLAM v1 (DESIGN §3): the trunk and its causal-LM, masked-LM and classifier heads.

embed -> full-attention layer -> `ef_cycles` encoder-fusion cycles -> full-attention layer -> norm. An EF cycle cuts
the sequence into overlapping windows handled alternately by its blocks A and B; each block attends only inside its
windows, and a token in two windows takes the mean of both (slam_blocks.py, slam_windows.py).
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
)

from .configuration_slam import SlamV1Config
from .slam_blocks import SlamEncoderFusionCycle, SlamLayer
from .slam_compat import cache_output, forward_arguments
from .slam_heads import SlamForCausalLMMixin, SlamForMaskedLMMixin, SlamForSequenceClassificationMixin
from .slam_layers import make_norm
from .slam_pretrained import SlamPreTrainedModel, raise_if_output_attentions
from .slam_windows import plan_windows


class SlamV1PreTrainedModel(SlamPreTrainedModel):
    config_class = SlamV1Config
    _no_split_modules = ["SlamLayer", "SlamEncoderFusionCycle"]


class SlamV1Model(SlamV1PreTrainedModel):
    """The SLAM v1 trunk; `config.is_causal=False` gives the bidirectional encoder of the MLM and classifier heads."""

    has_router = False

    def __init__(self, config: SlamV1Config):
        super().__init__(config)
        is_causal = self.is_causal = config.is_causal
        self._build_embeddings(config)

        # The schedule as data: config.layer_schedule lists one entry per cache layer; an EF cycle owns
        # two of them ("ef_a", "ef_b"), so it is built at its "ef_a" entry.
        layers = []
        for idx, kind in enumerate(config.layer_schedule):
            if kind == "full":
                layers.append(SlamLayer(config, idx, is_causal=is_causal))
            elif kind == "ef_a":
                layers.append(SlamEncoderFusionCycle(config, idx, is_causal=is_causal))
        self.layers = nn.ModuleList(layers)
        self.norm = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        raise_if_output_attentions(output_attentions)
        inputs = self._prepare_inputs(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache)
        hidden_states, cache = inputs.hidden_states, inputs.cache
        window_plans = plan_windows(
            inputs.attention_mask,
            hidden_states.shape[0],
            inputs.past_length,
            hidden_states.shape[1],
            self.config.ef_segment_length,
            self.config.ef_stride,
            self.is_causal,
            self.window_implementation,
            hidden_states.device,
        )

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                inputs.position_embeddings,
                attention_mask=inputs.full_mask,
                window_plans=window_plans,
                cache=cache,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            **cache_output(cache if inputs.use_cache else None),
            hidden_states=all_hidden_states,
        )


class SlamV1ForCausalLM(SlamForCausalLMMixin, SlamV1PreTrainedModel, GenerationMixin):
    trunk_class = SlamV1Model
    output_class = CausalLMOutputWithPast


class SlamV1ForMaskedLM(SlamForMaskedLMMixin, SlamV1PreTrainedModel):
    trunk_class = SlamV1Model
    output_class = MaskedLMOutput


class SlamV1ForSequenceClassification(SlamForSequenceClassificationMixin, SlamV1PreTrainedModel):
    trunk_class = SlamV1Model
    output_class = SequenceClassifierOutput


__all__ = [
    "SlamV1ForCausalLM",
    "SlamV1ForMaskedLM",
    "SlamV1ForSequenceClassification",
    "SlamV1Model",
    "SlamV1PreTrainedModel",
]
