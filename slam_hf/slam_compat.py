"""The one place that knows how transformers' contract differs between the releases we support (remote code).

Everything else imports these names from here, so a transformers release that moves or renames one of them is
fixed in a single file. Public entry points where transformers has them; where it has none, the private name is
used here only, behind a named function whose comment says why (`call_checkpointed`, `cached_file_or_none`,
`share_attention_implementation`, `UploadHookMixin`).

The cache argument: transformers 5.24 renamed the cache argument of every forward and the cache field of every
output class from `past_key_values` to `cache` (`@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`
on its own models); `generate()` passes and reads the new name from then on, the old one before. SLAM forwards
take `cache`, accept `past_key_values` as an alias while the supported range includes releases that use it, and
return the cache in the output field the running release declares (`CACHE_FIELD`), which is the one its
`generate()` reads. `forward_arguments` applies this (and the rest of the keyword contract) to every forward.
"""

import functools
import inspect

import torch
from transformers import initialization as init  # init helpers that skip tensors loaded from a checkpoint
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.hub import cached_file

# The output field (and forward argument) that holds the cache in the running release: "cache" from 5.24 on.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
LEGACY_CACHE_ARGUMENT = "past_key_values"

# Keyword arguments a forward may receive without naming them: transformers' Trainer passes `num_items_in_batch`
# to models whose forward takes **kwargs (HF_GUIDE §7), and heads hand it to `loss_function`.
LOSS_KWARGS = frozenset({"num_items_in_batch"})


def get_attention_function(implementation: str, eager_fallback):
    """The attention kernel registered under `implementation` (sdpa, flash_attention_2, flex_attention, ...)."""
    if implementation == "eager":
        return eager_fallback
    return ALL_ATTENTION_FUNCTIONS[implementation]


def call_checkpointed(layer, function, *args):
    """`function(*args)` under the gradient checkpointing that `gradient_checkpointing_enable()` set on `layer`.

    Why private: transformers stores the checkpoint function it built from the user's `gradient_checkpointing_kwargs`
    (use_reentrant, ...) on every `GradientCheckpointingLayer` as `_gradient_checkpointing_func` and has no public
    accessor. A batched computation that runs several layers' weights without calling the layers (SLAM v3's
    parallel paths) uses it so that it checkpoints exactly as the layers would.
    """
    return layer._gradient_checkpointing_func(function, *args)


def share_attention_implementation(config):
    """Give the sub-configs (SLAM v3's vision config) the attention backend transformers settled on for the model.

    Why: `PreTrainedModel.__init__` stores the backend it settles on (sdpa when none was asked for) on the private
    `_attn_implementation_internal`, which does not reach sub-configs; the vision tower is no PreTrainedModel and reads
    its sub-config. The `_attn_implementation` setter, which transformers' from_pretrained uses, propagates it.
    """
    config._attn_implementation = config._attn_implementation


def cached_file_or_none(source, filename, hub_kwargs: dict, unreachable_is_missing: bool = True):
    """transformers' `cached_file`, but None instead of an error for a file the repo or folder does not have (and,
    with `unreachable_is_missing`, for a Hub that cannot be reached).

    Why private: `cached_file` offers this only through its `_raise_exceptions_for_*` flags (5.10 to 5.25); the
    public `has_file` asks the Hub without resolving the local cache or a folder.
    """
    return cached_file(
        source,
        filename,
        **hub_kwargs,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=not unreachable_is_missing,
    )


class UploadHookMixin:
    """Calls `self.before_upload(folder, repo_id, token=, revision=)` right before `push_to_hub` or
    `save_pretrained(push_to_hub=True)` uploads a folder (mixed in before the transformers base class: models,
    processors and image processors alike).

    Why private: all of them upload through `PushToHubMixin._upload_modified_files(working_dir, repo_id,
    files_timestamps, **keywords)` (5.10 to 5.25; token and revision by keyword), after `save_pretrained` has written
    the folder and before it returns; transformers has no public hook there.
    """

    def before_upload(self, working_dir, repo_id, token=None, revision=None):
        pass

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        self.before_upload(working_dir, repo_id, token=kwargs.get("token"), revision=kwargs.get("revision"))
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)


def cache_output(cache) -> dict:
    """`{field: cache}` for an output class of the running release: `Output(..., **cache_output(cache))`."""
    return {CACHE_FIELD: cache}


def output_cache(outputs):
    """The cache an output carries, under whichever name the running release gives the field."""
    return getattr(outputs, CACHE_FIELD)


def is_tracing() -> bool:
    """True under torch.compile / torch.export, where checks that read tensor values would break the graph."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def forward_arguments(forward):
    """The keyword-argument contract of every SLAM `forward`, in one place.

    - The cache: `cache` (transformers >= 5.24) or its older name `past_key_values` reach the forward as `cache`;
      giving both raises.
    - Nothing is swallowed: a keyword argument the forward neither declares nor consumes (only `LOSS_KWARGS`,
      on forwards that compute a loss) raises a TypeError naming it, so a renamed or misspelled argument fails
      at once instead of being ignored.
    - `output_hidden_states=None` and `return_dict=None` take the config's value, as transformers' models do;
      `return_dict=False` returns the output as a tuple (its non-None fields, in order).
    """
    parameters = inspect.signature(forward).parameters
    declared = {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    declared.discard("self")
    takes_loss_kwargs = "labels" in declared
    allowed = declared | (LOSS_KWARGS if takes_loss_kwargs else set())

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if LEGACY_CACHE_ARGUMENT in kwargs and "cache" in declared:
            legacy = kwargs.pop(LEGACY_CACHE_ARGUMENT)
            if kwargs.get("cache") is not None and legacy is not None:
                raise TypeError(
                    f"{type(self).__name__}.forward() got both `cache` and `past_key_values`; pass the cache once, "
                    "as `cache` (its name since transformers 5.24)."
                )
            if kwargs.get("cache") is None:
                kwargs["cache"] = legacy
        return_dict = kwargs.pop("return_dict", None)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            accepted = ", ".join(sorted(allowed | {LEGACY_CACHE_ARGUMENT, "return_dict"}))
            raise TypeError(
                f"{type(self).__name__}.forward() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}. "
                f"It accepts: {accepted}."
            )
        if "output_hidden_states" in declared and kwargs.get("output_hidden_states") is None:
            kwargs["output_hidden_states"] = self.config.output_hidden_states
        outputs = forward(self, *args, **kwargs)
        if return_dict is None:
            return_dict = self.config.return_dict
        return outputs if return_dict else outputs.to_tuple()

    return wrapper


__all__ = [
    "CACHE_FIELD",
    "Cache",
    "DynamicCache",
    "EncoderDecoderCache",
    "GradientCheckpointingLayer",
    "UploadHookMixin",
    "cache_output",
    "cached_file_or_none",
    "call_checkpointed",
    "create_bidirectional_mask",
    "create_causal_mask",
    "forward_arguments",
    "get_attention_function",
    "init",
    "is_tracing",
    "output_cache",
    "share_attention_implementation",
]
