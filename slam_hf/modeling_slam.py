"""SLAM models for transformers (entry point of the Hub remote code).

SLAM v1 (DESIGN §3): embed -> full-attention layer -> `ef_cycles` encoder-fusion cycles -> full-attention
layer -> norm. An EF cycle cuts the sequence into overlapping windows handled alternately by its blocks A
and B; each block attends only inside its windows, and a token in two windows takes the mean of both.

SLAM v2 (DESIGN §4): embed -> full-attention layer -> `ef_cycles` cycles of four shared blocks over
non-overlapping segments, rotating (segment s -> block (s + c) mod 4, on input h_s + x_s) -> mixture of
attention experts over the full sequence -> norm.

SLAM v3 (DESIGN §5), encoder-decoder: prompt embeddings with the vision tower's patch features at the `<image>`
placeholders (+ projected aux tokens) -> four parallel paths (text, image, shared, cross-modal; one batched
computation) -> fusion node (-> learned-latent bottleneck) = memory; decoder: causal MLA self-attention over a
compressed latent cache, cross-attention to the memory (K/V computed once per generation), MLP.
"""

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutput,
)

from .configuration_slam import SlamV1Config, SlamV2Config, SlamV3Config, auto_map_entries
from .slam_blocks import SlamCyclicFusion, SlamEncoderFusionCycle, SlamLayer, SlamMoALayer, SlamWindowedLayer
from .slam_checkpoint import check_loading_info, make_weights_readable, verify_checkpoint_files, write_checksums
from .slam_compat import (
    DynamicCache,
    EncoderDecoderCache,
    cache_output,
    create_bidirectional_mask,
    create_causal_mask,
    forward_arguments,
    init,
    is_tracing,
    output_cache,
)
from .slam_decoder import SlamLatentBottleneck, SlamV3DecoderLayer
from .slam_fusion import SlamFusionNode, SlamParallelPaths, path_masks
from .slam_layers import SlamRotaryEmbedding, make_norm
from .slam_moa import load_balancing_loss
from .slam_vision import SlamAuxProjector, SlamVisionTower
from .slam_windows import padding_offsets, plan_segments, plan_windows


def validate_inputs(config, input_ids, inputs_embeds, attention_mask, past_length, ids_name="input_ids"):
    """Clear errors for bad forward inputs, before they turn into index errors deep in the model.

    Checks that read tensor values (id range, mask layout) run in eager mode only: under torch.compile or
    torch.export they would be data-dependent branches, and a traced graph is fed the inputs it was traced for.
    """
    values = not is_tracing()
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"Pass exactly one of `{ids_name}` or `inputs_embeds`.")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"`{ids_name}` must have shape (batch, sequence), got {tuple(input_ids.shape)}.")
        if input_ids.dtype.is_floating_point:
            raise TypeError(f"`{ids_name}` must hold integer token ids, got dtype {input_ids.dtype}.")
        if values and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
            raise ValueError(
                f"`{ids_name}` holds ids outside the vocabulary [0, {config.vocab_size}) "
                f"(min {int(input_ids.min())}, max {int(input_ids.max())}); use the tokenizer that matches this model."
            )
        shape = input_ids.shape
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"`inputs_embeds` must have shape (batch, sequence, {config.hidden_size}), got {tuple(inputs_embeds.shape)}."
            )
        shape = inputs_embeds.shape[:2]
    if shape[1] == 0:
        raise ValueError("The input sequence is empty; pass at least one token.")
    if attention_mask is not None:
        expected = (shape[0], past_length + shape[1])
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"`attention_mask` must have shape (batch, past + new tokens) = {expected}, got "
                f"{tuple(attention_mask.shape)}."
            )
        if not values:
            return
        first, real = padding_offsets(attention_mask, *expected, attention_mask.device)
        positions = torch.arange(expected[1], device=attention_mask.device)
        span = (positions >= first[:, None]) & (positions < (first + real)[:, None])
        if not torch.equal(attention_mask.bool(), span):
            raise ValueError(
                "`attention_mask` must mark one contiguous span of real tokens per row (left or right padding); "
                "SLAM windows are placed by counting real tokens, so masks with holes are not supported."
            )


