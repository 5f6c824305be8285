"""What every SLAM variant shares: the PreTrainedModel base, input validation, the prepared inputs of a trunk.

`SlamPreTrainedModel` holds the capability flags, weight initialisation, the embeddings and input preparation of
the decoder-only trunks (SLAM v1, v2), and saving and loading: the integrity checks of slam_checkpoint.py and the
remote-code `auto_map`, which names every class in the entry file modeling_slam.py (see `_saved_from_entry_file`).
The head mixins live in slam_heads.py, each variant in slam_v1.py, slam_v2.py and slam_v3.py.
"""

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.generation import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from .configuration_slam import auto_map_entries
from .slam_attention import masked_attention_implementation
from .slam_checkpoint import check_loading_info, make_weights_readable, verify_checkpoint_files, write_checksums
from .slam_compat import (
    CACHE_FIELD,
    DynamicCache,
    UploadHookMixin,
    create_bidirectional_mask,
    create_causal_mask,
    init,
    is_tracing,
)
from .slam_layers import SlamRotaryEmbedding
from .slam_manifest import entries_to_inherit
from .slam_windows import padding_offsets

# The file transformers loads for every SLAM model class: `auto_map` names `modeling_slam.<Class>`.
ENTRY_MODULE = "modeling_slam"


@contextlib.contextmanager
def _saved_from_entry_file(cls):
    """While a model saves, present its class as a class of the entry file modeling_slam.py.

    Why: `auto_map` names every SLAM model class `modeling_slam.<Class>` (`auto_map_entries`, which also fills in the
    trunk's entry): one entry file per repo, whichever sibling defines the class, so moving a class between the
    remote-code files never changes what a config.json says, and weights-only repos can point at one code repo with
    "org/repo--modeling_slam.<Class>". transformers' `custom_object_save` derives both what it copies and what it
    writes from `cls.__module__`: that file plus its single-dot imports, and auto_map[<auto class>] =
    "<that file>.<Class>". Left alone, it would save SlamV1ForCausalLM (defined in slam_v1.py) as
    `slam_v1.SlamV1ForCausalLM` without modeling_slam.py, which the trunk's entry `modeling_slam.SlamV1Model` needs.
    Naming the entry module for the duration of the save makes it copy modeling_slam.py with its whole import closure
    and name the class there, on every transformers version, push_to_hub included (it uploads inside save_pretrained).
    Only classes the entry file serves are concerned; a user's subclass defined elsewhere is saved the transformers
    way. The entry module is looked up, not imported (it imports this file); it is loaded wherever a SLAM class is:
    by slam_hf's __init__, or by transformers as the remote-code entry.
    """
    entry = sys.modules.get(f"{cls.__module__.rpartition('.')[0]}.{ENTRY_MODULE}")
    if entry is None or entry.__name__ == cls.__module__ or getattr(entry, cls.__name__, None) is not cls:
        yield
        return
    defined_in = cls.__module__
    cls.__module__ = entry.__name__
    try:
        yield
    finally:
        cls.__module__ = defined_in


# Token ids index an nn.Embedding, which takes these two dtypes; the token losses need torch.long labels.
ID_DTYPES = (torch.long, torch.int32)
IGNORE_INDEX = -100  # labels only: the positions the loss leaves out


class ValueChecks:
    """Checks that read tensor values, collected over a forward and read with ONE host sync (not one per check).

    Eager only: under torch.compile or torch.export a check of values would be a data-dependent branch, and a traced
    graph is fed the inputs it was traced for. A check is a 0-dim bool tensor (True = bad input) and a function that
    words the error; a message, with its own reads of the values, is only built when its check failed.
    """

    def __init__(self):
        self.enabled = not is_tracing()
        self._checks = []

    def add(self, failed, message):
        if self.enabled:
            self._checks.append((failed, message))

    def raise_first(self):
        """Raise the ValueError of the first failed check (in the order added), if any, and start over."""
        checks, self._checks = self._checks, []
        if not checks:
            return
        device = checks[0][0].device
        failed = torch.stack([flag.to(device) for flag, _ in checks]).tolist()  # the one host sync
        for flag, (_, message) in zip(failed, checks):
            if flag:
                raise ValueError(message())


