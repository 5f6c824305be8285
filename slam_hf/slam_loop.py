"""The latent-loop transformer (DESIGN §6): a shared core that iterates per token and stops when it is confident.

    embed -> prelude layers -> core (shared layers) x up to N iterations, prelude output re-injected each time
          -> coda layers -> norm -> head;  per token, a confidence head reads the state after every iteration.

Iteration i runs the core on inject(s_{i-1}, e) (e = prelude output, s_0 = 0). At inference a token whose exit
criterion fires keeps its state from then on, and its last K/V stand in for it at every deeper iteration (the
per-iteration cache's "no holes" rule, applied the same way with and without a cache, so cached == uncached). Rows
with no active token left do not run the next iteration: the active rows are gathered, run and scattered back, so a
batch saves compute too. Training samples the depth per step (slam_loop_training.py) and trains the confidence head
on detached per-iteration token losses.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import ModelOutput, logging

from .configuration_slam import SlamLoopConfig
from .slam_blocks import SlamLayer
from .slam_compat import cache_output, forward_arguments, output_cache, share_attention_implementation
from .slam_heads import SlamLMHeadMixin
from .slam_layers import make_norm
from .slam_loop_training import confidence_loss, sample_iterations, token_losses
from .slam_pretrained import (
    EmptyBatchGenerationMixin,
    SlamPreTrainedModel,
    is_empty_batch,
    raise_if_output_attentions,
    refuse_static_cache,
    validate_inputs,
    validate_labels,
)
from .slam_validation import LOOP_SPECS
from .slam_vision import SlamRotaryEmbedding2D, SlamVisionTower, place_image_features, placeholder_grid_positions

logger = logging.get_logger(__name__)

EXIT_CRITERIA = ("confidence", "kl", "hidden_change", "none")  # "none": every token runs full depth
MAX_EXIT_THRESHOLD = LOOP_SPECS["loop_exit_threshold"].high


@dataclass
class SlamLoopModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus, per token, the core iterations it ran (`loop_iterations`, (B, L) long), the
    confidence logits after each iteration (`confidence_logits`, one (B, L) tensor per iteration run) and, when a
    probe was given, its outputs after each iteration (`iteration_probes`)."""

    loop_iterations: torch.LongTensor | None = None
    confidence_logits: tuple[torch.FloatTensor, ...] | None = None
    iteration_probes: tuple[torch.Tensor, ...] | None = None


@dataclass
class SlamLoopCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `loop_iterations` (B, L) and, when training with labels, `lm_loss` and the
    confidence head's `confidence_loss` (`loss` = lm_loss + loop_confidence_loss_weight * confidence_loss)."""

    loop_iterations: torch.LongTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    confidence_loss: torch.FloatTensor | None = None


class SlamLoopPreTrainedModel(SlamPreTrainedModel):
    config_class = SlamLoopConfig
    _no_split_modules = ["SlamLayer", "SlamLoopCoreLayer"]


