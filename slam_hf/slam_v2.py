"""SLAM v2 (DESIGN §4): the trunk, its causal-LM, masked-LM and classifier heads, and their output classes.

embed -> full-attention layer -> `ef_cycles` cycles of four shared blocks over non-overlapping segments, rotating
(segment s -> block (s + c) mod 4, on input h_s + x_s) -> mixture of attention experts over the full sequence -> norm
(slam_blocks.py, slam_moa.py). Every head adds the MoA load-balancing loss to its loss (slam_heads.py).
"""

from dataclasses import dataclass

import torch
from transformers import GenerationMixin
from transformers.modeling_outputs import (
    MaskedLMOutput,
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
    SequenceClassifierOutput,
)

from .configuration_slam import SlamV2Config
from .slam_blocks import SlamCyclicFusion, SlamLayer, SlamMoALayer
from .slam_compat import cache_output, forward_arguments
from .slam_heads import SlamForCausalLMMixin, SlamForMaskedLMMixin, SlamForSequenceClassificationMixin
from .slam_layers import make_norm
from .slam_pretrained import (
    SlamPreTrainedModel,
    is_empty_batch,
    raise_if_output_attentions,
)
from .slam_windows import plan_segments


@dataclass
class SlamV2MaskedLMOutput(MaskedLMOutput):
    """`MaskedLMOutput` plus the MoA load-balancing loss and (on request) the router logits."""

    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


@dataclass
class SlamV2SequenceClassifierOutput(SequenceClassifierOutput):
    """`SequenceClassifierOutput` plus the MoA load-balancing loss and (on request) the router logits."""

    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


class SlamV2PreTrainedModel(SlamPreTrainedModel):
    config_class = SlamV2Config
    _no_split_modules = ["SlamLayer", "SlamCyclicFusion", "SlamMoALayer"]


class SlamV2Model(SlamV2PreTrainedModel):
    """The SLAM v2 trunk: Level 1 full attention, Level 2 cyclic segment fusion, Level 3 mixture of attention
    experts. `config.is_causal=False` gives the bidirectional encoder of the MLM and classifier heads.

    `router_logits` (one (batch * sequence, experts) tensor per MoA layer, as in transformers' MoE models) is
    returned with `output_router_logits=True`.
    """

    has_router = True

    def __init__(self, config: SlamV2Config):
        super().__init__(config)
        is_causal = self.is_causal = config.is_causal
        self._build_embeddings(config)
        # Cache layers: 0 for the full-attention layer, one per fusion cycle, the last one for the MoA layer.
        self.input_layer = SlamLayer(config, 0, is_causal=is_causal)
        self.fusion = SlamCyclicFusion(config, first_layer_idx=1, is_causal=is_causal)
        self.moa_layer = SlamMoALayer(config, 1 + config.ef_cycles, is_causal=is_causal)
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
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        raise_if_output_attentions(output_attentions)
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        inputs = self._prepare_inputs(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache)
        if is_empty_batch(inputs.hidden_states):  # validated: 0 rows give empty outputs of the usual shapes
            flags = dict(
                use_cache=use_cache,
                output_hidden_states=output_hidden_states,
                output_router_logits=output_router_logits,
            )
            return self._empty_batch_outputs(inputs, cache, input_ids, inputs_embeds, attention_mask, **flags)
        hidden_states, cache = inputs.hidden_states, inputs.cache
        segment_plan = plan_segments(
            inputs.attention_mask,
            hidden_states.shape[0],
            inputs.past_length,
            hidden_states.shape[1],
            self.config.ef_segment_length,
            self.config.ef_num_blocks,
            self.is_causal,
            self.window_implementation,
            hidden_states.device,
        )
        original_inputs = hidden_states  # x: every fusion cycle adds it to its segment inputs
        stacked_layers = self.fusion.stacked_layers(segment_plan)  # shared by all cycles

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        hidden_states = self.input_layer(
            hidden_states, inputs.position_embeddings, attention_mask=inputs.full_mask, cache=cache
        )
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        for cycle in range(self.config.ef_cycles):
            hidden_states = self.fusion(
                hidden_states,
                original_inputs,
                inputs.position_embeddings,
                cycle=cycle,
                segment_plan=segment_plan,
                stacked_layers=stacked_layers,
                cache=cache,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states, router_logits = self.moa_layer(
            hidden_states, inputs.position_embeddings, attention_mask=inputs.full_mask, cache=cache
        )
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            **cache_output(cache if inputs.use_cache else None),
            hidden_states=all_hidden_states,
            router_logits=(router_logits.flatten(0, 1),) if output_router_logits else None,
        )


class SlamV2ForCausalLM(SlamForCausalLMMixin, SlamV2PreTrainedModel, GenerationMixin):
    """Causal LM. With `labels`, loss = LM loss + router_aux_loss_coef * aux_loss (the MoA balancing loss)."""

    trunk_class = SlamV2Model
    output_class = MoeCausalLMOutputWithPast


class SlamV2ForMaskedLM(SlamForMaskedLMMixin, SlamV2PreTrainedModel):
    """Masked LM; with `labels`, the MoA balancing loss is added as for the causal LM."""

    trunk_class = SlamV2Model
    output_class = SlamV2MaskedLMOutput


class SlamV2ForSequenceClassification(SlamForSequenceClassificationMixin, SlamV2PreTrainedModel):
    """Mean-pooled classifier; the MoA balancing loss is added to the classification loss."""

    trunk_class = SlamV2Model
    output_class = SlamV2SequenceClassifierOutput


__all__ = [
    "SlamV2ForCausalLM",
    "SlamV2ForMaskedLM",
    "SlamV2ForSequenceClassification",
    "SlamV2MaskedLMOutput",
    "SlamV2Model",
    "SlamV2PreTrainedModel",
    "SlamV2SequenceClassifierOutput",
]