def require_tensor(value, name):
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor, got {type(value).__name__}; convert it with torch.as_tensor(...) "
            "(tokenizers and processors give tensors with return_tensors='pt')."
        )


def _some_values(tensor, where):
    return tensor[where].unique()[:5].tolist()


def check_ids(checks, ids, name, vocab_size, labels=False):
    """Token ids (labels=True: token labels) of shape (batch, length), in [0, vocab_size); labels may hold -100."""
    require_tensor(ids, name)
    dtypes = (torch.long,) if labels else ID_DTYPES
    if ids.dtype not in dtypes:
        raise TypeError(
            f"`{name}` must hold integer token ids ({' or '.join(map(str, dtypes))}), got dtype {ids.dtype}; "
            "cast with .long()."
        )
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch, sequence), got {tuple(ids.shape)}.")
    outside = (ids < 0) | (ids >= vocab_size)
    if labels:
        outside = outside & (ids != IGNORE_INDEX)
    fix = "use -100 for positions the loss ignores" if labels else "use the tokenizer that matches this model"
    checks.add(
        outside.any(),
        lambda: (
            f"`{name}` holds ids outside the vocabulary [0, {vocab_size})"
            f"{' (or -100)' if labels else ''}: {_some_values(ids, outside)}; {fix}."
        ),
    )


def check_embeds(embeds, name, hidden_size):
    require_tensor(embeds, name)
    if not embeds.dtype.is_floating_point:
        raise TypeError(f"`{name}` must be a float tensor of embeddings, got dtype {embeds.dtype}.")
    if embeds.dim() != 3 or embeds.shape[-1] != hidden_size:
        raise ValueError(f"`{name}` must have shape (batch, sequence, {hidden_size}), got {tuple(embeds.shape)}.")


def check_mask(checks, mask, name, expected, one_span=False):
    """A padding mask of shape `expected` holding 0/1 (any real dtype) or bools; with `one_span`, its real tokens form
    one contiguous span per row (left or right padding). The values are one check: a mask equal to the span of its
    real tokens holds only 0/1, and which rule failed is only worked out for the message."""
    require_tensor(mask, name)
    if mask.dtype.is_complex:
        raise TypeError(f"`{name}` must hold 0/1 or bools, got dtype {mask.dtype}.")
    if mask.dim() != 2 or tuple(mask.shape) != tuple(expected):
        raise ValueError(f"`{name}` must have shape (batch, past + new tokens) = {expected}, got {tuple(mask.shape)}.")
    if not checks.enabled or (mask.dtype == torch.bool and not one_span):
        return
    failed = (mask != _real_span(mask, expected)).any() if one_span else ((mask != 0) & (mask != 1)).any()
    checks.add(failed, lambda: _mask_error(mask, name))


def _real_span(mask, expected):
    """(B, T) bool: True from each row's first real token for as many positions as the row has real tokens."""
    first, real = padding_offsets(mask, *expected, mask.device)
    positions = torch.arange(expected[1], device=mask.device)
    return (positions >= first[:, None]) & (positions < (first + real)[:, None])


def _mask_error(mask, name):
    neither = (mask != 0) & (mask != 1)
    if bool(neither.any()):
        return f"`{name}` must hold only 0 (padding) and 1 (real token), got {_some_values(mask, neither)}."
    return (
        f"`{name}` must mark one contiguous span of real tokens per row (left or right padding); SLAM windows are "
        "placed by counting real tokens, so masks with holes are not supported."
    )