class SlamLoopCoreLayer(SlamLayer):
    """A core layer: the usual attention + MLP, with its keys and values passed through `kv_store` (the loop's
    fill rule and cache slot for this iteration) between projection and attention."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, kv_store=None, **kwargs):
        q, k, v = self.self_attn.project(self.attention_input(hidden_states), position_embeddings)
        k, v = kv_store(k, v)
        attn_output, _ = self.self_attn.attend(q, k, v, attention_mask)
        return self.finish(hidden_states, attn_output)


class _CoreKeyValues:
    """Per forward: each token's keys and values at its last active iteration, per core layer, and the cache.

    `store(layer, iteration, rows, active)` gives the `kv_store` of one core layer in one iteration: it keeps the new
    K/V of the active tokens of the running `rows` (exited tokens keep their last ones), records them for the whole
    batch, writes them to the cache slot of this iteration (per_iteration) and returns the keys the running rows
    attend to. In "shared" mode the cache holds past tokens' last K/V, written once at the end of the forward.
    """

    def __init__(self, config, cache, past_length, prelude_layers):
        self.cache = cache
        self.per_iteration = config.loop_cache == "per_iteration"
        self.first_slot = prelude_layers
        self.core_layers = config.core_layers
        self.past_length = past_length
        self.last = [None] * config.core_layers  # (B, kv_heads, L, D) keys, values per layer
        self._past = {}  # shared mode: past keys/values per layer, read once

    def slot(self, layer, iteration):
        return self.first_slot + (iteration - 1 if self.per_iteration else 0) * self.core_layers + layer

    def store(self, layer, iteration, rows, active):
        def kv_store(keys, values):
            if active is not None and self.last[layer] is not None:  # exited tokens keep their last K/V
                last_keys, last_values = (t if rows is None else t[rows] for t in self.last[layer])
                keep = active[:, None, :, None]
                keys, values = torch.where(keep, keys, last_keys), torch.where(keep, values, last_values)
            if rows is None:
                self.last[layer] = (keys, values)
            else:
                self.last[layer] = tuple(t.index_copy(0, rows, new) for t, new in zip(self.last[layer], (keys, values)))
            if self.cache is None:
                return keys, values
            if self.per_iteration:
                all_keys, all_values = self.cache.update(*self.last[layer], self.slot(layer, iteration))
                return (all_keys, all_values) if rows is None else (all_keys[rows], all_values[rows])
            if self.past_length == 0:
                return keys, values
            past_keys, past_values = self._read_past(layer)
            if rows is not None:
                past_keys, past_values = past_keys[rows], past_values[rows]
            return torch.cat((past_keys, keys), dim=2), torch.cat((past_values, values), dim=2)

        return kv_store

    def _read_past(self, layer):
        if layer not in self._past:
            empty = self.last[layer][0][:, :, :0]
            self._past[layer] = self.cache.update(empty, empty, self.slot(layer, 1))  # adds nothing, returns the past
        return self._past[layer]

    def finish(self, iterations_run, max_iterations):
        """Write what the cache still lacks: the deeper per-iteration slots of a loop that stopped early, or the
        shared slots (each token's last K/V)."""
        if self.cache is None:
            return
        if not self.per_iteration:
            for layer in range(self.core_layers):
                self.cache.update(*self.last[layer], self.slot(layer, 1))
            return
        for iteration in range(iterations_run + 1, max_iterations + 1):
            for layer in range(self.core_layers):
                self.cache.update(*self.last[layer], self.slot(layer, iteration))


@dataclass
class _LoopSettings:
    iterations: int  # iterations to run (at most)
    grad_from: int  # first iteration with a graph (truncated backprop); 1 = all
    criterion: str | None  # exit criterion, None: no exit
    threshold: float | None
    loss_trigger: float | None = None  # training, "loss_triggered": go past iteration 1 only above this token loss


class SlamLoopModel(SlamLoopPreTrainedModel):
    """The latent-loop trunk: prelude, looped core with per-token exit, coda, final norm."""

    has_router = False

    def __init__(self, config: SlamLoopConfig):
        super().__init__(config)
        self.is_causal = True
        self._build_embeddings(config)
        prelude, core, coda = config.prelude_layers, config.core_layers, config.coda_layers
        self.prelude = nn.ModuleList([SlamLayer(config, idx) for idx in range(prelude)])
        # Core layers get their cache slot per iteration from _CoreKeyValues, not a fixed layer_idx.
        self.core = nn.ModuleList([SlamLoopCoreLayer(config, None) for _ in range(core)])
        first_coda = prelude + core * config.core_cache_slots
        self.coda = nn.ModuleList([SlamLayer(config, first_coda + idx) for idx in range(coda)])
        self.injection = None
        if config.loop_injection == "concat":
            self.injection = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.confidence_norm = make_norm(config)
        self.confidence_head = nn.Linear(config.hidden_size, 1)
        self.norm = make_norm(config)
        self.vision_tower = self.patch_rotary_emb = None
        if config.vision_config is not None:  # image-text: patches at the `<image>` placeholders, 2D RoPE for them
            share_attention_implementation(config)  # the vision tower reads its sub-config
            self.vision_tower = SlamVisionTower(config.vision_config, text_hidden_size=config.hidden_size)
            if config.position_embedding_type == "rope":
                self.patch_rotary_emb = SlamRotaryEmbedding2D(config.head_dim, config.rope_theta)
        self.gradient_checkpointing = False
        # Running state, not weights (plain attributes: from_pretrained would leave buffers uninitialised):
        self.loop_counts = None  # see _count_iterations
        self.post_init()

    def inject(self, state, prelude_output):
        if self.injection is None:
            return state + prelude_output
        return self.injection(torch.cat((state, prelude_output), dim=-1))

    def confidence_logits(self, state):
        """(B, L, hidden) -> (B, L): the confidence head's logit that this state is good enough to stop."""
        return self.confidence_head(self.confidence_norm(state)).squeeze(-1)

    def loop_settings(self, loop_iterations, loop_exit_criterion, loop_exit_threshold) -> _LoopSettings:
        config = self.config
        maximum = config.loop_max_iterations
        if loop_iterations is not None:
            if not isinstance(loop_iterations, int) or isinstance(loop_iterations, bool):
                raise TypeError(f"`loop_iterations` must be an int, got {type(loop_iterations).__name__}.")
            if not 1 <= loop_iterations <= maximum:
                raise ValueError(
                    f"`loop_iterations` must be in [1, loop_max_iterations={maximum}], got {loop_iterations}."
                )
        criterion = config.loop_exit_criterion if loop_exit_criterion is None else loop_exit_criterion
        if criterion not in EXIT_CRITERIA:
            raise ValueError(
                f"`loop_exit_criterion` must be one of {', '.join(map(repr, EXIT_CRITERIA))}, got "
                f"{loop_exit_criterion!r}."
            )
        if loop_exit_threshold is not None and (
            not isinstance(loop_exit_threshold, (int, float)) or isinstance(loop_exit_threshold, bool)
        ):
            raise TypeError(f"`loop_exit_threshold` must be a number, got {type(loop_exit_threshold).__name__}.")
        if loop_exit_threshold is not None and not 0 <= loop_exit_threshold <= (
            1 if criterion == "confidence" else MAX_EXIT_THRESHOLD
        ):
            raise ValueError(
                f"`loop_exit_threshold` must be in [0, {MAX_EXIT_THRESHOLD:g}] (at most 1 for a confidence), got "
                f"{loop_exit_threshold!r}."
            )
        threshold = config.loop_exit_threshold if loop_exit_threshold is None else loop_exit_threshold
        if criterion == "none":
            threshold = None
        if self.training:
            iterations = loop_iterations or sample_iterations(config)
            grad_from = max(1, iterations - config.loop_backprop_iterations + 1)
            triggered = loop_iterations is None and config.loop_iteration_sampling == "loss_triggered"
            return _LoopSettings(iterations, grad_from, None, None, config.loop_loss_trigger if triggered else None)
        iterations = loop_iterations or maximum
        return _LoopSettings(iterations, 1, None if threshold is None else criterion, threshold)

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
        loop_iterations: int | None = None,
        loop_exit_criterion: str | None = None,
        loop_exit_threshold: float | None = None,
        iteration_probe=None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        **kwargs,
    ) -> SlamLoopModelOutput:
        r"""loop_iterations: run exactly this many core iterations (at most loop_max_iterations) instead of the
        sampled (training) or maximal (inference) depth. loop_exit_criterion, loop_exit_threshold: override the
        config's exit for this call ("none": no exit). iteration_probe: a function of the normed coda output after
        every iteration, (B, L, hidden) -> anything, run without gradients; its results are returned as
        `iteration_probes` (the causal-LM head passes one that gives token losses to train the confidence head, or
        log-probabilities for the "kl" exit). pixel_values, image_grid_hw: images for the `<image>` placeholders
        (a model with a `vision_config`; SlamProcessor gives both)."""
        raise_if_output_attentions(output_attentions, "the core runs several times per layer")
        settings = self.loop_settings(loop_iterations, loop_exit_criterion, loop_exit_threshold)
        is_image = None
        if self.vision_tower is not None:
            inputs_embeds, is_image = self._embed_images(
                input_ids, inputs_embeds, attention_mask, position_ids, cache, pixel_values, image_grid_hw
            )
            input_ids = None
        elif pixel_values is not None or image_grid_hw is not None:
            raise ValueError(
                "This latent-loop model has no vision tower (config.vision_config is None), so it takes no "
                "`pixel_values`; build SlamLoopForImageTextToText with a `vision_config` for images."
            )
        inputs = self._prepare_inputs(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache)
        if is_image is not None and pixel_values is not None and self.patch_rotary_emb is not None:
            inputs.position_embeddings = self._selective_rope(inputs.position_embeddings, is_image, pixel_values)
        if is_empty_batch(inputs.hidden_states):
            flags = dict(use_cache=use_cache, output_hidden_states=output_hidden_states)
            return self._empty_batch_outputs(inputs, cache, input_ids, inputs_embeds, attention_mask, **flags)
        if settings.criterion == "kl":
            if iteration_probe is None:
                raise ValueError(
                    "loop_exit_criterion='kl' compares next-token distributions, which the trunk cannot compute; "
                    "use SlamLoopForCausalLM, or 'confidence' / 'hidden_change'."
                )
            if inputs.cache is not None:
                raise ValueError(
                    "loop_exit_criterion='kl' probes the coda after every iteration, which a cached decode cannot do "
                    "without writing the coda's cache; pass use_cache=False, or use 'confidence' / 'hidden_change'."
                )
        hidden_states, cache = inputs.hidden_states, inputs.cache
        layer_inputs = dict(position_embeddings=inputs.position_embeddings, attention_mask=inputs.full_mask)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.prelude:
            hidden_states = layer(hidden_states, cache=cache, **layer_inputs)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

        token_mask = None if inputs.attention_mask is None else inputs.attention_mask[:, -hidden_states.shape[1] :]
        state, iterations, confidences, probes = self._loop(
            hidden_states, inputs, settings, token_mask, iteration_probe, layer_inputs
        )
        if not self.training:
            self._count_iterations(iterations, token_mask, inputs.past_length)
        if output_hidden_states:
            all_hidden_states += (state,)
        hidden_states = state
        for layer in self.coda:
            hidden_states = layer(hidden_states, cache=cache, **layer_inputs)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return SlamLoopModelOutput(
            last_hidden_state=self.norm(hidden_states),
            **cache_output(cache if inputs.use_cache else None),
            hidden_states=all_hidden_states,
            loop_iterations=iterations,
            confidence_logits=confidences,
            iteration_probes=probes,
        )

    def _embed_images(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, pixel_values, grid_hw):
        """Token embeddings with the vision tower's patch features at the `<image>` placeholders, and where those
        are (B, L). The ids are validated first (they index the embedding table)."""
        refuse_static_cache(cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        validate_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids=position_ids)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        return place_image_features(
            self.vision_tower,
            self.embed_tokens,
            self.config.image_token_id,
            input_ids,
            inputs_embeds,
            pixel_values,
            grid_hw,
        )

    def _selective_rope(self, position_embeddings, is_image, pixel_values):
        """Text keeps its 1D RoPE (position in the sequence); image patches get 2D RoPE over their grid (row,
        column), so attention among an image's patches depends on their 2D offset."""
        grid_height, grid_width = self.vision_tower.patch_embed.grid_size(pixel_values)
        grid = placeholder_grid_positions(is_image, grid_width, grid_height * grid_width)
        patch_cos, patch_sin = self.patch_rotary_emb(grid, position_embeddings[0].dtype)
        keep = is_image[..., None]
        return tuple(torch.where(keep, patch, text) for patch, text in zip((patch_cos, patch_sin), position_embeddings))

    def _count_iterations(self, iterations, token_mask, past_length):
        """Accumulate (tokens, core iterations) of prompts (no past) and of later steps, on the device (no sync);
        `SlamLoopForCausalLM.generate` reads and resets them."""
        real = torch.ones_like(iterations) if token_mask is None else token_mask.to(iterations.dtype)
        counts = torch.stack((real.sum(), (iterations * real).sum()))
        offset = 0 if past_length == 0 else 2
        if self.loop_counts is None or self.loop_counts.device != counts.device:
            self.reset_loop_statistics(counts.device)
        self.loop_counts[offset : offset + 2] += counts

    def loop_statistics(self) -> dict:
        """Mean core iterations per token since the counts were reset: of prompt tokens (forwards without a past)
        and of the tokens after them (decode steps), with the maximum and the share of core compute saved."""
        counts = self.loop_counts.tolist() if self.loop_counts is not None else [0] * 4
        prompt_tokens, prompt_iterations, new_tokens, new_iterations = counts
        maximum = self.config.loop_max_iterations
        stats = {"max_iterations": maximum}
        for name, tokens, total in (("prompt", prompt_tokens, prompt_iterations), ("new", new_tokens, new_iterations)):
            stats[f"{name}_tokens"] = int(tokens)
            stats[f"{name}_mean_iterations"] = total / tokens if tokens else None
        if new_tokens:
            stats["new_compute_saved"] = 1 - stats["new_mean_iterations"] / maximum
        return stats

    def reset_loop_statistics(self, device=None):
        self.loop_counts = torch.zeros(4, dtype=torch.long, device=device)

    def probe_coda(self, state, layer_inputs):
        """The normed coda output of a core state, without the cache (what the head would see if every token
        stopped here)."""
        hidden_states = state
        for layer in self.coda:
            hidden_states = layer(hidden_states, cache=None, **layer_inputs)
        return self.norm(hidden_states)

    def _loop(self, prelude_output, inputs, settings, token_mask, iteration_probe, layer_inputs):
        """Run the core; returns (state, iterations per token (B, L), confidence logits, probe outputs)."""
        batch, length, _ = prelude_output.shape
        kv = _CoreKeyValues(self.config, inputs.cache, inputs.past_length, self.config.prelude_layers)
        active = None  # (B, L) tokens still iterating; None: all, no exit
        if settings.criterion is not None:
            active = torch.ones(batch, length, dtype=torch.bool, device=prelude_output.device)
            if token_mask is not None:
                active &= token_mask.bool()  # padding never keeps a row in the loop
        wants_confidence = settings.criterion == "confidence" or (
            self.training and self.config.loop_confidence_loss_weight > 0
        )
        state = torch.zeros_like(prelude_output)
        iterations = torch.zeros(batch, length, dtype=torch.long, device=prelude_output.device)
        confidences, probes = [], []
        ran = 0
        for iteration in range(1, settings.iterations + 1):
            rows = None  # running rows; None: all
            if active is not None and iteration > 1:
                running = active.any(-1)
                if not bool(running.any()):  # one host sync per iteration, only with an exit
                    break
                if not bool(running.all()):
                    rows = running.nonzero().squeeze(-1)
            previous = state
            with_graph = iteration >= settings.grad_from or (iteration == 1 and settings.loss_trigger is not None)
            with torch.set_grad_enabled(torch.is_grad_enabled() and with_graph):
                if iteration == settings.grad_from and iteration > 1:
                    previous = previous.detach()  # truncated backprop: no graph into the earlier iterations
                state = self._iterate(previous, prelude_output, rows, active, iteration, kv, layer_inputs)
            iterations = iterations + (1 if active is None else active.long())
            ran = iteration

            confidence = probe = None
            if wants_confidence:
                confidence = self.confidence_logits(state.detach() if self.training else state)
                confidences.append(confidence)
            if iteration_probe is not None:
                with torch.no_grad():
                    probe = iteration_probe(self.probe_coda(state, layer_inputs))
                probes.append(probe)
            if active is not None and iteration < settings.iterations:
                active = active & ~self._exits(settings, confidence, state, previous, probe, probes)
            if iteration == 1 and settings.loss_trigger is not None and probe is not None:
                if not torch.nanmean(probe) > settings.loss_trigger:  # one host sync, only for this rule
                    break
        kv.finish(ran, self.config.loop_max_iterations)
        return state, iterations, tuple(confidences) or None, tuple(probes) or None

    @staticmethod
    def _exits(settings, confidence, state, previous, probe, probes):
        """(B, L) bool: tokens whose exit criterion fires after this iteration."""
        if settings.criterion == "confidence":
            return torch.sigmoid(confidence.float()) >= settings.threshold
        if settings.criterion == "hidden_change":
            change = (state - previous).float().norm(dim=-1) / state.float().norm(dim=-1).clamp(min=1e-6)
            return change <= settings.threshold
        if len(probes) < 2:  # "kl": needs two successive distributions
            return torch.zeros(state.shape[:2], dtype=torch.bool, device=state.device)
        log_p, log_q = probe.float(), probes[-2].float()
        return (log_p.exp() * (log_p - log_q)).sum(-1) <= settings.threshold

    def _iterate(self, state, prelude_output, rows, active, iteration, kv, layer_inputs):
        """One pass of the core over the running `rows` (None: all) -> the whole batch's new state; tokens no
        longer `active` keep theirs."""
        position_embeddings, mask = layer_inputs["position_embeddings"], layer_inputs["attention_mask"]
        row_state, row_active = state, active
        if rows is not None:
            row_state, prelude_output = state[rows], prelude_output[rows]
            row_active = None if active is None else active[rows]

            def pick(t):
                return t if t is None or t.shape[0] == 1 else t[rows]

            mask = pick(mask)
            if position_embeddings is not None:
                position_embeddings = tuple(pick(t) for t in position_embeddings)
        hidden_states = self.inject(row_state, prelude_output)
        for index, layer in enumerate(self.core):
            kv_store = kv.store(index, iteration, rows, row_active)
            hidden_states = layer(hidden_states, position_embeddings, mask, kv_store=kv_store)
        if row_active is not None:
            hidden_states = torch.where(row_active[..., None], hidden_states, row_state)
        return hidden_states if rows is None else state.index_copy(0, rows, hidden_states)


