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
from .slam_pretrained import (
    SlamPreTrainedModel,
    is_empty_batch,
    raise_if_output_attentions,
)
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

        # Cache layers: 0 for the first full-attention layer, two per EF cycle (its blocks A and B), the last one for
        # the closing full-attention layer (config.num_hidden_layers in all).
        first = SlamLayer(config, 0, is_causal=is_causal)
        cycles = [
            SlamEncoderFusionCycle(config, 1 + 2 * cycle, is_causal=is_causal) for cycle in range(config.ef_cycles)
        ]
        last = SlamLayer(config, config.num_hidden_layers - 1, is_causal=is_causal)
        self.layers = nn.ModuleList([first, *cycles, last])
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
        if is_empty_batch(inputs.hidden_states):  # validated: 0 rows give empty outputs of the usual shapes
            flags = dict(use_cache=use_cache, output_hidden_states=output_hidden_states)
            return self._empty_batch_outputs(inputs, cache, input_ids, inputs_embeds, attention_mask, **flags)
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