def check_position_ids(checks, position_ids, batch, length):
    require_tensor(position_ids, "position_ids")
    if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex or position_ids.dtype == torch.bool:
        raise TypeError(f"`position_ids` must hold integer positions, got dtype {position_ids.dtype}.")
    if position_ids.dim() != 2 or position_ids.shape[0] not in (1, batch) or position_ids.shape[1] != length:
        raise ValueError(
            f"`position_ids` must have shape (batch, new tokens) = {(batch, length)} (or (1, {length})), got "
            f"{tuple(position_ids.shape)}."
        )
    negative = position_ids < 0
    checks.add(negative.any(), lambda: f"`position_ids` must be >= 0, got {_some_values(position_ids, negative)}.")


def validate_inputs(
    config,
    input_ids,
    inputs_embeds,
    attention_mask,
    past_length,
    ids_name="input_ids",
    *,
    position_ids=None,
    mask_name="attention_mask",
    one_span=True,
    checks=None,
):
    """Clear errors for bad forward inputs, before they turn into index errors deep in the model.

    Structure (type, dtype, rank, shapes against each other) raises at once; values (id range, 0/1 mask, one span
    of real tokens, positions >= 0) go through `ValueChecks`: read in eager mode only, with one host sync, raised
    here unless the caller passes its own `checks` (to add more and raise once). Returns (batch, new tokens).
    """
    own_checks = checks is None
    checks = ValueChecks() if own_checks else checks
    embeds_name = ids_name.replace("input_ids", "inputs_embeds")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"Pass exactly one of `{ids_name}` or `{embeds_name}`.")
    if input_ids is not None:
        check_ids(checks, input_ids, ids_name, config.vocab_size)
        batch, length = input_ids.shape
    else:
        check_embeds(inputs_embeds, embeds_name, config.hidden_size)
        batch, length = inputs_embeds.shape[:2]
    if length == 0:
        raise ValueError(f"The input sequence (`{ids_name}`) is empty; pass at least one token.")
    if attention_mask is not None:
        expected = (batch, past_length + length)
        check_mask(checks, attention_mask, mask_name, expected, one_span)
    if position_ids is not None:
        check_position_ids(checks, position_ids, batch, length)
    if own_checks:
        checks.raise_first()
    return batch, length


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


def validate_labels(labels, expected_shape, name="labels", vocab_size=None, checks=None):
    """Token labels: a torch.long tensor of `expected_shape`, ids in [0, vocab_size) or -100 (value check skipped
    without `vocab_size`; raised here unless the caller passes its own `checks`)."""
    if labels is None:
        return
    own_checks = checks is None
    checks = ValueChecks() if own_checks else checks
    if vocab_size is None:
        require_tensor(labels, name)
    else:
        check_ids(checks, labels, name, vocab_size, labels=True)
    if tuple(labels.shape) != tuple(expected_shape):
        raise ValueError(f"`{name}` must have shape {tuple(expected_shape)}, got {tuple(labels.shape)}.")
    if own_checks:
        checks.raise_first()


def validate_class_labels(labels, config, batch):
    """Labels of a sequence classifier, by the problem type transformers' loss infers: integer class ids (torch.long,
    in [0, num_labels) or -100) of shape (batch,), or float targets (regression, multi-label) of shape (batch,) or
    (batch, num_labels)."""
    require_tensor(labels, "labels")
    num_labels = config.num_labels
    problem = config.problem_type
    if problem is None:  # as ForSequenceClassificationLoss decides it
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int32):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "single_label_classification":
        if labels.dtype != torch.long:
            raise TypeError(f"`labels` must be class ids of dtype torch.long, got {labels.dtype}; cast with .long().")
        if tuple(labels.shape) != (batch,):
            raise ValueError(f"`labels` must have shape ({batch},) (one class id per row), got {tuple(labels.shape)}.")
        checks = ValueChecks()
        outside = ((labels < 0) | (labels >= num_labels)) & (labels != IGNORE_INDEX)
        checks.add(
            outside.any(),
            lambda: (
                f"`labels` holds class ids outside [0, num_labels={num_labels}) (or -100): "
                f"{_some_values(labels, outside)}."
            ),
        )
        checks.raise_first()
        return
    if not labels.dtype.is_floating_point:
        raise TypeError(
            f"`labels` of a {problem.replace('_', ' ')} head (num_labels={num_labels}, problem_type="
            f"{config.problem_type!r}) must be a float tensor, got {labels.dtype}."
        )
    if tuple(labels.shape) not in ((batch,), (batch, num_labels)):
        raise ValueError(f"`labels` must have shape ({batch},) or ({batch}, {num_labels}), got {tuple(labels.shape)}.")


