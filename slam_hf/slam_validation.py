"""What every SLAM config field may hold: one table of field specs and the one checker that reads it.

Every config class (`configuration_slam.py`) runs `check_fields` on its arguments before it derives or combines
anything, on the fields set through `from_pretrained(..., field=value)`, and again in `validate()` (which
`save_pretrained` calls). Cross-field rules (heads divide hidden_size, top-k <= experts, ...) stay next to the
fields they combine, in the config classes, and run after this check, so they only ever see well-typed values.

Remote code: standard library only.
"""

import math
from collections.abc import Mapping
from typing import NamedTuple

# Upper bounds on sizes. Far above any SLAM model (the largest preset has hidden_size 512), and at or above the
# largest published transformers (hidden 16384, vocab 256k, 128 heads, context 1M), but low enough that a typo
# (`moa_num_experts=10**6`, `ef_cycles=10**7`) fails here instead of hanging while the model is built.
MAX_VOCAB = 2**22  # 4,194,304 tokens
MAX_HIDDEN = 65536  # hidden_size, and the ranks / widths that are at most a hidden size
MAX_INTERMEDIATE = 4 * MAX_HIDDEN  # MLP width
MAX_HEADS = 1024  # attention heads (query or key-value), heads per MoA expert
MAX_HEAD_DIM = MAX_HIDDEN  # per-head widths (one head may span the whole hidden size)
MAX_LAYERS = 1024  # layers, cycles, blocks
MAX_EXPERTS = 1024  # MoA experts and routed experts per token
MAX_POSITIONS = 2**24  # positions and segment lengths (16,777,216 tokens)
MAX_LABELS = 65536  # classification labels (transformers builds an id2label dict of this size)
MAX_PATCH = 1024  # patch side in pixels, image channels
MAX_ROPE_THETA = 1e12  # RoPE base; below 1 the frequency ladder inverts (and tiny bases overflow to NaN)
MAX_AUX_LOSS_COEF = 100.0  # the balancing loss is ~1, so a weight of 100 already drowns the LM loss


class FieldSpec(NamedTuple):
    """What one field may hold. kind: "bool" | "int" | "float" | "enum" | "names" | "token_id"; `low`/`high` bound
    ints and floats (inclusive unless `*_open`); `optional`: None is allowed (a default derived later, or "no such
    token"); `choices`: the values of an enum, or the strings a "names" list (non-empty, no repeats) may hold;
    `many`: a token-id field may also hold a list of ids (eos_token_id)."""

    kind: str
    low: float | None = None
    high: float | None = None
    optional: bool = False
    choices: tuple = ()
    low_open: bool = False
    high_open: bool = False
    many: bool = False


def Bool(optional=False):
    return FieldSpec("bool", optional=optional)


def Int(low, high, optional=False):
    return FieldSpec("int", low, high, optional=optional)


def Float(low, high, low_open=False, high_open=False, optional=False):
    return FieldSpec("float", low, high, optional=optional, low_open=low_open, high_open=high_open)


def Enum(*choices, optional=False):
    return FieldSpec("enum", choices=choices, optional=optional)


def Names(*choices, optional=False):
    return FieldSpec("names", choices=choices, optional=optional)


def TokenId(optional=True, many=False):
    return FieldSpec("token_id", optional=optional, many=many)


# BitNet b1.58 ternary projections (slam_ternary): the projections `ternary_modules` may name, by variant. Embeddings,
# lm_head, norms, routers, confidence heads and the vision tower have no entry: they stay full precision.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
LATENT_ATTENTION_PROJECTIONS = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")  # SLAM v3's MLA
TERNARY_PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
V3_TERNARY_PROJECTIONS = TERNARY_PROJECTIONS + LATENT_ATTENTION_PROJECTIONS + ("concat_proj",)  # + the fusion node's

# Fields of transformers' PreTrainedConfig that SLAM models read (or that transformers reads for them).
BASE_SPECS = {
    "tie_word_embeddings": Bool(),
    "use_cache": Bool(),
    "is_encoder_decoder": Bool(),
    "output_hidden_states": Bool(optional=True),
    "output_attentions": Bool(optional=True),
    "return_dict": Bool(optional=True),
    "chunk_size_feed_forward": Int(0, MAX_POSITIONS),
    "num_labels": Int(1, MAX_LABELS),
    "problem_type": Enum("regression", "single_label_classification", "multi_label_classification", optional=True),
    "pad_token_id": TokenId(),
    "bos_token_id": TokenId(),
    "eos_token_id": TokenId(many=True),
    "decoder_start_token_id": TokenId(),
}