def refuse_static_cache(cache):
    """SLAM decodes with a growing (dynamic) cache only; a static one is refused before anything runs on it.

    A static cache (`cache_implementation="static"`, any compileable cache) holds fixed-size buffers and makes
    `generate()` replace the 2D padding mask by a 4D one. SLAM v1/v2 place their windows and segments by counting
    the real tokens of the 2D mask and gather keys by position from the cache, and SLAM v3's cross-attention
    cache must hold exactly the encoder memory, not a padded buffer; torch.compile, the reason for a static cache,
    would also break its graph on the data-dependent window plans.
    """
    layers = getattr(cache, "self_attention_cache", cache)
    if getattr(layers, "is_compileable", False):
        raise ValueError(
            f"SLAM models do not support a static cache ({type(layers).__name__}, e.g. cache_implementation="
            "'static'): windows and segments are placed from the 2D padding mask and a growing cache. Use the default "
            "dynamic cache: drop `cache_implementation` (or pass cache_implementation='dynamic')."
        )


def validate_labels(labels, expected_shape, name="labels"):
    if labels is not None and tuple(labels.shape) != tuple(expected_shape):
        raise ValueError(f"`{name}` must have shape {tuple(expected_shape)}, got {tuple(labels.shape)}.")


def mean_pool(hidden_states, attention_mask):
    """Mean over the real tokens of each row: (B, L, hidden) -> (B, hidden)."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.to(hidden_states.dtype)[..., None]
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)


def with_causality(config, is_causal: bool, head: str):
    """The config a head runs with: bidirectional heads record `is_causal=False` on a copy (so the caller's
    config is untouched and a saved checkpoint says which trunk it holds); contradictions fail early."""
    if config.is_causal == is_causal:
        return config
    if is_causal:
        raise ValueError(f"{head} needs causal attention, but the config has is_causal=False; set is_causal=True.")
    config = copy.deepcopy(config)
    config.is_causal = False
    return config


class SlamPreTrainedModel(PreTrainedModel):
    """Capability flags, embeddings access and weight initialisation shared by every SLAM variant."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache", "past_key_values"]  # the cache argument before and after 5.24
    _supports_sdpa = True
    _supports_flash_attn = False  # windows and segments build boolean masks; not tested with flash kernels
    _supports_flex_attn = False

    # ---- saving and loading (integrity checks: slam_checkpoint.py) ----
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' from_pretrained, plus: weight files are checked against the `checksums.json` written at save
        time, and missing or unexpected weights raise (pass output_loading_info=True to get the lists instead)."""
        verify_checkpoint_files(pretrained_model_name_or_path, kwargs)
        wants_info = kwargs.get("output_loading_info", False)
        kwargs["output_loading_info"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if wants_info:
            return model, info
        check_loading_info(model, info, pretrained_model_name_or_path)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained, plus: a complete `auto_map` (this class, the trunk and the config, so every
        Auto factory loads the folder as remote code) and `checksums.json` for the weight files."""
        if self._auto_class is not None:  # registered for remote code
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            wanted = auto_map_entries(self.config.model_type, [type(self).__name__, type(self.base_model).__name__])
            self.config.auto_map = {**auto_map, **{k: v for k, v in wanted.items() if k not in auto_map}}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if is_main_process and os.path.isdir(save_directory):
            make_weights_readable(save_directory)
            write_checksums(save_directory)
        return result

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # save_pretrained(push_to_hub=True) uploads before returning: record the checksums first.
        write_checksums(working_dir)
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    def get_input_embeddings(self):
        return self.base_model.embed_tokens  # `base_model` is the trunk itself or a head's `self.model`

    def set_input_embeddings(self, value):
        self.base_model.embed_tokens = value

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SlamRotaryEmbedding):
            # Non-persistent buffer: from_pretrained leaves it uninitialised on the meta device.
            init.copy_(module.inv_freq, module.reset_inv_freq())

    # ---- trunk helpers (used by the variant models) ----
    def _build_embeddings(self, config):
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.embed_positions = None
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.rotary_emb = None
        if config.position_embedding_type == "rope":
            self.rotary_emb = SlamRotaryEmbedding(config.head_dim, config.rope_theta)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _prepare_inputs(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache):
        """Validate inputs, embed them, set up the cache, positions and the full-attention mask."""
        refuse_static_cache(cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        validate_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        use_cache = self.config.use_cache if use_cache is None else use_cache
        if not self.is_causal or (self.gradient_checkpointing and self.training):
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None if past_length == 0 else cache
        total = past_length + length
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)

        if position_ids is None:
            # Count real tokens, so a left-padded row gets the same positions as the unpadded sequence.
            offsets, _ = padding_offsets(attention_mask, batch, total, device)
            position_ids = (torch.arange(past_length, total, device=device)[None] - offsets[:, None]).clamp(min=0)
        hidden_states = inputs_embeds
        if self.embed_positions is not None:
            # A check of values: eager only (see validate_inputs); a traced graph would break on it.
            if not is_tracing() and int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"Sequence of {int(position_ids.max()) + 1} positions exceeds max_position_embeddings="
                    f"{self.config.max_position_embeddings} of the learned position table; shorten `input_ids` "
                    "or use position_embedding_type='rope'."
                )
            hidden_states = hidden_states + self.embed_positions(position_ids)
        position_embeddings = None
        if self.rotary_emb is not None:
            position_embeddings = self.rotary_emb(position_ids, hidden_states.dtype)

        if self.is_causal:
            full_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache)
        else:
            full_mask = create_bidirectional_mask(self.config, inputs_embeds, attention_mask)
        return PreparedInputs(
            hidden_states=self.dropout(hidden_states),
            position_embeddings=position_embeddings,
            full_mask=full_mask,
            attention_mask=attention_mask,
            cache=cache,
            past_length=past_length,
            use_cache=use_cache,
        )

    @property
    def window_implementation(self) -> str:
        """Kernel for windows and segments: eager, or sdpa (which also serves any other requested backend)."""
        return "eager" if self.config._attn_implementation == "eager" else "sdpa"


