"""SLAM v3 (DESIGN §5), encoder-decoder: the encoder, the decoder, the trunk and the conditional-generation head.

Encoder: prompt embeddings with the vision tower's patch features at the `<image>` placeholders (+ projected aux
tokens) -> four parallel paths (text, image, shared, cross-modal; one batched computation) -> fusion node
(-> learned-latent bottleneck) = memory (slam_vision.py, slam_fusion.py). Decoder: causal MLA self-attention over a
compressed latent cache, cross-attention to the memory (K/V computed once per generation), MLP (slam_decoder.py,
slam_mla.py).
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput

from .configuration_slam import SlamV3Config
from .slam_attention import masked_attention_implementation
from .slam_compat import (
    DynamicCache,
    EncoderDecoderCache,
    cache_output,
    create_causal_mask,
    forward_arguments,
    init,
    output_cache,
    share_attention_implementation,
)
from .slam_decoder import SlamLatentBottleneck, SlamV3DecoderLayer
from .slam_fusion import SlamFusionNode, SlamParallelPaths, path_masks
from .slam_layers import SlamRotaryEmbedding, make_norm
from .slam_pretrained import (
    EmptyBatchGenerationMixin,
    SlamPreTrainedModel,
    forward_empty_batch,
    is_empty_batch,
    raise_if_output_attentions,
    refuse_static_cache,
    require_tensor,
    validate_inputs,
    validate_labels,
)
from .slam_vision import SlamAuxProjector, SlamVisionTower, image_placeholder_mask, place_image_features

V3_ATTENTIONS = "SLAM v3 runs four masked paths per encoder layer and an absorbed latent attention in the decoder"


def memory_padding_mask(config, attention_mask, memory_length):
    """The decoder's view of the memory: which of its `memory_length` tokens are real, (B, S) bool or None.

    The memory is the fused joint sequence (prompt tokens, then the aux tokens, which are always real) or, with a
    latent bottleneck, `fusion_num_latents` latents (all real). Derived, so encoder outputs passed back in by
    `generate` or by a user need no extra field.
    """
    if attention_mask is None or config.fusion_num_latents:
        return None
    extra = memory_length - attention_mask.shape[1]
    if extra < 0:
        raise ValueError(
            f"`attention_mask` covers {attention_mask.shape[1]} tokens but the encoder memory has {memory_length}; "
            "pass the attention_mask that was used to encode the inputs."
        )
    return torch.cat([attention_mask.bool(), attention_mask.new_ones(attention_mask.shape[0], extra).bool()], dim=1)


class SlamV3PreTrainedModel(SlamPreTrainedModel):
    config_class = SlamV3Config
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _no_split_modules = ["SlamV3DecoderLayer", "SlamParallelPaths", "SlamFusionNode", "SlamVisionTower"]

    def get_input_embeddings(self):
        return self.base_model.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.base_model.encoder.embed_tokens = value

    def get_encoder(self, *args, **kwargs):
        return self.base_model.encoder

    def get_decoder(self, *args, **kwargs):
        return self.base_model.decoder

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SlamLatentBottleneck):
            init.normal_(module.latents, mean=0.0, std=self.config.initializer_range)


class SlamV3Encoder(nn.Module):
    """Joint image+text sequence -> four parallel paths -> fusion node (-> latent bottleneck) -> memory.

    The encoder `generate` runs once (`get_encoder()`): `forward(input_ids, attention_mask, pixel_values, ...)`
    embeds the prompt, puts the vision tower's patch features at the `<image>` placeholders (row-major, one per
    patch, as `SlamProcessor` expands them) and appends the projected `aux_values`. Given `inputs_embeds` instead of
    `input_ids`, the placeholders are the positions holding the embedding of `image_token_id` (`placeholder_mask`).
    """

    main_input_name = "input_ids"

    def __init__(self, config: SlamV3Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.vision_tower = SlamVisionTower(config.vision_config, text_hidden_size=config.hidden_size)
        self.aux_projector = None if config.aux_dim is None else SlamAuxProjector(config.aux_dim, config.hidden_size)
        self.rotary_emb = None
        if config.position_embedding_type == "rope":
            self.rotary_emb = SlamRotaryEmbedding(config.head_dim, config.rope_theta)
        self.paths = SlamParallelPaths(config)
        self.fusion = SlamFusionNode(config)
        self.bottleneck = SlamLatentBottleneck(config) if config.fusion_num_latents else None
        self.norm = make_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def placeholder_mask(self, input_ids, inputs_embeds):
        """(B, L) bool: where the `<image>` placeholders are (`image_placeholder_mask`)."""
        return image_placeholder_mask(self.embed_tokens, self.config.image_token_id, input_ids, inputs_embeds)

    def embed(self, input_ids, inputs_embeds, pixel_values, image_grid_hw):
        """(B, L, hidden) embeddings with image features at the placeholders, and the image-token mask (B, L)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        return place_image_features(
            self.vision_tower,
            self.embed_tokens,
            self.config.image_token_id,
            input_ids,
            inputs_embeds,
            pixel_values,
            image_grid_hw,
        )

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        aux_values: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        raise_if_output_attentions(output_attentions, V3_ATTENTIONS)
        validate_inputs(self.config, input_ids, inputs_embeds, attention_mask, 0)
        hidden_states, is_image = self.embed(input_ids, inputs_embeds, pixel_values, image_grid_hw)
        batch, length = hidden_states.shape[:2]
        real = torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device)
        if attention_mask is not None:
            real = attention_mask.to(hidden_states.device).bool()
        if aux_values is not None:
            if self.aux_projector is None:
                raise ValueError("`aux_values` were given but the config has aux_dim=None; set `aux_dim` to use them.")
            aux = self.aux_projector(aux_values)
            if aux.shape[0] != batch:
                raise ValueError(f"`aux_values` has batch size {aux.shape[0]}, the text has {batch}.")
            hidden_states = torch.cat([hidden_states, aux.to(hidden_states.dtype)], dim=1)
            aux_flags = is_image.new_ones(batch, aux.shape[1])
            is_image, real = torch.cat([is_image, aux_flags], dim=1), torch.cat([real, aux_flags], dim=1)

        position_embeddings = None
        if self.rotary_emb is not None:
            position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)  # padding does not shift positions
            position_embeddings = self.rotary_emb(position_ids, hidden_states.dtype)
        hidden_states = self.dropout(hidden_states)
        implementation = masked_attention_implementation(self.config)
        allowed, has_key = path_masks(is_image, real)
        path_states = self.paths(hidden_states, position_embeddings, allowed, has_key, implementation)
        fused = self.fusion(path_states, has_key, position_embeddings, allowed[-1], implementation)
        memory = fused if self.bottleneck is None else self.bottleneck(fused, real[:, None, None, :])
        memory = self.norm(memory)
        all_hidden_states = (hidden_states, fused, memory) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=memory, hidden_states=all_hidden_states)