# The fields every SLAM variant has (configuration_slam.SHARED_FIELDS); vocab_size comes first so that the token
# ids after it are checked against a valid vocabulary.
SHARED_SPECS = {
    "vocab_size": Int(1, MAX_VOCAB),
    "hidden_size": Int(1, MAX_HIDDEN),
    "num_attention_heads": Int(1, MAX_HEADS),
    "num_key_value_heads": Int(1, MAX_HEADS, optional=True),  # None: as many as the query heads
    "head_dim": Int(1, MAX_HEAD_DIM, optional=True),  # None: hidden_size / num_attention_heads
    "intermediate_size": Int(1, MAX_INTERMEDIATE),
    "mlp_type": Enum("gelu", "geglu", "swiglu"),
    "norm_type": Enum("layernorm", "rmsnorm"),
    "norm_position": Enum("pre", "post"),
    "norm_eps": Float(0.0, 1.0, low_open=True),  # a huge eps divides every activation to ~0: output ignores input
    "position_embedding_type": Enum("rope", "learned", "none"),
    "rope_theta": Float(1.0, MAX_ROPE_THETA),
    "max_position_embeddings": Int(1, MAX_POSITIONS),
    "attention_bias": Bool(),
    "mlp_bias": Bool(),
    "attention_dropout": Float(0.0, 1.0, high_open=True),
    "hidden_dropout": Float(0.0, 1.0, high_open=True),
    "initializer_range": Float(0.0, 1.0, low_open=True),
    "num_hidden_layers": Int(1, 2 + 2 * MAX_LAYERS, optional=True),  # derived; given only to be cross-checked
    "is_causal": Bool(),
    "ternary_linear": Bool(),
    "ternary_modules": Names(*TERNARY_PROJECTIONS, optional=True),  # None: every attention and MLP projection
    "ternary_subln": Bool(),
}

V1_SPECS = {
    "ef_cycles": Int(1, MAX_LAYERS),
    "ef_segment_length": Int(1, MAX_POSITIONS),
    "ef_segment_overlap": Int(0, MAX_POSITIONS),  # < ef_segment_length: checked with it
}

V2_SPECS = {
    "ef_cycles": Int(1, MAX_LAYERS),
    "ef_num_blocks": Int(1, MAX_LAYERS),
    "ef_segment_length": Int(1, MAX_POSITIONS, optional=True),  # None: max_position_embeddings / ef_num_blocks
    "moa_num_experts": Int(1, MAX_EXPERTS),
    "moa_top_k": Int(1, MAX_EXPERTS),
    "moa_expert_heads": Int(1, MAX_HEADS, optional=True),  # None: num_attention_heads / moa_top_k
    "router_aux_loss_coef": Float(0.0, MAX_AUX_LOSS_COEF),
    "output_router_logits": Bool(),
}

V3_SPECS = {
    "position_embedding_type": Enum("rope", "none"),
    "encoder_layers": Int(1, MAX_LAYERS),
    "decoder_layers": Int(1, MAX_LAYERS),
    "fusion_num_latents": Int(0, MAX_POSITIONS),  # 0: no latent bottleneck
    "aux_dim": Int(1, MAX_HIDDEN, optional=True),  # None: no auxiliary values
    "kv_lora_rank": Int(1, MAX_HIDDEN),
    "q_lora_rank": Int(1, MAX_HIDDEN, optional=True),  # None: no query bottleneck
    "qk_nope_head_dim": Int(1, MAX_HEAD_DIM, optional=True),  # None: head_dim
    "qk_rope_head_dim": Int(1, MAX_HEAD_DIM),
    "v_head_dim": Int(1, MAX_HEAD_DIM, optional=True),  # None: head_dim
    "image_token_id": TokenId(optional=False),
    "ternary_modules": Names(*V3_TERNARY_PROJECTIONS, optional=True),
}

MAX_LOOP_ITERATIONS = 256  # core iterations; each is a full pass of the core layers (and cache layers per_iteration)

LOOP_SPECS = {
    "prelude_layers": Int(0, MAX_LAYERS),
    "core_layers": Int(1, MAX_LAYERS),
    "coda_layers": Int(0, MAX_LAYERS),
    "loop_max_iterations": Int(1, MAX_LOOP_ITERATIONS),
    "loop_injection": Enum("add", "concat"),
    "loop_iteration_sampling": Enum("lognormal_poisson", "fixed", "loss_triggered"),
    "loop_sampling_mean": Float(1.0, MAX_LOOP_ITERATIONS, optional=True),  # None: loop_max_iterations
    "loop_sampling_sigma": Float(0.0, 10.0),
    "loop_backprop_iterations": Int(1, MAX_LOOP_ITERATIONS),
    "loop_loss_trigger": Float(0.0, 100.0),
    "loop_confidence_target": Enum("improvement", "absolute"),
    "loop_confidence_margin": Float(0.0, 10.0),
    "loop_confidence_loss_weight": Float(0.0, 100.0),
    "loop_exit_criterion": Enum("confidence", "kl", "hidden_change", "none"),
    "loop_exit_threshold": Float(0.0, 1e6, optional=True),  # None: no exit, every token runs full depth
    "loop_cache": Enum("per_iteration", "shared"),
    "image_token_id": TokenId(),  # the `<image>` placeholder (image-text model); None: no images
    "num_hidden_layers": Int(1, 2 * MAX_LAYERS + MAX_LAYERS * MAX_LOOP_ITERATIONS, optional=True),  # derived
}