@dataclass
class PreparedInputs:
    hidden_states: torch.Tensor  # embedded inputs (positions added, dropout applied)
    position_embeddings: tuple | None  # RoPE (cos, sin) or None
    full_mask: torch.Tensor | None  # mask of the full-attention layers
    attention_mask: torch.Tensor | None  # the 2D padding mask, on the model's device
    cache: object
    past_length: int
    use_cache: bool


def raise_if_output_attentions(output_attentions, reason="SLAM blocks attend inside windows or segments"):
    if output_attentions:
        raise ValueError(
            f"`output_attentions=True` is not supported: {reason}, so there is no (L, L) attention map per layer. "
            "Use `output_hidden_states=True` instead."
        )


V3_ATTENTIONS = "SLAM v3 runs four masked paths per encoder layer and an absorbed latent attention in the decoder"


# --------------------------------------------------------------------------------------------------- heads ----
def router_aux_loss(config, router_logits, attention_mask, labelled=None, num_items_in_batch=None):
    """The load-balancing loss over the real tokens of this forward, and its weight in the total loss.

    Under gradient accumulation (`num_items_in_batch` given, the LM loss being a share of the big batch's
    sum), each micro-batch contributes in proportion to its labelled tokens, so the accumulated weight of
    the balancing loss stays `router_aux_loss_coef` instead of growing with the number of micro-batches.
    """
    token_mask = None
    if attention_mask is not None:
        length = router_logits[0].shape[0] // attention_mask.shape[0]
        token_mask = attention_mask[:, -length:].bool().flatten()
    aux_loss = sum(load_balancing_loss(logits, config.moa_top_k, token_mask) for logits in router_logits)
    weight = config.router_aux_loss_coef
    if num_items_in_batch is not None and labelled is not None:
        weight = weight * labelled / num_items_in_batch
    return aux_loss, weight