class CausalConfigView:
    """A config as transformers' mask helpers must read it for the SLAM v3 decoder: causal.

    The v3 config says `is_causal=False` (its encoder is bidirectional), and `create_causal_mask` then builds a
    bidirectional mask. Unpadded eager inputs hid this (the helper returns None and the decoder's attention applies
    causality itself), but a padded `decoder_attention_mask`, or torch.export (which always materialises the mask),
    gave the decoder a mask without causality. Every other attribute is the config's own, read at call time."""

    is_causal = True

    def __init__(self, config):
        self._config = config

    def __getattr__(self, name):
        return getattr(self._config, name)


class SlamV3Decoder(nn.Module):
    """`decoder_layers` x (causal MLA self-attention, cross-attention to the memory, MLP) and a final norm."""

    def __init__(self, config: SlamV3Config):
        super().__init__()
        self.config = config
        self.rotary_emb = SlamRotaryEmbedding(config.qk_rope_head_dim, config.rope_theta)  # MLA's decoupled key
        self.layers = nn.ModuleList([SlamV3DecoderLayer(config, idx) for idx in range(config.decoder_layers)])
        self.norm = make_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds, attention_mask, memory, memory_mask, cache, output_hidden_states=False):
        self_cache = None if cache is None else cache.self_attention_cache
        past_length = 0 if self_cache is None else self_cache.get_seq_length()
        length = inputs_embeds.shape[1]
        if attention_mask is not None and attention_mask.shape[1] != past_length + length:
            raise ValueError(
                f"`decoder_attention_mask` must cover past + new decoder tokens = {past_length + length}, got "
                f"{attention_mask.shape[1]}."
            )
        position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
        position_embeddings = self.rotary_emb(position_ids, inputs_embeds.dtype)
        causal_mask = create_causal_mask(CausalConfigView(self.config), inputs_embeds, attention_mask, self_cache)
        memory_mask = None if memory_mask is None else memory_mask[:, None, None, :].to(inputs_embeds.device)
        hidden_states = self.dropout(inputs_embeds)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, causal_mask, memory, memory_mask, cache)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return self.norm(hidden_states), all_hidden_states