VISION_SPECS = {
    "patch_size": Int(1, MAX_PATCH),
    "num_channels": Int(1, MAX_PATCH),
    "hidden_size": Int(1, MAX_HIDDEN),
    "num_hidden_layers": Int(1, MAX_LAYERS),
    "num_attention_heads": Int(1, MAX_HEADS),
    "num_key_value_heads": Int(1, MAX_HEADS, optional=True),
    "head_dim": Int(1, MAX_HEAD_DIM, optional=True),
    "intermediate_size": Int(1, MAX_INTERMEDIATE),
    "mlp_type": SHARED_SPECS["mlp_type"],
    "norm_type": SHARED_SPECS["norm_type"],
    "norm_position": SHARED_SPECS["norm_position"],
    "norm_eps": SHARED_SPECS["norm_eps"],
    "position_embedding_type": Enum("rope", "none"),
    "rope_theta": SHARED_SPECS["rope_theta"],
    "attention_bias": Bool(),
    "mlp_bias": Bool(),
    "attention_dropout": SHARED_SPECS["attention_dropout"],
    "hidden_dropout": SHARED_SPECS["hidden_dropout"],
    "projector_type": Enum("linear", "mlp"),
    "initializer_range": SHARED_SPECS["initializer_range"],
    "output_hidden_states": Bool(optional=True),
    "return_dict": Bool(optional=True),
}


def check_fields(values: Mapping, specs: Mapping, owner: str = ""):
    """Check each field of `specs` present in `values` (arguments or a config's attributes), in table order.
    TypeError for a wrong type, ValueError for a value out of range; both name `owner` + field, value and bound."""
    vocab_size = values.get("vocab_size")
    for name, spec in specs.items():
        if name in values:
            _check_field(f"{owner}{name}", values[name], spec, vocab_size)


def _check_field(name, value, spec, vocab_size):
    if value is None:
        if not spec.optional:
            raise TypeError(f"`{name}` must be set, got None; {_describe(spec, vocab_size)}.")
        return
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(
                f"`{name}` must be {_describe(spec)}, got {value!r} ({type(value).__name__}); strings such as "
                '"false" are not booleans (in config.json write true/false without quotes).'
            )
    elif spec.kind == "enum":
        if not isinstance(value, str) or value not in spec.choices:  # every enum is a string
            raise ValueError(f"`{name}`={value!r} is not supported; choose {_describe(spec)}.")
    elif spec.kind == "names":
        _check_names(name, value, spec)
    elif spec.kind == "token_id":
        ids = value if spec.many and isinstance(value, list | tuple) else [value]
        for token in ids:
            _check_token_id(name, value, token, vocab_size)
    else:
        _check_number(name, value, spec)


def _check_names(name, value, spec):
    allowed = ", ".join(map(repr, spec.choices)) + (", or None" if spec.optional else "")
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"`{name}` must be a list of names from {allowed}; got {value!r}.")
    unknown = [item for item in value if item not in spec.choices]
    if unknown or not value or len(set(value)) != len(value):
        problem = f"unknown names {unknown}" if unknown else "no names" if not value else "a repeated name"
        raise ValueError(f"`{name}`={list(value)!r} has {problem}; list distinct names from {allowed}.")


def _check_token_id(name, value, token, vocab_size):
    if not isinstance(token, int) or isinstance(token, bool):
        raise TypeError(f"`{name}` must be a token id (an integer) or None, got {value!r} ({type(token).__name__}).")
    if token < 0 or (isinstance(vocab_size, int) and token >= vocab_size):
        raise ValueError(
            f"`{name}` must be a token id in [0, vocab_size={vocab_size}) or None, got {value!r}; ids outside the "
            "vocabulary index no embedding row (a negative id silently picks one from the end)."
        )


def _check_number(name, value, spec):
    allowed = int if spec.kind == "int" else int | float  # an int is a valid float; a bool is neither
    if not isinstance(value, allowed) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be {_describe(spec)}, got {value!r} ({type(value).__name__}).")
    if spec.kind == "float" and not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number in {_interval(spec)}, got {value!r}.")
    too_low = value <= spec.low if spec.low_open else value < spec.low
    too_high = value >= spec.high if spec.high_open else value > spec.high
    if too_low or too_high:
        raise ValueError(f"`{name}` must be {_describe(spec)}, got {value!r}.")


def _describe(spec, vocab_size=None) -> str:
    if spec.kind == "bool":
        return "True, False or None" if spec.optional else "True or False"
    if spec.kind == "int" and spec.low == 1:
        text = f"a positive integer (at most {spec.high})"  # the wording the earlier checks used
    elif spec.kind == "int":
        text = f"an integer in [{spec.low}, {spec.high}]"
    elif spec.kind == "float":
        text = f"a number in {_interval(spec)}"
    elif spec.kind == "token_id":
        text = f"a token id in [0, vocab_size={vocab_size})"
    else:
        text = f"one of {', '.join(map(repr, spec.choices))}"
    return f"{text} or None" if spec.optional else text


def _interval(spec) -> str:
    return f"{'(' if spec.low_open else '['}{spec.low:g}, {spec.high:g}{')' if spec.high_open else ']'}"