class SlamHeadMixin:
    """What every SLAM head shares, mixed in before the variant's PreTrainedModel.

    A variant's head class names its trunk (`trunk_class`) and output type; the trunk says whether it routes
    tokens (`SlamV2Model.has_router`). With a router, the trunk's MoA load-balancing loss is returned as
    `aux_loss` and added to `loss` with `router_aux_loss_coef` whenever labels are given, and the router
    logits are returned on request (`output_router_logits`, argument or config).
    """

    trunk_class = None
    output_class = None
    head_is_causal = True

    def _build_trunk(self, config):
        config = with_causality(config, self.head_is_causal, type(self).__name__)
        super().__init__(config)
        self.model = self.trunk_class(config)
        return config

    def _run_trunk(self, output_router_logits, **inputs):
        if self.model.has_router:
            inputs["output_router_logits"] = True  # the balancing loss needs them even when not returned
        elif output_router_logits:
            raise ValueError(f"{type(self).__name__} has no router; `output_router_logits` is for SLAM v2.")
        return self.model(**inputs, return_dict=True)

    def _finish_loss(self, loss, outputs, attention_mask, labelled=None, num_items_in_batch=None):
        """(loss with the weighted balancing loss added, the extra output fields of a routed model)."""
        if not self.model.has_router:
            return loss, {}
        aux_loss, weight = router_aux_loss(
            self.config, outputs.router_logits, attention_mask, labelled, num_items_in_batch
        )
        if loss is not None and weight:
            loss = loss + weight * aux_loss.to(loss.device)
        return loss, {"aux_loss": aux_loss, "router_logits": outputs.router_logits}

    def _router_fields(self, fields, output_router_logits, labels):
        """The routing fields to return: the router logits on request; the balancing loss on request or with
        labels (it is then part of `loss`), None otherwise, as transformers' MoE models do (a 0-dim tensor in
        every output would break row-wise consumers such as batched pipelines)."""
        if "router_logits" in fields:
            wanted = self.config.output_router_logits if output_router_logits is None else output_router_logits
            fields["router_logits"] = fields["router_logits"] if wanted else None
            fields["aux_loss"] = fields["aux_loss"] if wanted or labels is not None else None
        return fields