class SlamPreTrainedModel(UploadHookMixin, PreTrainedModel):
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
        """transformers' from_pretrained, plus: config.json (unless `config=` is passed) and the weight files are
        checked against the `checksums.json` written at save time, a missing config.json raises instead of building
        a default model, and missing or unexpected weights raise (pass output_loading_info=True to get the lists)."""
        verify_checkpoint_files(pretrained_model_name_or_path, kwargs, cls.config_class.__name__)
        wants_info = kwargs.get("output_loading_info", False)
        kwargs["output_loading_info"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if wants_info:
            return model, info
        check_loading_info(model, info, pretrained_model_name_or_path)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained, plus: a complete `auto_map` (this class, the trunk and the config, so every
        Auto factory loads the folder as remote code) and `checksums.json` for the weight files and configs (merged
        with the entries a processor saved into the same folder recorded)."""
        if self._auto_class is not None:  # registered for remote code
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            wanted = auto_map_entries(self.config.model_type, [type(self).__name__, type(self.base_model).__name__])
            self.config.auto_map = {**auto_map, **{k: v for k, v in wanted.items() if k not in auto_map}}
        with _saved_from_entry_file(type(self)):  # auto_map names modeling_slam.<Class>; it copies that file's closure
            result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if is_main_process and os.path.isdir(save_directory):
            make_weights_readable(save_directory)
            write_checksums(save_directory)
        return result

    def before_upload(self, working_dir, repo_id, token=None, revision=None):
        # Record the checksums first, keeping the repo's entries for the files this upload leaves in place (a
        # processor pushed before the model).
        write_checksums(working_dir, entries_to_inherit(working_dir, repo_id, token, revision))

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
        batch, length = validate_inputs(
            self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids=position_ids
        )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
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
            checks, limit = ValueChecks(), self.config.max_position_embeddings
            checks.add(
                (position_ids >= limit).any(),
                lambda: (
                    f"Sequence of {int(position_ids.max()) + 1} positions exceeds max_position_embeddings="
                    f"{limit} of the learned position table; shorten `input_ids` or use position_embedding_type='rope'."
                ),
            )
            checks.raise_first()
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
        """Kernel for windows and segments (their boolean masks): see `masked_attention_implementation`."""
        return masked_attention_implementation(self.config)

    def _empty_batch_outputs(self, inputs, cache, input_ids, inputs_embeds, attention_mask, **flags):
        """The trunk's outputs for validated inputs of 0 rows (`forward_empty_batch`); the mask keeps the new
        positions only, as the placeholder row has no past."""
        length = inputs.hidden_states.shape[1]
        return forward_empty_batch(
            self,
            given_cache=cache,
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=None if attention_mask is None else attention_mask[:, -length:],
            **flags,
        )


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


def is_empty_batch(*tensors) -> bool:
    """Whether the first given tensor holds a batch of 0 rows (never under tracing: a traced batch is >= 1)."""
    if is_tracing():  # reading the size would specialise a dynamic batch dimension
        return False
    reference = next((t for t in tensors if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    return reference is not None and reference.shape[0] == 0


def _placeholder(name, value):
    """One row standing in for a validated batch of 0 rows: same dtype and trailing shape, neutral values."""
    if name in ("cache", "pixel_values", "image_grid_hw", "position_ids"):
        return None  # no past, no images (the placeholder ids hold no `<image>`), positions derived
    if name == "encoder_outputs" and value is not None:
        memory = value[0] if isinstance(value, (tuple, list)) else value.last_hidden_state
        return (memory.new_zeros(1, *memory.shape[1:]),)
    if not isinstance(value, torch.Tensor):
        return value
    if name.endswith("attention_mask"):
        return value.new_ones(1, value.shape[1])
    if name == "labels":
        return value.new_full((1, *value.shape[1:]), IGNORE_INDEX)
    return value.new_zeros(1, *value.shape[1:])


def _cut_to_empty(value):
    if isinstance(value, torch.Tensor):
        return value[:0]
    if isinstance(value, tuple) and all(isinstance(item, torch.Tensor) for item in value):
        return tuple(item[:0] for item in value)
    return value


def forward_empty_batch(model, given_cache=None, **arguments):
    """The outputs of a (validated) batch of 0 rows: `model.forward` on one placeholder row, cut to 0 rows.

    Why a placeholder row: attention reshapes (`view(batch, length, -1, head_dim)`) cannot infer a size from 0
    elements, and this way every output comes out shaped as for a real batch (hidden states of every layer, router
    logits, the cache) and stays connected to the weights. The loss is transformers' own over 0 rows: NaN when
    mean-reduced (as torch's cross-entropy of nothing), 0 with zero gradients given `num_items_in_batch` (Trainer).
    A given cache is returned unchanged (it holds no rows); a new one is cut to 0 rows.
    """
    row = {name: _placeholder(name, value) for name, value in arguments.items()}
    outputs = model.forward(**row, return_dict=True)
    for name, value in outputs.items():
        if name == CACHE_FIELD:
            if given_cache is None:
                value.reorder_cache(torch.zeros(0, dtype=torch.long, device=model.device))
            outputs[name] = given_cache if given_cache is not None else value
        else:
            outputs[name] = _cut_to_empty(value)
    return outputs


class EmptyBatchGenerationMixin:
    """`generate()` on a batch of 0 rows (mixed in before `GenerationMixin`).

    Why: transformers' decoding loop cannot run on 0 rows (its stopping check reduces an empty tensor;
    `LlamaForCausalLM.generate` fails the same way). The inputs are validated by one forward (which handles 0 rows)
    and the result is what generate returns, with 0 rows: the prompt for decoder-only models (no new tokens), the
    decoder start for SLAM v3, in a `Generate*Output` when `return_dict_in_generate` asks for one.
    """

    def generate(self, inputs=None, **kwargs):
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if not is_empty_batch(prompt if prompt is not None else kwargs.get("inputs_embeds")):
            return super().generate(inputs, **kwargs)
        model_inputs = {name: value for name, value in kwargs.items() if name in self._empty_batch_inputs}
        if inputs is not None:
            model_inputs["input_ids"] = inputs
        encoder_decoder = self.config.is_encoder_decoder
        if encoder_decoder:
            start = self.config.decoder_start_token_id
            sequences = torch.full((0, 1), 0 if start is None else start, dtype=torch.long, device=self.device)
            model_inputs["decoder_input_ids"] = sequences
        elif "input_ids" in model_inputs:
            sequences = model_inputs["input_ids"]
        else:  # from inputs_embeds, generate returns the new tokens only
            sequences = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        with torch.no_grad():
            self(**model_inputs, use_cache=False)  # the same checks as for any batch
        config = kwargs.get("generation_config") or self.generation_config
        if not kwargs.get("return_dict_in_generate", config.return_dict_in_generate):
            return sequences
        output_class = GenerateEncoderDecoderOutput if encoder_decoder else GenerateDecoderOnlyOutput
        return output_class(sequences=sequences)

    # The generate() arguments that are model inputs (the rest configure decoding).
    _empty_batch_inputs = frozenset(
        ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "pixel_values", "image_grid_hw", "aux_values")
    )


__all__ = [
    "EmptyBatchGenerationMixin",
    "PreparedInputs",
    "SlamPreTrainedModel",
    "forward_empty_batch",
    "is_empty_batch",
    "raise_if_output_attentions",
    "refuse_static_cache",
    "ValueChecks",
    "validate_class_labels",
    "validate_inputs",
    "validate_labels",
]
