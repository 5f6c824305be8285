"""The task heads every decoder-only SLAM variant (v1, v2) shares, as mixins: causal LM, masked LM, classifier.

A variant's head class is one line of wiring, e.g. `class SlamV2ForCausalLM(SlamForCausalLMMixin, SlamV2PreTrainedModel,
GenerationMixin)` with its `trunk_class` and `output_class` (slam_v1.py, slam_v2.py). The mixins build the trunk,
run it, and add the MoA load-balancing loss of a routed trunk (SLAM v2) to the head's loss.
"""

import copy

import torch
from torch import nn

from .slam_compat import cache_output, forward_arguments, output_cache
from .slam_moa import load_balancing_loss
from .slam_pretrained import EmptyBatchGenerationMixin, validate_class_labels, validate_labels


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


def router_aux_loss(config, router_logits, attention_mask, labelled=None, num_items_in_batch=None):
    """The load-balancing loss over the real tokens of this forward, and its weight in the total loss.

    Under gradient accumulation (`num_items_in_batch` given, the LM loss being a share of the big batch's
    sum), each micro-batch contributes in proportion to its labelled tokens, so the accumulated weight of
    the balancing loss stays `router_aux_loss_coef` instead of growing with the number of micro-batches.
    """
    token_mask = None
    if attention_mask is not None:
        length = router_logits[0].shape[0] // max(attention_mask.shape[0], 1)  # a batch of 0 rows has 0 logits
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


class SlamForCausalLMMixin(SlamLMHeadMixin, EmptyBatchGenerationMixin):
    """Causal LM (`GenerationMixin`: greedy, sampling, beams, KV cache; 0 rows see `EmptyBatchGenerationMixin`)."""

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
        validate_labels(labels, hidden_states.shape[:2], vocab_size=self.config.vocab_size)
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


class SlamBidirectionalHeadMixin(SlamHeadMixin):
    """The forward of the heads on the bidirectional trunk: run it, then `head_outputs` (the head's own part)."""

    head_is_causal = False

    def head_outputs(self, hidden_states, attention_mask, labels, **kwargs):
        """(logits, loss or None, labelled tokens that weigh the balancing loss, or None) of the head."""
        raise NotImplementedError

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
        logits, loss, labelled = self.head_outputs(outputs.last_hidden_state, attention_mask, labels, **kwargs)
        num_items_in_batch = None if labelled is None else kwargs.get("num_items_in_batch")
        loss, extra = self._finish_loss(loss, outputs, attention_mask, labelled, num_items_in_batch)
        return self.output_class(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **self._router_fields(extra, output_router_logits, labels),
        )


class SlamForMaskedLMMixin(SlamLMHeadMixin, SlamBidirectionalHeadMixin):
    """Masked LM on the bidirectional trunk."""

    def head_outputs(self, hidden_states, attention_mask, labels, **kwargs):
        validate_labels(labels, hidden_states.shape[:2], vocab_size=self.config.vocab_size)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        labelled = None if labels is None else (labels != -100).sum()
        return logits, loss, labelled


class SlamForSequenceClassificationMixin(SlamBidirectionalHeadMixin):
    """Bidirectional trunk, mean over real tokens, linear classifier (`config.num_labels`, `problem_type`)."""

    def __init__(self, config):
        config = self._build_trunk(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def head_outputs(self, hidden_states, attention_mask, labels, **kwargs):
        logits = self.score(mean_pool(hidden_states, attention_mask))
        loss = None
        if labels is not None:
            validate_class_labels(labels, self.config, logits.shape[0])
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config, **kwargs)
        return logits, loss, None  # one label per row: the balancing loss keeps its weight


__all__ = [
    "SlamBidirectionalHeadMixin",
    "SlamForCausalLMMixin",
    "SlamForMaskedLMMixin",
    "SlamForSequenceClassificationMixin",
    "SlamHeadMixin",
    "SlamLMHeadMixin",
    "mean_pool",
    "router_aux_loss",
    "with_causality",
]
