"""Configurations of the SLAM model family.

Remote code: imports only `transformers` (no torch), and is copied flat next to the weights.
Every field uses the standard transformers name where one exists, so PEFT, accelerate and Hub
tooling read them as usual. Invalid values fail here, at construction, with the field and the fix.
"""

import inspect

from transformers import PretrainedConfig
from transformers.utils import logging

from .slam_validation import (
    BASE_SPECS,
    LATENT_ATTENTION_PROJECTIONS,
    LOOP_SPECS,
    SHARED_SPECS,
    TERNARY_PROJECTIONS,
    V1_SPECS,
    V2_SPECS,
    V3_SPECS,
    VISION_SPECS,
    check_fields,
)

logger = logging.get_logger(__name__)


# The fields every SLAM variant has (DESIGN §2), in each variant's signature; `SlamConfigMixin._init_shared` sets and
# checks them.
SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "mlp_type",
    "norm_type",
    "norm_position",
    "norm_eps",
    "position_embedding_type",
    "rope_theta",
    "max_position_embeddings",
    "attention_bias",
    "mlp_bias",
    "attention_dropout",
    "hidden_dropout",
    "initializer_range",
    "use_cache",
    "ternary_linear",
    "ternary_modules",
    "ternary_subln",
)


def _require_positive(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_heads(config, owner=""):
    """Derive `head_dim` when it is None (hidden_size / heads) and check the head counts; `owner` prefixes the
    messages ("vision ")."""
    _require_positive(config, "hidden_size", "num_attention_heads", "num_key_value_heads")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if config.head_dim is None:
        if config.hidden_size % heads:
            raise ValueError(
                f"{owner}`hidden_size` ({config.hidden_size}) must be divisible by `num_attention_heads` ({heads}); "
                "change one of them or set `head_dim` explicitly."
            )
        config.head_dim = config.hidden_size // heads
    _require_positive(config, "head_dim")
    if heads % kv_heads:
        raise ValueError(
            f"{owner}`num_key_value_heads` ({kv_heads}) must divide `num_attention_heads` ({heads}); use a divisor "
            "(equal to the heads for MHA, 1 for MQA)."
        )


def check_latent_attention_dims(config):
    """The dimensions of Multi-head Latent Attention: SlamV3Config checks them at construction, and
    `SlamLatentAttention` for whatever config it is built from (the one place they are checked)."""
    _require_positive(config, "hidden_size", "num_attention_heads")
    _require_positive(config, "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    if getattr(config, "q_lora_rank", None) is not None:
        _require_positive(config, "q_lora_rank")
    if config.qk_rope_head_dim % 2:
        # rotate_half splits the rope dims into two halves
        raise ValueError(f"`qk_rope_head_dim` must be even (RoPE rotates pairs), got {config.qk_rope_head_dim}.")


# The one class -> Auto-factory table: the Auto factories that load each kind of SLAM class (the keys `auto_map`
# needs), by class-name suffix: `SlamV1` + `ForCausalLM` is loaded by AutoModelForCausalLM. `save_pretrained` writes
# these entries, a loaded config.json is checked against them, `import slam_hf` registers every class that exists
# for them (`slam_hf.MODEL_FAMILIES`), and the model card names the first factory of the trained head.
AUTO_FACTORIES = {
    "Model": ("AutoModel",),
    "ForCausalLM": ("AutoModelForCausalLM",),
    "ForMaskedLM": ("AutoModelForMaskedLM",),
    "ForSequenceClassification": ("AutoModelForSequenceClassification",),
    "ForConditionalGeneration": ("AutoModelForImageTextToText", "AutoModelForSeq2SeqLM"),
    "ForImageTextToText": ("AutoModelForImageTextToText",),
}
# Running from a Hub repo (transformers imports remote code as `transformers_modules.<repo>...`) rather than from
# the installed package: there `auto_map` is the only way transformers finds the classes.
_IS_REMOTE_CODE = __name__.startswith("transformers_modules")


def class_prefix(model_type: str) -> str:
    """The model-class name prefix of a SLAM variant: slam_v1 -> SlamV1, slam_loop -> SlamLoop."""
    return "Slam" + model_type.removeprefix("slam_").capitalize()


def auto_map_entries(model_type: str, class_names) -> dict:
    """`{factory: "modeling_slam.<class>"}` for SLAM model classes (unknown names are skipped)."""
    prefix = class_prefix(model_type)
    entries = {}
    for name in class_names:
        suffix = name.removeprefix(prefix) if name.startswith(prefix) else None
        for factory in AUTO_FACTORIES.get(suffix, ()):
            entries.setdefault(factory, f"modeling_slam.{name}")
    return entries


class FieldTableMixin:
    """Type and range of every field, from one table of field specs (slam_validation): checked on the arguments
    before anything is derived from them, and again by `validate()`, which save_pretrained runs."""

    # Each class names its table, {**SHARED_SPECS, **V<n>_SPECS, **BASE_SPECS}: a variant's spec replaces a shared
    # one, and table order is check order (vocab_size before the token ids). A class attribute without annotation:
    # not a dataclass field, never serialized.
    field_specs = {}
    field_owner = ""  # prefix of the field names in messages ("vision_config.")
    derived_fields = ()  # saved fields that __init__ recomputes from others (and checks against them)

    def _check_arguments(self, arguments: dict):
        """`arguments` is an __init__'s `locals()`: its named parameters and the base-config fields in **kwargs."""
        check_fields({**arguments.get("kwargs", {}), **arguments}, self.field_specs, self.field_owner)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers sets `from_pretrained(..., field=value)` overrides with setattr after __init__, past every
        check and derivation: hand the ones that are fields to __init__ instead, which checks them with the rest."""
        fields = set(cls.field_specs) | set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in fields}
        config_dict = dict(config_dict)
        if overrides:  # recomputed from the overridden fields (unless given too)
            for name in set(cls.derived_fields) - set(overrides):
                config_dict.pop(name, None)
        for name, value in overrides.items():
            saved = config_dict.get(name)
            if isinstance(value, dict) and isinstance(saved, dict):  # a sub-config: override only the keys given
                value = {**saved, **value}
            config_dict[name] = value
        return super().from_dict(config_dict, **kwargs)

    def validate(self):
        present = {name: getattr(self, name) for name in self.field_specs if hasattr(self, name)}
        check_fields(present, self.field_specs, self.field_owner)  # catches values assigned after construction
        super().validate()


class SlamConfigMixin(FieldTableMixin):
    """Fields and checks shared by every SLAM variant (DESIGN §2): attention, MLP, norm, positions, and BitNet b1.58.

    ternary_linear: build the projections named by `ternary_modules` as `TernaryLinear` (slam_ternary: ternary
        weights, int8 activations, full-precision master weights). ternary_modules: None = every attention and MLP
        projection of the variant (`default_ternary_modules`). ternary_subln: BitNet's SubLN, an RMSNorm on the
        input of each ternary `o_proj` (`attn_sub_norm`) and `down_proj` (`ffn_sub_norm`).
    """

    derived_fields = ("num_hidden_layers",)
    default_ternary_modules = TERNARY_PROJECTIONS

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        saved = config_dict.get("model_type")
        if saved is not None and saved != cls.model_type:
            known = ", ".join(f"{c.model_type} ({c.__name__})" for c in SLAM_CONFIG_CLASSES)
            raise ValueError(
                f"config.json has model_type {saved!r}, but it is being read by {cls.__name__} (model_type "
                f"{cls.model_type!r}). SLAM variants defined by this configuration_slam.py: {known}. Fix `model_type` "
                "and auto_map['AutoConfig'] in config.json so they name the same variant, or load the repo with a "
                f"slam_hf release that defines {saved!r}."
            )
        return super().from_dict(config_dict, **kwargs)

    def missing_auto_map_entries(self) -> dict:
        """`{factory: "module.Class"}` that a saved model's `auto_map` lacks (see AUTO_FACTORIES); empty for a
        config built in Python or saved without a model (no `auto_map` or no `architectures`)."""
        auto_map = getattr(self, "auto_map", None)
        architectures = getattr(self, "architectures", None)
        if auto_map is None or not architectures:
            return {}
        trunk = class_prefix(self.model_type) + "Model"
        needed = {"AutoConfig": f"configuration_slam.{type(self).__name__}"}
        needed.update(auto_map_entries(self.model_type, [trunk, *architectures]))
        return {key: value for key, value in needed.items() if key not in auto_map}

    def _check_auto_map(self):
        missing = self.missing_auto_map_entries()
        if not missing:
            return
        entries = ", ".join(f'"{key}": "{value}"' for key, value in missing.items())
        message = (
            f"config.json's auto_map lacks {', '.join(missing)} (needed for {', '.join(self.architectures)} as "
            f"remote code): add {entries} to auto_map in config.json, or re-save the model with save_pretrained "
            "after `import slam_hf`, which writes every entry."
        )
        if _IS_REMOTE_CODE:
            raise ValueError(message)
        # The installed package registers its classes itself; only Hub users without slam_hf need the entries.
        logger.warning(message)

    def _init_shared(self, arguments: dict):
        """Set and check the fields every variant has (SHARED_FIELDS), taken from a variant __init__'s `locals()`, so
        each field is written once, in the signature that documents its default."""
        for name in SHARED_FIELDS:
            setattr(self, name, arguments[name])
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _check_heads(self)
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even `head_dim`, got {self.head_dim}.")
        if self.ternary_modules is not None:
            self.ternary_modules = list(self.ternary_modules)  # as config.json will give it back
        if self.ternary_subln and not self.ternary_linear:
            raise ValueError(
                "`ternary_subln=True` adds BitNet's SubLN norms in front of ternary projections, but `ternary_linear` "
                "is False: set `ternary_linear=True` too, or drop `ternary_subln`."
            )

    @property
    def ternary_projections(self) -> tuple[str, ...]:
        """The projection names built as `TernaryLinear`: empty unless `ternary_linear`."""
        if not self.ternary_linear:
            return ()
        return tuple(self.ternary_modules) if self.ternary_modules is not None else self.default_ternary_modules

    def _derive_num_hidden_layers(self, given, derived: int, rule: str, variant: str, field: str):
        """`num_hidden_layers` counts cache layers and follows from `field`: a different given value is an error."""
        if given is not None and given != derived:
            raise ValueError(
                f"`num_hidden_layers` is derived as {rule} = {derived} for {variant}, got {given}; set `{field}` "
                "instead."
            )
        self.num_hidden_layers = derived

    def _finish_init(self, is_causal, tie_word_embeddings, pad_token_id, bos_token_id, eos_token_id, **kwargs):
        """The fields transformers' base config owns, then its __init__ (with the rest of the arguments)."""
        self.is_causal = is_causal
        self.tie_word_embeddings = tie_word_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        super().__init__(**kwargs)
        self._check_auto_map()


class SlamV1Config(SlamConfigMixin, PretrainedConfig):
    r"""Configuration of SLAM v1: overlapping encoder-fusion (EF) cycles (DESIGN §3).

    Layer schedule: one full-attention layer, `ef_cycles` EF cycles of two blocks (A, B) with their own
    weights, one full-attention layer, then a norm. `num_hidden_layers` is derived (2 + 2 * ef_cycles)
    because each block owns one KV-cache layer.

    Args:
        ef_cycles: number of encoder-fusion cycles.
        ef_segment_length: window length `w` of an EF block, in tokens.
        ef_segment_overlap: tokens shared by consecutive windows; stride = length - overlap. The published
            geometry (A = first 60 %, B = last 60 % of 100 tokens) is length 60, overlap 20.
        is_causal: causal attention everywhere (causal LM) or bidirectional (masked LM, classifier). The
            masked-LM and classification heads set it to False on their own copy of the config, so a saved
            checkpoint records which trunk it holds; transformers' mask builders read the same field.
        mlp_type: "gelu" | "geglu" | "swiglu".  norm_type: "layernorm" | "rmsnorm".
        norm_position: "post" (published) | "pre".  position_embedding_type: "rope" | "learned" | "none".
        The remaining fields are the standard transformers ones.
    """

    model_type = "slam_v1"
    field_specs = {**SHARED_SPECS, **V1_SPECS, **BASE_SPECS}
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 256,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 1024,
        mlp_type: str = "gelu",
        norm_type: str = "layernorm",
        norm_position: str = "post",
        norm_eps: float = 1e-5,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        ternary_linear: bool = False,
        ternary_modules: list[str] | None = None,
        ternary_subln: bool = False,
        ef_cycles: int = 2,
        ef_segment_length: int = 60,
        ef_segment_overlap: int = 20,
        num_hidden_layers: int | None = None,
        is_causal: bool = True,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self._check_arguments(locals())
        self._init_shared(locals())
        self._init_windows(ef_cycles, ef_segment_length, ef_segment_overlap)
        self._derive_num_hidden_layers(
            num_hidden_layers, 2 + 2 * ef_cycles, "2 + 2 * ef_cycles", "SLAM v1", "ef_cycles"
        )
        self._finish_init(is_causal, tie_word_embeddings, pad_token_id, bos_token_id, eos_token_id, **kwargs)

    def _init_windows(self, ef_cycles, ef_segment_length, ef_segment_overlap):
        self.ef_cycles = ef_cycles
        self.ef_segment_length = ef_segment_length
        self.ef_segment_overlap = ef_segment_overlap
        if ef_segment_overlap >= ef_segment_length:  # types and ranges: V1_SPECS
            raise ValueError(
                f"`ef_segment_overlap` ({ef_segment_overlap!r}) must be an integer in [0, ef_segment_length="
                f"{ef_segment_length}); windows advance by length - overlap tokens, so lower the overlap."
            )

    @property
    def ef_stride(self) -> int:
        return self.ef_segment_length - self.ef_segment_overlap

    @property
    def layer_schedule(self) -> list[str]:
        """One label per cache layer, for summaries (training reports); the model builds its layers from the fields."""
        return ["full"] + ["ef_a", "ef_b"] * self.ef_cycles + ["full"]


class SlamV2Config(SlamConfigMixin, PretrainedConfig):
    r"""Configuration of SLAM v2: cyclic four-segment encoder fusion + mixture of attention experts (DESIGN §4).

    Layer schedule: Level 1, one full-attention layer; Level 2, `ef_cycles` cycles in which the sequence is cut
    into non-overlapping segments of `ef_segment_length` tokens and segment s is processed by block
    (s + c) mod `ef_num_blocks` (c = cycle, 0-based) on input h_s + x_s (its previous output plus its original
    embedded input), attending only inside the segment; the blocks are shared by all cycles. Level 3, one
    mixture-of-attention-experts (MoA) layer over the full sequence, its MLP and norm. `num_hidden_layers`
    counts KV-cache layers and is derived: 1 + ef_cycles + 1.

    Args:
        ef_cycles: fusion cycles (blocks are shared, each cycle sends every token through one block). The
            default 2 is the smallest number that shows the rotation; 4 lets every segment meet all four blocks.
        ef_num_blocks: blocks shared across cycles, and segments per rotation (4 as published).
        ef_segment_length: tokens per segment, fixed so that segments stay put while generating. Defaults to
            max_position_embeddings / ef_num_blocks (four equal parts of the longest sequence); must not exceed
            max_position_embeddings. Sequences of any length work; the last segment may be partial.
        moa_num_experts: attention experts of the MoA layer; each has its own q_proj and o_proj, and all
            share one k_proj and v_proj.
        moa_top_k: experts each token is routed to. moa_top_k = moa_num_experts is the published dense
            softmax mixture.
        moa_expert_heads: query heads per expert. Defaults to num_attention_heads / moa_top_k, so the routed
            attention of a token is as wide as a dense layer's. The shared K/V have
            moa_expert_heads * num_key_value_heads / num_attention_heads heads (the model's GQA ratio).
        router_aux_loss_coef: weight of the load-balancing loss added to the loss whenever `labels` are given
            (0 disables it). The loss is 1 for perfectly balanced routing.
        output_router_logits: return the router logits by default (`output_router_logits` forward argument).
        is_causal: as for SLAM v1; masked-LM and classification heads set it to False on their own copy.
        Other fields: see SlamV1Config; defaults follow the published model (post-LayerNorm, GELU, MHA).
    """

    model_type = "slam_v2"
    field_specs = {**SHARED_SPECS, **V2_SPECS, **BASE_SPECS}
    # Trainer.predict returns only the logits (not the balancing loss or router logits), as for other heads.
    keys_to_ignore_at_inference = ["cache", "past_key_values", "aux_loss", "router_logits"]

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 256,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 1024,
        mlp_type: str = "gelu",
        norm_type: str = "layernorm",
        norm_position: str = "post",
        norm_eps: float = 1e-5,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        ternary_linear: bool = False,
        ternary_modules: list[str] | None = None,
        ternary_subln: bool = False,
        ef_cycles: int = 2,
        ef_num_blocks: int = 4,
        ef_segment_length: int | None = None,
        moa_num_experts: int = 8,
        moa_top_k: int = 2,
        moa_expert_heads: int | None = None,
        router_aux_loss_coef: float = 0.01,
        output_router_logits: bool = False,
        num_hidden_layers: int | None = None,
        is_causal: bool = True,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self._check_arguments(locals())
        self._init_shared(locals())
        self._init_segments(ef_cycles, ef_num_blocks, ef_segment_length)
        self._init_moa(moa_num_experts, moa_top_k, moa_expert_heads, router_aux_loss_coef, output_router_logits)
        self._derive_num_hidden_layers(
            num_hidden_layers, 2 + ef_cycles, "1 + ef_cycles + 1", "SLAM v2 (one KV-cache layer per cycle)", "ef_cycles"
        )
        self._finish_init(is_causal, tie_word_embeddings, pad_token_id, bos_token_id, eos_token_id, **kwargs)

    def _init_segments(self, ef_cycles, ef_num_blocks, ef_segment_length):
        self.ef_cycles = ef_cycles
        self.ef_num_blocks = ef_num_blocks
        max_length = self.max_position_embeddings
        if ef_segment_length is None:
            if max_length % ef_num_blocks:
                raise ValueError(
                    f"`ef_segment_length` defaults to max_position_embeddings / ef_num_blocks, but "
                    f"{max_length} is not divisible by {ef_num_blocks}; set `ef_segment_length`."
                )
            ef_segment_length = max_length // ef_num_blocks
        self.ef_segment_length = ef_segment_length
        if ef_segment_length > max_length:
            raise ValueError(
                f"`ef_segment_length` ({ef_segment_length}) exceeds max_position_embeddings ({max_length}): no "
                "sequence could fill a segment. Lower it or raise max_position_embeddings."
            )

    def _init_moa(self, moa_num_experts, moa_top_k, moa_expert_heads, router_aux_loss_coef, output_router_logits):
        self.moa_num_experts = moa_num_experts
        self.moa_top_k = moa_top_k
        if moa_top_k > moa_num_experts:
            raise ValueError(
                f"`moa_top_k` ({moa_top_k}) cannot exceed `moa_num_experts` ({moa_num_experts}); "
                f"use moa_top_k = moa_num_experts for the dense mixture."
            )
        heads = self.num_attention_heads
        if moa_expert_heads is None:
            if heads % moa_top_k:
                raise ValueError(
                    f"`moa_expert_heads` defaults to num_attention_heads / moa_top_k, but {heads} heads "
                    f"are not divisible by moa_top_k={moa_top_k}; set `moa_expert_heads`."
                )
            moa_expert_heads = heads // moa_top_k
        self.moa_expert_heads = moa_expert_heads
        kv_groups = heads // self.num_key_value_heads
        if moa_expert_heads % kv_groups:
            raise ValueError(
                f"`moa_expert_heads` ({moa_expert_heads}) must be a multiple of num_attention_heads / "
                f"num_key_value_heads = {kv_groups}, so the experts share K/V heads in the model's GQA ratio."
            )
        self.router_aux_loss_coef = router_aux_loss_coef
        self.output_router_logits = output_router_logits

    @property
    def moa_key_value_heads(self) -> int:
        return self.moa_expert_heads * self.num_key_value_heads // self.num_attention_heads

    @property
    def layer_schedule(self) -> list[str]:
        """One label per cache layer, for summaries (training reports); the model builds its layers from the fields."""
        return ["full"] + [f"fusion_{cycle}" for cycle in range(self.ef_cycles)] + ["moa"]


ENCODER_PATHS = ("text", "image", "shared", "cross_modal")


class SlamV3VisionConfig(FieldTableMixin, PretrainedConfig):
    r"""Vision tower of SLAM v3: a ViT over non-overlapping `patch_size` patches with 2D RoPE over the patch grid
    (row, column), bidirectional `SlamLayer` blocks, a final norm and a projector to the text hidden size.

    Args:
        patch_size: side of a square patch in pixels; image height and width must be multiples of it.
        num_channels: input channels (3 for the RGB output of `SlamImageProcessor`).
        projector_type: "linear" or "mlp" (Linear -> GELU -> Linear) into the text hidden size.
        position_embedding_type: "rope" (2D RoPE; `head_dim` must be a multiple of 4) or "none".
        Other fields mean what they mean in the text config.
    """

    model_type = "slam_v3_vision"
    base_config_key = "vision_config"
    field_specs = VISION_SPECS
    field_owner = "vision_config."

    def __init__(
        self,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 256,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 1024,
        mlp_type: str = "geglu",
        norm_type: str = "rmsnorm",
        norm_position: str = "pre",
        norm_eps: float = 1e-5,
        position_embedding_type: str = "rope",
        rope_theta: float = 100.0,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        projector_type: str = "mlp",
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self._check_arguments(locals())
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.mlp_type = mlp_type
        self.norm_type = norm_type
        self.norm_position = norm_position
        self.norm_eps = norm_eps
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.projector_type = projector_type
        self.initializer_range = initializer_range
        _check_heads(self, owner="vision ")
        if position_embedding_type == "rope" and self.head_dim % 4:
            raise ValueError(
                "2D RoPE rotates (row, column) pairs, so the vision `head_dim` must be a multiple of 4, "
                f"got {self.head_dim}."
            )
        super().__init__(**kwargs)


class SlamV3Config(SlamConfigMixin, PretrainedConfig):
    r"""Configuration of SLAM v3: image + text through four parallel encoder paths, a fusion node and a decoder
    with Multi-head Latent Attention and cross-attention (DESIGN §5). An encoder-decoder model: the processor's
    `input_ids` (prompt with `<image>` placeholders) and `pixel_values` feed the encoder, the answer is decoded.

    Encoder: the joint sequence (text embeddings, image features at the `image_token_id` placeholders, then
    `aux_values` projected to `aux_dim` -> hidden tokens) runs through four paths of `encoder_layers` layers each,
    all active and batched as one computation; they differ only in weights and attention masks:
    "text" (text <-> text), "image" (image/aux <-> image/aux), "shared" (all <-> all), "cross_modal" (text <-> other
    modality only). A path that leaves a token with no key contributes zeros for it. The fusion node mixes the
    paths (dense concatenation 4H -> H plus the mean of the paths that saw each token), applies one cross-modal
    attention layer and, with `fusion_num_latents` > 0, compresses the sequence into that many learned latents
    (the decoder's memory); otherwise the memory is the fused sequence.

    Decoder: `decoder_layers` x (causal MLA self-attention, cross-attention to the memory, MLP). MLA caches only the
    compressed latent c_kv (`kv_lora_rank`) and one shared RoPE key (`qk_rope_head_dim`) per token; queries have
    `qk_nope_head_dim + qk_rope_head_dim` dims per head (optionally through a `q_lora_rank` bottleneck), values
    `v_head_dim`. Cross-attention uses `num_attention_heads` / `num_key_value_heads` (GQA) of `head_dim`.
    `num_hidden_layers` is derived (= decoder_layers, the number of self-attention cache layers).

    Defaults (DESIGN §2): pre-RMSNorm, GeGLU, GQA (heads / 4 key-value heads), RoPE (1D for text; 2D over the patch
    grid in the vision tower). position_embedding_type "none" removes RoPE from the encoder only: MLA's decoupled
    RoPE key is part of the attention itself.
    """

    model_type = "slam_v3"
    field_specs = {**SHARED_SPECS, **V3_SPECS, **BASE_SPECS}
    default_ternary_modules = TERNARY_PROJECTIONS + LATENT_ATTENTION_PROJECTIONS
    sub_configs = {"vision_config": SlamV3VisionConfig}
    keys_to_ignore_at_inference = ["cache", "past_key_values", "encoder_last_hidden_state"]

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 256,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 1024,
        mlp_type: str = "geglu",
        norm_type: str = "rmsnorm",
        norm_position: str = "pre",
        norm_eps: float = 1e-5,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        ternary_linear: bool = False,
        ternary_modules: list[str] | None = None,
        ternary_subln: bool = False,
        encoder_layers: int = 2,
        fusion_num_latents: int = 0,
        aux_dim: int | None = None,
        decoder_layers: int = 2,
        kv_lora_rank: int = 64,
        q_lora_rank: int | None = None,
        qk_nope_head_dim: int | None = None,
        qk_rope_head_dim: int = 16,
        v_head_dim: int | None = None,
        vision_config: dict | SlamV3VisionConfig | None = None,
        image_token_id: int = 5,
        num_hidden_layers: int | None = None,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        is_encoder_decoder: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        decoder_start_token_id: int | None = 1,
        **kwargs,
    ):
        if position_embedding_type not in ("rope", "none"):
            raise ValueError(
                "SLAM v3 supports position_embedding_type 'rope' or 'none', "
                f"got {position_embedding_type!r}: the joint "
                "image+text sequence has no fixed length for a learned table."
            )
        self._check_arguments(locals())
        if num_key_value_heads is None:  # GQA with 4 query heads per key-value head where the heads allow it
            num_key_value_heads = (
                max(1, num_attention_heads // 4) if num_attention_heads % 4 == 0 else num_attention_heads
            )
        self._init_shared(locals())
        self._init_encoder(encoder_layers, fusion_num_latents, aux_dim, decoder_layers)
        self._init_latent_attention(kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim)
        self._init_vision(vision_config, image_token_id)
        self._derive_num_hidden_layers(
            num_hidden_layers,
            decoder_layers,
            "decoder_layers",
            "SLAM v3 (one self-attention cache layer per decoder layer)",
            "decoder_layers",
        )
        if is_encoder_decoder is not True:
            raise ValueError("SLAM v3 is an encoder-decoder model; `is_encoder_decoder` must be True.")
        self.decoder_start_token_id = decoder_start_token_id
        # is_causal is False (a saved config.json repeats it): the encoder is bidirectional and the decoder's causality
        # is built in. `is_encoder_decoder` is a field of the base config, set through its __init__ (or reset to False).
        kwargs.pop("is_causal", None)
        self._finish_init(
            False, tie_word_embeddings, pad_token_id, bos_token_id, eos_token_id, is_encoder_decoder=True, **kwargs
        )

    def _init_encoder(self, encoder_layers, fusion_num_latents, aux_dim, decoder_layers):
        self.encoder_layers = encoder_layers
        self.fusion_num_latents = fusion_num_latents
        self.aux_dim = aux_dim
        self.decoder_layers = decoder_layers

    def _init_latent_attention(self, kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim):
        self.kv_lora_rank = kv_lora_rank
        self.q_lora_rank = q_lora_rank
        self.qk_nope_head_dim = self.head_dim if qk_nope_head_dim is None else qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = self.head_dim if v_head_dim is None else v_head_dim
        check_latent_attention_dims(self)

    def _init_vision(self, vision_config, image_token_id):
        if vision_config is None:
            vision_config = SlamV3VisionConfig()
        elif isinstance(vision_config, dict):
            vision_config = SlamV3VisionConfig(**vision_config)
        elif not isinstance(vision_config, SlamV3VisionConfig):
            raise TypeError(
                f"`vision_config` must be a dict, a SlamV3VisionConfig or None, got {type(vision_config).__name__}."
            )
        self.vision_config = vision_config
        self.image_token_id = image_token_id

    @property
    def layer_schedule(self) -> list[str]:
        """Labels of encoder layers (four paths each), the fusion node and decoder layers, for summaries."""
        encoder = [f"paths_{layer}" for layer in range(self.encoder_layers)]
        fusion = ["fusion"] + (["latent_bottleneck"] if self.fusion_num_latents else [])
        return encoder + fusion + [f"mla_decoder_{layer}" for layer in range(self.decoder_layers)]


class SlamLoopConfig(SlamConfigMixin, PretrainedConfig):
    r"""Configuration of the latent-loop transformer (DESIGN §6): a shared core that iterates per token.

    embed -> `prelude_layers` -> a core of `core_layers` shared layers, applied up to `loop_max_iterations` times
    with the prelude output re-injected before each iteration -> `coda_layers` -> norm -> head. A per-token
    confidence head reads the state after every iteration; at inference a token stops once it is confident.

    Args:
        prelude_layers, core_layers, coda_layers: layers before, inside and after the loop (the core's are shared
            by every iteration). `loop_max_iterations=1` is a plain transformer of P + C + D layers.
        loop_injection: how the prelude output `e` enters iteration i with state s (s_0 = 0): "add" feeds s + e
            (iteration 1 is then exactly the plain transformer), "concat" feeds Linear([s; e]) (Huginn's adapter).
        loop_iteration_sampling: training depth per step. "lognormal_poisson" (Huginn): tau ~ N(log(mean) -
            sigma^2 / 2, sigma), r = min(1 + Poisson(e^tau), loop_max_iterations), with mean `loop_sampling_mean`
            (None: loop_max_iterations) and `loop_sampling_sigma`; "fixed": always loop_max_iterations;
            "loss_triggered" (the published trigger, "iterate more while the loss is high"): after iteration 1
            the batch's mean token loss (coda and head on that state, no gradient) decides: above
            `loop_loss_trigger` the step runs full depth, else it stops at one iteration.
        loop_backprop_iterations: gradients flow through the last k iterations of a step only (truncated backprop);
            earlier ones run without a graph.
        loop_confidence_target: what the confidence head learns from the detached per-iteration token losses l_i.
            "improvement" (Ouro-style): 1 when no later iteration lowers the loss by more than
            `loop_confidence_margin` nats; "absolute" (the description): clamp(1 - l_i / 2, 0, 1).
        loop_confidence_loss_weight: weight of the confidence head's BCE in the training loss (0: not trained).
            Its input is detached, so no gradient of it reaches the language model (a global gradient-norm clip
            still counts it in the norm).
        loop_exit_criterion, loop_exit_threshold: inference exit per token. "confidence": sigmoid(head) >=
            threshold; "hidden_change": |s_i - s_{i-1}| / |s_i| <= threshold; "kl" (Huginn): KL between successive
            iterations' next-token distributions <= threshold (probes the coda every iteration; needs
            use_cache=False).
            "none" or threshold None runs every token to full depth. `slam_hf.training.loop.calibrate_exit_threshold`
            picks a threshold for a held-out loss budget.
        vision_config: a `SlamV3VisionConfig` (or its dict) for `SlamLoopForImageTextToText`: image patches from the
            vision tower sit at the `image_token_id` placeholders of the one causal sequence, and the decoder rotates
            them with 2D RoPE over the patch grid (row, column) while text keeps 1D RoPE ("selective RoPE"). None
            (default): a text-only model.
        loop_cache: "per_iteration" keeps one set of core cache layers per iteration (an exited token's last K/V
            fill its deeper slots); "shared" keeps one set, holding each token's last K/V.
        num_hidden_layers: derived, the number of cache layers: P + N * C + D (per_iteration) or P + C + D (shared).
        The remaining fields are the standard transformers ones; defaults follow the description (pre-RMSNorm,
        GeGLU, GQA, RoPE).
    """

    model_type = "slam_loop"
    field_specs = {**SHARED_SPECS, **LOOP_SPECS, **BASE_SPECS}
    sub_configs = {"vision_config": SlamV3VisionConfig}
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 256,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = 2,
        head_dim: int | None = None,
        intermediate_size: int = 768,
        mlp_type: str = "geglu",
        norm_type: str = "rmsnorm",
        norm_position: str = "pre",
        norm_eps: float = 1e-6,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        ternary_linear: bool = False,
        ternary_modules: list[str] | None = None,
        ternary_subln: bool = False,
        prelude_layers: int = 1,
        core_layers: int = 2,
        coda_layers: int = 1,
        loop_max_iterations: int = 4,
        loop_injection: str = "add",
        loop_iteration_sampling: str = "lognormal_poisson",
        loop_sampling_mean: float | None = None,
        loop_sampling_sigma: float = 0.5,
        loop_backprop_iterations: int = 4,
        loop_loss_trigger: float = 2.0,
        loop_confidence_target: str = "improvement",
        loop_confidence_margin: float = 0.01,
        loop_confidence_loss_weight: float = 1.0,
        loop_exit_criterion: str = "confidence",
        loop_exit_threshold: float | None = None,
        loop_cache: str = "per_iteration",
        vision_config: dict | SlamV3VisionConfig | None = None,
        image_token_id: int | None = 5,
        num_hidden_layers: int | None = None,
        is_causal: bool = True,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self._check_arguments(locals())
        self._init_shared(locals())
        if not is_causal:
            raise ValueError("The latent-loop model is a causal decoder; `is_causal` must be True.")
        if loop_exit_criterion == "confidence" and loop_exit_threshold is not None and loop_exit_threshold > 1:
            raise ValueError(
                f"`loop_exit_threshold` ({loop_exit_threshold}) compares with a confidence in [0, 1] under "
                "loop_exit_criterion='confidence'; use a value in [0, 1] (None: no exit)."
            )
        if loop_exit_criterion == "kl" and loop_exit_threshold is not None and use_cache:
            raise ValueError(
                "loop_exit_criterion='kl' probes the coda after every iteration, which a cached decode cannot do "
                "without writing the coda's cache: set use_cache=False with it (uncached generate), or use "
                "'confidence' / 'hidden_change'."
            )
        if loop_sampling_mean is not None and loop_sampling_mean > loop_max_iterations:
            raise ValueError(
                f"`loop_sampling_mean` ({loop_sampling_mean}) exceeds loop_max_iterations ({loop_max_iterations}); "
                "lower it or raise loop_max_iterations."
            )
        for name, value in locals().items():
            if name.startswith(("loop_", "prelude_", "core_", "coda_")):
                setattr(self, name, value)
        self._init_vision(vision_config, image_token_id)
        slots = core_layers * (loop_max_iterations if loop_cache == "per_iteration" else 1)
        self._derive_num_hidden_layers(
            num_hidden_layers,
            prelude_layers + slots + coda_layers,
            "prelude + core slots + coda layers",
            f"the latent-loop model (loop_cache={loop_cache!r})",
            "prelude_layers, core_layers, coda_layers, loop_max_iterations or loop_cache",
        )
        self._finish_init(is_causal, tie_word_embeddings, pad_token_id, bos_token_id, eos_token_id, **kwargs)

    def _init_vision(self, vision_config, image_token_id):
        if isinstance(vision_config, dict):
            vision_config = SlamV3VisionConfig(**vision_config)
        elif vision_config is not None and not isinstance(vision_config, SlamV3VisionConfig):
            raise TypeError(
                f"`vision_config` must be a dict, a SlamV3VisionConfig or None, got {type(vision_config).__name__}."
            )
        if vision_config is not None and self.position_embedding_type == "rope" and self.head_dim % 4:
            raise ValueError(
                f"Image patches get 2D RoPE (two axes x rotation pairs), which needs a `head_dim` divisible by 4, got "
                f"{self.head_dim}; change head_dim (or hidden_size / num_attention_heads)."
            )
        if vision_config is not None and image_token_id is None:
            raise ValueError("A loop model with a `vision_config` needs `image_token_id` (the `<image>` placeholder).")
        self.vision_config = vision_config
        self.image_token_id = image_token_id

    @property
    def core_cache_slots(self) -> int:
        """Sets of core cache layers: one per iteration (per_iteration) or one (shared)."""
        return self.loop_max_iterations if self.loop_cache == "per_iteration" else 1

    @property
    def layer_schedule(self) -> list[str]:
        """One label per layer application at full depth, for summaries."""
        core = [
            f"core_{layer}@{it}" for it in range(1, self.loop_max_iterations + 1) for layer in range(self.core_layers)
        ]
        return ["prelude"] * self.prelude_layers + core + ["coda"] * self.coda_layers


SLAM_CONFIG_CLASSES = (SlamV1Config, SlamV2Config, SlamV3Config, SlamLoopConfig)


def __getattr__(name):
    # transformers resolves auto_map's "configuration_slam.<Class>" with getattr: name what this file does define.
    if name.startswith("Slam"):
        known = ", ".join(cls.__name__ for cls in (*SLAM_CONFIG_CLASSES, SlamV3VisionConfig))
        raise AttributeError(
            f"configuration_slam.py defines no {name} (it defines {known}); the auto_map or model_type in "
            "config.json names a class from another slam_hf release: fix config.json, or copy the matching "
            "configuration_slam.py into the repo."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUTO_FACTORIES",
    "ENCODER_PATHS",
    "SlamLoopConfig",
    "SlamV1Config",
    "SlamV2Config",
    "SlamV3Config",
    "SlamV3VisionConfig",
]