def _check_rows_match(decoder_rows: int, encoder_rows: int, given_ids: bool):
    if decoder_rows != encoder_rows:
        name = "decoder_input_ids" if given_ids else "decoder_inputs_embeds"
        raise ValueError(
            f"`{name}` has {decoder_rows} rows but the encoder inputs have {encoder_rows}; pass one answer "
            "(or `labels` row) per prompt."
        )


class SlamV3Model(SlamV3PreTrainedModel):
    """SLAM v3 encoder-decoder trunk: returns the decoder's last hidden state and the encoder memory."""

    def __init__(self, config: SlamV3Config):
        super().__init__(config)
        share_attention_implementation(config)  # the vision tower reads its sub-config
        self.encoder = SlamV3Encoder(config)
        self.decoder = SlamV3Decoder(config)
        self.post_init()

    def _validate_decoder_inputs(self, cache, decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask):
        """(batch, new decoder tokens) of valid decoder inputs; a clear error otherwise."""
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of `decoder_input_ids` or `decoder_inputs_embeds` (or `labels`, which the "
                "conditional-generation head shifts into decoder inputs)."
            )
        self_cache = getattr(cache, "self_attention_cache", cache)
        past_length = 0 if self_cache is None else self_cache.get_seq_length()
        return validate_inputs(
            self.config,
            decoder_input_ids,
            decoder_inputs_embeds,
            decoder_attention_mask,
            past_length,
            ids_name="decoder_input_ids",
            mask_name="decoder_attention_mask",
            one_span=False,  # the decoder's causal mask takes any padding pattern
        )

    def _forward_empty_batch(self, cache, encoder, decoder, decoder_length, pixel_values, encoder_outputs, **rest):
        """A batch of 0 rows: validate the encoder inputs, then `forward_empty_batch` (outputs of the usual shapes)."""
        if encoder_outputs is None:
            validate_inputs(self.config, encoder["input_ids"], encoder["inputs_embeds"], encoder["attention_mask"], 0)
        if (
            pixel_values is not None
            and self.encoder.vision_tower.patch_embed.grid_size(pixel_values)
            and len(pixel_values)
        ):
            raise ValueError(f"`pixel_values` hold {len(pixel_values)} image(s) for a batch of 0 prompts.")
        mask = decoder["decoder_attention_mask"]
        if mask is not None:
            decoder["decoder_attention_mask"] = mask[:, -decoder_length:]  # the placeholder row has no past
        rest.update(encoder_outputs=encoder_outputs, **encoder, **decoder)
        return forward_empty_batch(self, given_cache=cache, **rest)

    def _decoder_cache(self, cache, use_cache):
        """The cache the decoder writes: None without caching (or while checkpointing gradients), else an
        EncoderDecoderCache (self-attention, cross-attention), wrapping a plain cache that generate passed."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if not use_cache or (self.decoder.gradient_checkpointing and self.training):
            return None
        if cache is None:
            return EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if not isinstance(cache, EncoderDecoderCache):
            return EncoderDecoderCache(cache, DynamicCache(config=self.config))
        return cache

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        aux_values: torch.FloatTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        raise_if_output_attentions(output_attentions, V3_ATTENTIONS)
        refuse_static_cache(cache)
        if (input_ids is None) == (inputs_embeds is None) and encoder_outputs is None:
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds` (or `encoder_outputs`).")
        decoder = dict(
            decoder_input_ids=decoder_input_ids,
            decoder_inputs_embeds=decoder_inputs_embeds,
            decoder_attention_mask=decoder_attention_mask,
        )
        decoder_batch, decoder_length = self._validate_decoder_inputs(cache, **decoder)
        if is_empty_batch(input_ids, inputs_embeds, decoder_input_ids, decoder_inputs_embeds):
            encoder = dict(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
            return self._forward_empty_batch(
                cache,
                encoder,
                decoder,
                decoder_length,
                pixel_values=pixel_values,
                aux_values=aux_values,
                encoder_outputs=encoder_outputs,
                use_cache=use_cache,
                output_hidden_states=output_hidden_states,
            )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                image_grid_hw=image_grid_hw,
                aux_values=aux_values,
                inputs_embeds=inputs_embeds,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        memory = encoder_outputs.last_hidden_state
        memory_mask = memory_padding_mask(self.config, attention_mask, memory.shape[1])
        _check_rows_match(decoder_batch, memory.shape[0], decoder_inputs_embeds is None)
        if decoder_inputs_embeds is None:
            decoder_inputs_embeds = self.encoder.embed_tokens(decoder_input_ids)
        cache = self._decoder_cache(cache, use_cache)
        hidden_states, decoder_hidden_states = self.decoder(
            decoder_inputs_embeds, decoder_attention_mask, memory, memory_mask, cache, output_hidden_states
        )
        return Seq2SeqModelOutput(
            last_hidden_state=hidden_states,
            **cache_output(cache),
            decoder_hidden_states=decoder_hidden_states,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_outputs.hidden_states,
        )


class SlamV3ForConditionalGeneration(EmptyBatchGenerationMixin, SlamV3PreTrainedModel, GenerationMixin):
    """Image(+aux)+text in, text out: `generate(input_ids=..., pixel_values=...)` encodes once, then decodes with the
    compressed MLA cache. With `labels` (the answer tokens, -100 = ignored), `decoder_input_ids` default to the
    labels shifted right behind `decoder_start_token_id`, and the loss is the token cross-entropy."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: SlamV3Config):
        super().__init__(config)
        self.model = SlamV3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Labels line up with the decoder inputs (shifted in `forward`), so the loss must not shift them again. The
        # masked-LM loss is exactly that token cross-entropy, and with it every transformers version's Trainer counts
        # all labels in `num_items_in_batch` (5.10 counts labels[..., 1:] for any causal-LM loss).
        self.loss_type = "ForMaskedLM"
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _validate_labels(self, labels, input_ids, inputs_embeds, encoder_outputs):
        """`labels` name themselves in errors, before they are shifted into `decoder_input_ids`."""
        require_tensor(labels, "labels")
        if labels.dim() != 2:
            raise ValueError(f"`labels` must have shape (batch, answer length), got {tuple(labels.shape)}.")
        prompts = input_ids if input_ids is not None else inputs_embeds
        if prompts is None and encoder_outputs is not None:
            prompts = encoder_outputs[0]
        batch = labels.shape[0] if prompts is None else prompts.shape[0]
        validate_labels(labels, (batch, labels.shape[1]), vocab_size=self.config.vocab_size)

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        aux_values: torch.FloatTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        if labels is not None:
            self._validate_labels(labels, input_ids, inputs_embeds, encoder_outputs)
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_hw=image_grid_hw,
            aux_values=aux_values,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            validate_labels(labels, hidden_states.shape[:2])
            # contiguous: transformers' masked-LM loss views the labels flat, which a sliced tensor cannot do
            loss = self.loss_function(
                logits=logits, labels=labels.contiguous(), vocab_size=self.config.vocab_size, **kwargs
            )
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **cache_output(output_cache(outputs)),
            decoder_hidden_states=outputs.decoder_hidden_states,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
        )


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: [start, y_0, ..., y_{n-2}], ignored labels (-100) read as padding."""
    if decoder_start_token_id is None or pad_token_id is None:
        raise ValueError(
            "Training SLAM v3 from `labels` needs `decoder_start_token_id` and `pad_token_id` in the config."
        )
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


__all__ = [
    "CausalConfigView",
    "SlamV3Decoder",
    "SlamV3Encoder",
    "SlamV3ForConditionalGeneration",
    "SlamV3Model",
    "SlamV3PreTrainedModel",
    "memory_padding_mask",
    "shift_tokens_right",
]