class SlamLMHeadMixin(SlamHeadMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        config = self._build_trunk(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value


class SlamForCausalLMMixin(SlamLMHeadMixin):
    """Causal LM (`GenerationMixin`: greedy, sampling, beams, KV cache)."""

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        outputs = self._run_trunk(
            output_router_logits,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden_states = outputs.last_hidden_state
        validate_labels(labels, hidden_states.shape[:2])
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        labelled = None if labels is None else (labels[:, 1:] != -100).sum()  # the loss shifts labels
        loss, extra = self._finish_loss(loss, outputs, attention_mask, labelled, kwargs.get("num_items_in_batch"))
        return self.output_class(
            loss=loss,
            logits=logits,
            **cache_output(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            **self._router_fields(extra, output_router_logits, labels),
        )


class SlamForMaskedLMMixin(SlamLMHeadMixin):
    """Masked LM on the bidirectional trunk."""

    head_is_causal = False

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ):
        outputs = self._run_trunk(
            output_router_logits,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden_states = outputs.last_hidden_state
        validate_labels(labels, hidden_states.shape[:2])
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        labelled = None if labels is None else (labels != -100).sum()
        loss, extra = self._finish_loss(loss, outputs, attention_mask, labelled, kwargs.get("num_items_in_batch"))
        return self.output_class(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **self._router_fields(extra, output_router_logits, labels)
        )


class SlamForSequenceClassificationMixin(SlamHeadMixin):
    """Bidirectional trunk, mean over real tokens, linear classifier (`config.num_labels`, `problem_type`)."""

    head_is_causal = False

    def __init__(self, config):
        config = self._build_trunk(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ):
        outputs = self._run_trunk(
            output_router_logits,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        logits = self.score(mean_pool(outputs.last_hidden_state, attention_mask))
        loss = None
        if labels is not None:
            validate_labels(labels, logits.shape[:1] if labels.dim() == 1 else logits.shape)
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config, **kwargs)
        loss, extra = self._finish_loss(loss, outputs, attention_mask)
        return self.output_class(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **self._router_fields(extra, output_router_logits, labels)
        )


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


# ------------------------------------------------------------------------------------------------ SLAM v2 ----
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
        # Cache layers follow config.layer_schedule: full, one per fusion cycle, moa.
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



# ------------------------------------------------------------------------------------------------ SLAM v3 ----
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
        """(B, L) bool: where the `<image>` placeholders are. The one place that locates them: from `input_ids` when
        given, else (as transformers' image-text models do) where `inputs_embeds` equal the embedding of
        `image_token_id` in every hidden dim."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        return (inputs_embeds == self.embed_tokens(image_token).to(inputs_embeds.dtype)).all(-1)

    def embed(self, input_ids, inputs_embeds, pixel_values, image_grid_hw):
        """(B, L, hidden) embeddings with image features at the placeholders, and the image-token mask (B, L)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        is_image = self.placeholder_mask(input_ids, inputs_embeds)
        # Counting placeholders reads values: eager only (see validate_inputs); a traced graph is fed matching inputs.
        checks = not is_tracing()
        placeholders = int(is_image.sum()) if checks else None
        found = "`input_ids` hold {} image placeholder tokens"  # the placeholders, as the error messages name them
        if input_ids is None:
            found = "`inputs_embeds` hold {} embeddings of the image placeholder token"
        if pixel_values is None:
            if checks and placeholders:
                raise ValueError(
                    f"{found.format(placeholders)} (id {self.config.image_token_id}) but no `pixel_values` were given; "
                    "pass the images (SlamProcessor returns both)."
                )
            return inputs_embeds, is_image
        # The tower's layers read the vision sub-config, which transformers does not keep in step with the
        # model's attention backend (the tower is not a PreTrainedModel of its own): follow the model's.
        self.config.vision_config._attn_implementation_internal = self.config._attn_implementation
        features = self.vision_tower(pixel_values, image_grid_hw)  # (N, patches, hidden)
        if checks and placeholders != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"{found.format(placeholders)}, but `pixel_values` give {features.shape[0]} image(s) x "
                f"{features.shape[1]} patches = {features.shape[0] * features.shape[1]} features; expand each "
                "`<image>` with SlamProcessor so that every patch has one placeholder."
            )
        mask = is_image[..., None].expand_as(inputs_embeds)
        inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
        return inputs_embeds, is_image

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
        implementation = "eager" if self.config._attn_implementation == "eager" else "sdpa"
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


class SlamV3Model(SlamV3PreTrainedModel):
    """SLAM v3 encoder-decoder trunk: returns the decoder's last hidden state and the encoder memory."""

    def __init__(self, config: SlamV3Config):
        super().__init__(config)
        self.encoder = SlamV3Encoder(config)
        self.decoder = SlamV3Decoder(config)
        self.post_init()

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

        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of `decoder_input_ids` or `decoder_inputs_embeds` (or `labels`, which the "
                "conditional-generation head shifts into decoder inputs)."
            )
        if decoder_inputs_embeds is None:
            validate_inputs(self.config, decoder_input_ids, None, None, 0, ids_name="decoder_input_ids")
            decoder_inputs_embeds = self.encoder.embed_tokens(decoder_input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.decoder.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        elif use_cache and not isinstance(cache, EncoderDecoderCache):
            cache = EncoderDecoderCache(cache, DynamicCache(config=self.config))
        elif not use_cache:
            cache = None
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


class SlamV3ForConditionalGeneration(SlamV3PreTrainedModel, GenerationMixin):
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
            if labels.dim() != 2:
                raise ValueError(f"`labels` must have shape (batch, answer length), got {tuple(labels.shape)}.")
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
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
        raise ValueError("Training SLAM v3 from `labels` needs `decoder_start_token_id` and `pad_token_id` in the config.")
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


__all__ = [
    "SlamForCausalLMMixin",
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