# The arguments a head hands to the trunk.
TRUNK_ARGUMENTS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cache",
    "inputs_embeds",
    "use_cache",
    "output_hidden_states",
    "output_attentions",
    "loop_iterations",
    "loop_exit_criterion",
    "loop_exit_threshold",
    "pixel_values",
    "image_grid_hw",
)


class SlamLoopForCausalLM(SlamLMHeadMixin, EmptyBatchGenerationMixin, SlamLoopPreTrainedModel, GenerationMixin):
    """Causal LM on the latent loop: `generate` with cache, beams and sampling; per-token exit at inference.

    With labels in training mode the loss is the LM loss plus `loop_confidence_loss_weight` times the confidence
    head's BCE on the detached per-iteration token losses (its input is detached, so no gradient of it reaches the LM).
    After `generate`, `loop_statistics` holds the mean core iterations per prompt and per new token (also logged
    at INFO and, with `return_dict_in_generate=True`, returned as `loop_statistics` in the output).
    """

    trunk_class = SlamLoopModel
    output_class = SlamLoopCausalLMOutput
    loop_statistics = None
    # generate() on 0 rows validates these too (EmptyBatchGenerationMixin)
    _empty_batch_inputs = EmptyBatchGenerationMixin._empty_batch_inputs | {
        "loop_iterations",
        "loop_exit_criterion",
        "loop_exit_threshold",
    }

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
        logits_to_keep: int | torch.Tensor = 0,
        loop_iterations: int | None = None,
        loop_exit_criterion: str | None = None,
        loop_exit_threshold: float | None = None,
        **kwargs,
    ) -> SlamLoopCausalLMOutput:
        r"""loop_iterations, loop_exit_criterion, loop_exit_threshold: see `SlamLoopModel.forward`."""
        return self._lm_forward(locals(), kwargs)

    def _lm_forward(self, arguments: dict, kwargs: dict) -> SlamLoopCausalLMOutput:
        """The forward of both heads, from their arguments (`locals()` of their forward) and loss kwargs."""
        labels, loop_exit_threshold = arguments["labels"], arguments["loop_exit_threshold"]
        train_confidence = self.training and labels is not None and self.config.loop_confidence_loss_weight > 0
        loss_triggered = (
            self.training and labels is not None and self.config.loop_iteration_sampling == "loss_triggered"
        )
        criterion = arguments["loop_exit_criterion"] or self.config.loop_exit_criterion
        threshold = self.config.loop_exit_threshold if loop_exit_threshold is None else loop_exit_threshold
        probe = None
        if train_confidence or loss_triggered:
            if arguments["input_ids"] is not None:
                validate_labels(labels, arguments["input_ids"].shape, vocab_size=self.config.vocab_size)

            def probe(hidden_states):
                return token_losses(self.lm_head(hidden_states), labels)

        elif not self.training and criterion == "kl" and threshold is not None:

            def probe(hidden_states):
                return torch.log_softmax(self.lm_head(hidden_states).float(), dim=-1)

        trunk_arguments = {name: arguments[name] for name in TRUNK_ARGUMENTS if name in arguments}
        outputs = self.model(**trunk_arguments, iteration_probe=probe, return_dict=True)
        hidden_states = outputs.last_hidden_state
        validate_labels(labels, hidden_states.shape[:2], vocab_size=self.config.vocab_size)
        logits_to_keep = arguments["logits_to_keep"]
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = lm_loss = head_loss = None
        if labels is not None:
            loss = lm_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        if train_confidence and outputs.iteration_probes:
            full_depth = len(outputs.iteration_probes) == self.config.loop_max_iterations
            head_loss = confidence_loss(
                self.config,
                outputs.confidence_logits,
                outputs.iteration_probes,
                labels,
                full_depth,
                kwargs.get("num_items_in_batch"),
            )
            loss = loss + self.config.loop_confidence_loss_weight * head_loss.to(loss.device)
        return self.output_class(
            loss=loss,
            logits=logits,
            **cache_output(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            loop_iterations=outputs.loop_iterations,
            lm_loss=lm_loss if head_loss is not None else None,
            confidence_loss=head_loss,
        )

    def generate(self, inputs=None, **kwargs):
        """transformers' generate, then the mean core iterations it used (`loop_statistics`)."""
        self.model.reset_loop_statistics()
        output = super().generate(inputs, **kwargs)
        stats = self.loop_statistics = self.model.loop_statistics()
        if stats["new_tokens"]:
            logger.info(
                "slam_loop generate: %.2f of %d core iterations per new token (%.0f%% of core compute saved), "
                "%s per prompt token",
                stats["new_mean_iterations"],
                stats["max_iterations"],
                100 * stats["new_compute_saved"],
                "n/a" if stats["prompt_mean_iterations"] is None else f"{stats['prompt_mean_iterations']:.2f}",
            )
        if isinstance(output, ModelOutput):
            output["loop_statistics"] = stats
        return output


class SlamLoopForImageTextToText(SlamLoopForCausalLM):
    """Image(s) + text in, text out, in one causal sequence (AutoModelForImageTextToText): the vision tower's patch
    features replace the `<image>` placeholders that SlamProcessor expands (one per patch), the decoder rotates patches
    with 2D RoPE over their grid and text with 1D RoPE, and the loop, exit and caches are the causal LM's. `generate`
    encodes the images once, in the prefill; later steps read them from the cache."""

    def __init__(self, config: SlamLoopConfig):
        if config.vision_config is None:
            raise ValueError(
                "SlamLoopForImageTextToText needs a vision tower: set `vision_config` (a SlamV3VisionConfig or its "
                "dict) in the SlamLoopConfig, or use SlamLoopForCausalLM for text only."
            )
        super().__init__(config)
        if self.generation_config.suppress_tokens is None:
            # A generated `<image>` would be a placeholder without an image: never decode one.
            self.generation_config.suppress_tokens = [config.image_token_id]

    @forward_arguments
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loop_iterations: int | None = None,
        loop_exit_criterion: str | None = None,
        loop_exit_threshold: float | None = None,
        **kwargs,
    ) -> SlamLoopCausalLMOutput:
        r"""pixel_values (N, C, H, W), image_grid_hw (N, 2): the images of the `<image>` placeholders, in order.
        loop_iterations, loop_exit_criterion, loop_exit_threshold: see `SlamLoopModel.forward`."""
        return self._lm_forward(locals(), kwargs)

    def prepare_inputs_for_generation(
        self, input_ids, inputs_embeds=None, pixel_values=None, image_grid_hw=None, **kwargs
    ):
        """The images go to the prefill only: after it their patches are in the cache, and the new tokens hold no
        placeholders. Without a cache every step re-reads the whole sequence, images included."""
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        cache = inputs.get("cache", inputs.get("past_key_values"))
        if cache is None or cache.get_seq_length() == 0:
            inputs.update(pixel_values=pixel_values, image_grid_hw=image_grid_hw)
        return inputs


__all__ = [
    "SlamLoopCausalLMOutput",
    "SlamLoopForCausalLM",
    "SlamLoopForImageTextToText",
    "SlamLoopModel",
    "SlamLoopModelOutput",
    "SlamLoopPreTrainedModel",
]
