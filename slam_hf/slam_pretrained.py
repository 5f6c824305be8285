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

from .configuration_slam import auto_map_entries
from .slam_attention import masked_attention_implementation
from .slam_checkpoint import check_loading_info, make_weights_readable, verify_checkpoint_files, write_checksums
from .slam_compat import (
    DynamicCache,
    UploadHookMixin,
    create_bidirectional_mask,
    create_causal_mask,
    init,
    is_tracing,
)
from .slam_layers import SlamRotaryEmbedding
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
                f"`inputs_embeds` must have shape (batch, sequence, {config.hidden_size}), "
                f"got {tuple(inputs_embeds.shape)}."
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
        with _saved_from_entry_file(type(self)):  # auto_map names modeling_slam.<Class>; it copies that file's closure
            result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if is_main_process and os.path.isdir(save_directory):
            make_weights_readable(save_directory)
            write_checksums(save_directory)
        return result

    def before_upload(self, working_dir):
        # save_pretrained(push_to_hub=True) uploads before returning: record the checksums first.
        write_checksums(working_dir)

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
        """Kernel for windows and segments (their boolean masks): see `masked_attention_implementation`."""
        return masked_attention_implementation(self.config)


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


__all__ = [
    "PreparedInputs",
    "SlamPreTrainedModel",
    "raise_if_output_attentions",
    "refuse_static_cache",
    "validate_inputs",
    "validate_labels",
]
