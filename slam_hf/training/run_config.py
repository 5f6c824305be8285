"""What a `slam-hf train` YAML means: the variants (config and model classes, task, card rows, LoRA targets,
interpretation choices) and the checked run config (`load_run_config`).

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Callable, NamedTuple

import yaml

TEMPLATE_NAME = "modelcard_template.md"
IMAGE_TEXT_TEMPLATE_NAME = "modelcard_template_image_text.md"
CARD_TAGS = ["slam", "custom_code"]
LORA_ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
GATED_MLP_TYPES = ("geglu", "swiglu")
# SLAM v3: LoRA on the decoder alone (MLA q/kv_b/o and cross-attention q/o of every layer); plain names would
# also match the encoder's paths and vision tower.
DECODER_LORA_PATTERN = r"model\.decoder\.layers\.\d+\.(self_attn|cross_attn)\.(q_proj|kv_b_proj|o_proj)"


class ConfigError(ValueError):
    """A problem with the training YAML; the message names the key and the fix."""


TEXT_TASK = "text-generation"
IMAGE_TEXT_TASK = "image-text-to-text"


class Variant(NamedTuple):
    config_class: type
    head_class: type  # what `train` builds
    summary: str  # model-card description
    architecture_rows: Callable  # config -> [(setting, value)]: the variant's own rows of the model-card table
    lora_modules: str  # model-card paragraph: which modules LoRA can target
    task: str = TEXT_TASK  # TEXT_TASK: causal LM on Shakespeare; IMAGE_TEXT_TASK: digit tiles -> digit string
    interpretation: tuple = ()  # model card: where the public description was loose, what this code chose
    usage_note: str = ""  # model card, after the usage snippet: what else a user of this variant should know

    def card_rows(self, config) -> list[tuple[str, object]]:
        """The variant's rows of the model-card table, then the BitNet row of a ternary model."""
        rows = list(self.architecture_rows(config))
        if getattr(config, "ternary_linear", False):
            sub_ln = ", SubLN before o_proj / down_proj" if config.ternary_subln else ""
            gated = config.mlp_type != "gelu"  # a gelu MLP has no gate_proj
            names = [name for name in config.ternary_projections if gated or name != "gate_proj"]
            rows.append(
                (
                    "BitNet b1.58 ternary projections",
                    f"{', '.join(names)} (ternary weights, int8 activations{sub_ln})",
                )
            )
        return rows

    @property
    def head_auto_classes(self) -> tuple:
        """The Auto factories that load head_class (configuration_slam.AUTO_FACTORIES)."""
        from ..configuration_slam import auto_map_entries

        return tuple(auto_map_entries(self.config_class.model_type, [self.head_class.__name__]))


def _v1_rows(config) -> list[tuple[str, object]]:
    return [
        ("ef_cycles", config.ef_cycles),
        ("ef_segment_length / overlap", f"{config.ef_segment_length} / {config.ef_segment_overlap}"),
    ]


def _v2_rows(config) -> list[tuple[str, object]]:
    return [
        ("ef_cycles", config.ef_cycles),
        ("ef_num_blocks (shared by all cycles)", config.ef_num_blocks),
        ("ef_segment_length (non-overlapping)", config.ef_segment_length),
        ("moa_num_experts / moa_top_k", f"{config.moa_num_experts} / {config.moa_top_k}"),
        (
            "moa_expert_heads / shared K/V heads",
            f"{config.moa_expert_heads} / {config.moa_key_value_heads} (head_dim {config.head_dim})",
        ),
        ("router_aux_loss_coef", config.router_aux_loss_coef),
    ]


def v3_cache_bytes_per_token(config, bytes_per_value: int = 4) -> tuple[int, int]:
    """Decoder self-attention cache per generated token, all layers: (MLA latent cache, full per-head K/V)."""
    latent = (config.kv_lora_rank + config.qk_rope_head_dim) * config.decoder_layers * bytes_per_value
    heads = config.num_attention_heads
    full = heads * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim) * config.decoder_layers
    return latent, full * bytes_per_value


def _v3_rows(config) -> list[tuple[str, object]]:
    vision = config.vision_config
    latent_bytes, full_bytes = v3_cache_bytes_per_token(config)
    fusion = "mean of the paths + concat_proj (4H → H) + 1 cross-modal attention layer"
    if config.fusion_num_latents:
        fusion += f"; latent bottleneck: {config.fusion_num_latents} learned latents are the memory"
    else:
        fusion += "; no latent bottleneck (the memory is the fused sequence)"
    q_rank = "none" if config.q_lora_rank is None else config.q_lora_rank
    return [
        (
            "encoder paths",
            f"text, image, shared, cross_modal: {config.encoder_layers} layer(s) each, batched as one computation",
        ),
        ("fusion", fusion),
        ("decoder_layers", f"{config.decoder_layers} (causal MLA self-attention → cross-attention → MLP)"),
        (
            "MLA kv_lora_rank / qk_nope_head_dim + qk_rope_head_dim / v_head_dim / q_lora_rank",
            f"{config.kv_lora_rank} / {config.qk_nope_head_dim} + {config.qk_rope_head_dim} / "
            f"{config.v_head_dim} / {q_rank}",
        ),
        (
            "decoder cache bytes / token (float32, all layers)",
            f"{latent_bytes:,} (latent {config.kv_lora_rank} + RoPE key {config.qk_rope_head_dim} per layer; "
            f"per-head K/V would take {full_bytes:,})",
        ),
        (
            "vision tower",
            f"{vision.patch_size}×{vision.patch_size} patches, {vision.num_hidden_layers} layers, hidden "
            f"{vision.hidden_size}, {vision.num_attention_heads} heads, "
            f"{'2D RoPE' if vision.position_embedding_type == 'rope' else 'no positions'}, "
            f"{vision.projector_type} projector",
        ),
        ("image_token_id", config.image_token_id),
    ]


def _loop_depth(config) -> str:
    """How the training depth is drawn (model card)."""
    sampling, maximum = config.loop_iteration_sampling, config.loop_max_iterations
    if sampling == "fixed":
        depth = f"fixed: always {maximum} iterations"
    elif sampling == "loss_triggered":
        depth = f"loss_triggered: {maximum} while the last LM loss > {config.loop_loss_trigger}, else 1"
    else:
        mean = config.loop_sampling_mean or maximum
        depth = f"lognormal_poisson: 1 + Poisson(e^τ), mean {mean}, σ {config.loop_sampling_sigma}, at most {maximum}"
    if config.loop_backprop_iterations >= maximum:
        return f"{depth}; backprop through every iteration"
    return f"{depth}; backprop through the last {config.loop_backprop_iterations} iterations"


def loop_exit_description(config) -> str:
    """The inference exit a saved loop config applies (model card, `slam-hf generate`)."""
    criterion, threshold = config.loop_exit_criterion, config.loop_exit_threshold
    if criterion == "none" or threshold is None:
        return f"none: every token runs all {config.loop_max_iterations} iterations"
    rule = {
        "confidence": f"sigmoid(confidence head) ≥ {threshold:g}",
        "hidden_change": f"|s_i − s_(i−1)| / |s_i| ≤ {threshold:g}",
        "kl": f"KL(successive next-token distributions) ≤ {threshold:g} (uncached decoding only)",
    }[criterion]
    return f"{criterion}: a token stops once {rule}"


def _loop_rows(config) -> list[tuple[str, object]]:
    prelude, core, coda, maximum = (
        config.prelude_layers,
        config.core_layers,
        config.coda_layers,
        config.loop_max_iterations,
    )
    injection = "added to the state" if config.loop_injection == "add" else "Linear([state; prelude output])"
    if config.loop_cache == "per_iteration":
        cache = f"per_iteration: {config.num_hidden_layers} cache layers ({prelude} + {maximum} × {core} + {coda})"
    else:
        cache = (
            f"shared: {config.num_hidden_layers} cache layers, each token's last core K/V (read at every "
            "iteration: approximate)"
        )
    head = f"target {config.loop_confidence_target}, loss weight {config.loop_confidence_loss_weight}"
    return [
        ("prelude / core / coda layers", f"{prelude} / {core} / {coda} (the core's {core} layers are shared)"),
        ("loop_max_iterations", f"{maximum} ({prelude + maximum * core + coda} layer applications at full depth)"),
        ("loop_injection", f"{config.loop_injection} (prelude output {injection} before each iteration)"),
        ("training depth (loop_iteration_sampling)", _loop_depth(config)),
        ("confidence head", head),
        ("exit (loop_exit_criterion / loop_exit_threshold)", loop_exit_description(config)),
        ("loop_cache", cache),
    ]


_MLP_LORA_MODULES = (
    "`up_proj`, `down_proj` (MLP), and `gate_proj` for gated MLPs (`mlp_type` `geglu` or `swiglu`) only. "
    '`target_modules="all-linear"` also works'
)


def variants() -> dict[str, Variant]:
    """`model.variant` -> classes. One entry per SLAM variant."""
    return {"slam_v1": _slam_v1(), "slam_v2": _slam_v2(), "slam_v3": _slam_v3(), "slam_loop": _slam_loop()}


def _slam_v1() -> Variant:
    from ..configuration_slam import SlamV1Config
    from ..modeling_slam import SlamV1ForCausalLM

    return Variant(
        SlamV1Config,
        SlamV1ForCausalLM,
        "SLAM v1 runs one full-attention layer, then `ef_cycles` encoder-fusion (EF) cycles, then a second "
        "full-attention layer. An EF cycle cuts the sequence into overlapping windows of `ef_segment_length` "
        "tokens (overlap `ef_segment_overlap`) that its two blocks A and B handle alternately; each block "
        "attends only inside its window (causally here), and a token covered by two windows takes the mean "
        "of both outputs. Windows are fixed in absolute positions, so the KV cache stays valid while "
        "generating.",
        _v1_rows,
        f"Valid targets: `q_proj`, `k_proj`, `v_proj`, `o_proj` (attention), {_MLP_LORA_MODULES}.",
        interpretation=(
            "The published 60 % / 60 % split is two numbers, `ef_segment_length=60`, `ef_segment_overlap=20` "
            "(the defaults); any sequence length works and windows past the end are partial.",
            "Windows sit at fixed positions, not fractions of the length, so generation never re-segments "
            "earlier tokens and the KV cache stays valid; each EF block owns one cache layer.",
            '"Mean of the two outputs" is the mean over every window covering a token; a causal model '
            "attends causally inside windows.",
            "Positions count real tokens, so left padding does not change the outputs.",
            "Published defaults: post-LayerNorm, GELU, multi-head attention; positions (unspecified in the "
            "description) default to RoPE.",
        ),
    )


def _slam_v2() -> Variant:
    from ..configuration_slam import SlamV2Config
    from ..modeling_slam import SlamV2ForCausalLM

    return Variant(
        SlamV2Config,
        SlamV2ForCausalLM,
        "SLAM v2 has three levels. Level 1 is one full-attention layer. Level 2 runs `ef_cycles` "
        "encoder-fusion cycles over non-overlapping segments of `ef_segment_length` tokens: in cycle c "
        "(0-based) segment s is processed by block (s + c) mod 4 on input h_s + x_s (its previous output "
        "plus its original embedded input), attending only inside the segment (causally here). The 4 blocks "
        "(`ef_num_blocks`) are shared by all cycles, and each cycle runs them as one batched computation, not "
        "a loop over segments. Level 3 is a mixture of attention experts (MoA) over the full sequence, then "
        "an MLP and the final norm: a router sends each token to the top `moa_top_k` of `moa_num_experts` "
        "experts, each with its own query and output projections over one shared key/value projection, and "
        "a load-balancing loss, weighted by `router_aux_loss_coef`, is added to the training loss. Segments "
        "are fixed in absolute positions, so the KV cache stays valid while generating.",
        _v2_rows,
        "Valid targets: `q_proj`, `k_proj`, `v_proj`, `o_proj` name the attention projections of the "
        "full-attention layer and of the 4 fusion blocks, and in the MoA layer the per-expert query and "
        "output projections (`experts.<i>.q_proj`, `experts.<i>.o_proj`) and the shared `k_proj`, `v_proj`; "
        "`router` is the MoA router (hidden size to one logit per expert). To adapt the experts alone, pass "
        r'a regular expression: `target_modules=r".*experts\.\d+\.(q_proj|o_proj)"`. '
        f"{_MLP_LORA_MODULES} (it includes the router).",
        interpretation=(
            "The README's design is implemented, not the published code (which used overlapping windows and "
            'dense "MoE attention").',
            "Segments have a fixed length at fixed positions (the last may be partial; longer inputs have more "
            "than four, segment k going to block (k + c) mod 4), so the KV cache stays valid.",
            "The four blocks are shared by all cycles; each cycle computes new K/V and owns one cache layer.",
            "Experts have their own query and output projections over shared keys and values (top-k routing, "
            "GQA ratio kept); the load-balancing loss is added whenever labels are given.",
            "Published defaults: post-LayerNorm, GELU, MHA, RoPE, 8 experts, top-2.",
        ),
    )


def _slam_v3() -> Variant:
    from ..configuration_slam import SlamV3Config
    from ..modeling_slam import SlamV3ForConditionalGeneration

    return Variant(
        SlamV3Config,
        SlamV3ForConditionalGeneration,
        "SLAM v3 is an image+text encoder-decoder. The encoder input is the prompt with one `<image>` "
        "placeholder per image patch (the processor expands each `<image>`); a ViT vision tower (linear patch "
        "embedding, 2D RoPE over the patch grid, bidirectional layers, projector) puts its patch features at "
        "the placeholders. The joint sequence runs through four parallel paths that differ only in weights and "
        "attention masks, batched as one computation: text (text ↔ text), image (image ↔ image), shared "
        "(all ↔ all) and cross-modal (text ↔ image only). A fusion node mixes them (the mean of the paths that "
        "saw each token plus a learned projection of their concatenation), applies one cross-modal attention "
        "layer and, with `fusion_num_latents` > 0, compresses the sequence into learned latents; the result is "
        "the decoder's memory. The decoder generates the answer: causal Multi-head Latent Attention (MLA) "
        "caches only a `kv_lora_rank`-wide latent and one shared RoPE key per token, then cross-attention to "
        "the memory (its keys and values are computed once per generation), then an MLP.",
        _v3_rows,
        "Decoder targets: `q_proj`, `kv_b_proj` (MLA's latent → per-head key/value up-projection) and "
        "`o_proj` of the MLA self-attention, and `q_proj`, `k_proj`, `v_proj`, `o_proj` of the "
        "cross-attention; `kv_a_proj_with_mqa` is MLA's down-projection into the cached latent. Plain names "
        "also match the encoder (its four paths, fusion layer and vision tower use `q_proj`, `k_proj`, "
        "`v_proj`, `o_proj`; adapted paths call their projections one path at a time, not as stacked "
        "matmuls), so to adapt the decoder alone pass a regular expression, as above: "
        f'`r"{DECODER_LORA_PATTERN}"` adapts '
        "MLA's `q_proj`, `kv_b_proj`, `o_proj` and the cross-attention's `q_proj`, `o_proj` in every decoder "
        "layer. MLPs: `gate_proj` (for `geglu`/`swiglu`), `up_proj`, `down_proj`. "
        '`target_modules="all-linear"` adapts every projection except the tied output head.',
        task=IMAGE_TEXT_TASK,
        interpretation=(
            "An encoder-decoder, not decoder-only: the prompt and image are encoded once, the answer is decoded "
            "with cross-attention to the fused memory (the published code never implemented the multimodal part).",
            "Images enter as one `<image>` placeholder per patch; the vision tower uses 2D RoPE over the patch "
            "grid, the joint sequence 1D RoPE over real tokens.",
            "The four paths share one input and differ only in weights and attention masks; a token with no key "
            "in a path gets exactly zero from it.",
            "Fusion node = mean of the paths + a learned projection of their concatenation, then one "
            "cross-modal attention layer, optionally a learned-latent bottleneck.",
            "Decoder self-attention is DeepSeek-V2's Multi-head Latent Attention: the cache holds only the "
            "compressed latent and one RoPE key per token; decoding absorbs the up-projections.",
        ),
    )


def _slam_loop() -> Variant:
    from ..configuration_slam import SlamLoopConfig
    from ..modeling_slam import SlamLoopForCausalLM

    return Variant(
        SlamLoopConfig,
        SlamLoopForCausalLM,
        "The latent-loop transformer embeds the tokens, runs `prelude_layers` ordinary layers, then a core of "
        "`core_layers` layers whose weights are shared by every iteration, applied up to `loop_max_iterations` "
        "times with the prelude output re-injected before each iteration (`loop_injection`), then `coda_layers` "
        "layers, the final norm and the LM head. Training draws the depth of each step "
        "(`loop_iteration_sampling`) and backpropagates through the last `loop_backprop_iterations` iterations "
        "only. A confidence head reads the state after every iteration; it learns from the detached per-iteration "
        "token losses, so it never changes the language model, and at inference each token stops iterating once "
        "its exit criterion is met (`loop_exit_criterion`, `loop_exit_threshold`): easy tokens spend fewer core "
        'iterations. `generate()` keeps the KV cache: one set of core cache layers per iteration (`loop_cache="'
        'per_iteration"`, exact: a token that stopped early fills its deeper slots with its last keys and values) or '
        'one shared set holding each token\'s last keys and values (`"shared"`, smaller, an approximation: new '
        "tokens read them at every iteration).",
        _loop_rows,
        "Valid targets: `q_proj`, `k_proj`, `v_proj`, `o_proj` (attention of the prelude, core and coda layers), "
        f"{_MLP_LORA_MODULES}. The core's layers are shared by every iteration, so an adapter on `model.core.<i>` acts "
        "at every iteration; to adapt the core alone pass a regular expression, e.g. "
        r'`target_modules=r"model\.core\.\d+\.self_attn\.(q_proj|v_proj)"`. `confidence_head` (hidden size to one '
        "logit) is the exit head; retraining the language model moves the token losses it was trained on, so "
        "recalibrate the exit afterwards (`slam_hf.training.loop.calibrate_exit_threshold`).",
        interpretation=(
            "Prelude → shared core looped up to N times → coda (recurrent depth, as in Huginn); the prelude output is "
            "re-injected before every iteration, added to the state by default, so one iteration is exactly the "
            "plain transformer of prelude + core + coda layers.",
            "Training depth is drawn per step (Huginn's log-normal Poisson by default) with truncated backprop "
            "through the last iterations; the published rule, full depth while the loss is high "
            '(`loop_iteration_sampling="loss_triggered"`), and a fixed depth are options.',
            "The confidence head is trained on detached per-iteration token losses (target 1 when no later "
            "iteration lowers the token's loss by more than `loop_confidence_margin`), so it cannot change the "
            "language model; its loss is added to the training loss, never to the held-out loss.",
            "The exit threshold is chosen after training on held-out rows: the one that saves the most core "
            "iterations while the held-out loss stays within a relative budget of the full-depth loss "
            "(`slam_hf.training.loop.calibrate_exit_threshold`; `slam-hf train` does it for slam_loop).",
            "Per-token exit keeps cached decoding exact with the per-iteration cache (the default): an exited "
            "token's last keys and values stand in at deeper iterations, in the uncached forward and in the cache "
            'alike. `loop_cache="shared"` trades that for a cache of prelude + core + coda layers, new tokens reading '
            "past tokens' last keys and values at every iteration.",
            "Defaults follow the description: pre-RMSNorm, GeGLU, grouped-query attention, RoPE.",
        ),
        usage_note="After `generate()`, `model.loop_statistics` holds the mean core iterations per new token "
        "(`new_mean_iterations`, of `max_iterations`) and the share of core compute the exit saved "
        '(`new_compute_saved`). `model.generate(..., loop_exit_criterion="none")` runs every token to full '
        "depth; `loop_exit_threshold=` overrides the calibrated threshold for one call.",
    )


# --------------------------------------------------------------------------------------------------------------
# YAML config

TOP_LEVEL_KEYS = (
    "model",
    "data",
    "training",
    "generation",
    "exit_calibration",
    "output_dir",
    "hub",
    "torch_threads",
    "base_model",
    "lora",
)
# LoRA runs (a `lora` section with `base_model`): the variants they support, and the LoraConfig fields the command
# sets itself.
LORA_VARIANTS = ("slam_v1", "slam_v2")
RESERVED_LORA_KEYS = {
    "task_type": "the command trains a causal LM (CAUSAL_LM)",
    "base_model_name_or_path": "set the top-level `base_model:`",
    "inference_mode": "the adapter trains",
    "peft_type": "the section is a LoraConfig",
    "auto_mapping": "set by PEFT",
    "peft_version": "set by PEFT",
    "revision": "pass a local folder or a Hub id as `base_model:`",
}
# slam_loop: after training, pick the exit threshold on the held-out rows (slam_hf.training.loop).
EXIT_CALIBRATION_KEYS = ("enabled", "criterion", "loss_budget")
DEFAULT_EXIT_LOSS_BUDGET = 0.005
# Criteria a calibrated folder can decode with: "kl" probes the coda every iteration, which cached decoding cannot.
CALIBRATED_CRITERIA = ("confidence", "hidden_change")
DATA_KEYS = ("block_size", "max_train_rows", "max_eval_rows")
# SLAM v3 (digit tiles): rows per split (validation scores the loss, test the exact match), digits per tile,
# the training collator's translation augmentation, and the tiling seed.
IMAGE_TEXT_DATA_KEYS = ("num_digits", "train_rows", "eval_rows", "test_rows", "max_shift", "seed")
IMAGE_TEXT_DATA_DEFAULTS = dict(num_digits=2, train_rows=8000, eval_rows=500, test_rows=500, max_shift=2, seed=0)
HUB_KEYS = ("model_name", "repo_id")
# GenerationConfig fields the command fills in from the tokenizer.
TOKENIZER_GENERATION_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
# TrainingArguments fields that the command sets itself: what it writes, where, and how it reports.
RESERVED_TRAINING_KEYS = {
    "output_dir": "set the top-level `output_dir:` or pass --output-dir",
    "report_to": "the command reports to the console and training_metrics.json",
    "disable_tqdm": "the progress bar is always shown",
    "use_cpu": "chosen automatically (CPU when no CUDA device is available)",
    "prediction_loss_only": "evaluation computes the loss only",
    "load_best_model_at_end": "the folder holds the model after the last step; checkpoints stay in checkpoint-N",
    "push_to_hub": "upload the finished folder with `slam-hf push --model DIR --repo ORG/NAME`",
    "resume_from_checkpoint": "pass --resume-from-checkpoint PATH (or `latest`) to `slam-hf train`",
    "do_train": "implied by `slam-hf train`",
    "do_eval": "implied by `slam-hf train`",
    "eval_on_start": "the command always scores the model before training (the `before` numbers)",
}


def _unknown_key_error(section: str, key, allowed) -> ConfigError:
    where = f"{section}.{key}" if section else str(key)
    message = f"unknown key `{where}`"
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    if close:
        message += f"; did you mean `{close[0]}`?"
    else:
        message += f"; allowed keys{' in `' + section + '`' if section else ''}: {', '.join(sorted(allowed))}"
    return ConfigError(message)


def _section(raw: dict, name: str) -> dict:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"`{name}` must be a mapping of keys to values, got {type(value).__name__}")
    return dict(value)


def _optional_positive_int(value, where: str):
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"`{where}` must be a positive integer or null, got {value!r}")
    return value


def _non_negative_int(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"`{where}` must be an integer >= 0, got {value!r}")
    return value


def _image_text_data(data: dict) -> dict:
    """Validate the `data` section of an image-text (SLAM v3) config; returns it with defaults filled in."""
    from ..data.digits import _digit_range

    data = {**IMAGE_TEXT_DATA_DEFAULTS, **_checked_keys(data, "data", IMAGE_TEXT_DATA_KEYS)}
    try:
        lo, hi = _digit_range(data["num_digits"])
    except ValueError as err:
        raise ConfigError(f"`data.num_digits`: {err} (e.g. 2, or [2, 4])") from err
    data["num_digits"] = lo if lo == hi else [lo, hi]
    for key in ("train_rows", "eval_rows", "test_rows"):
        if _optional_positive_int(data[key], f"data.{key}") is None:
            raise ConfigError(f"`data.{key}` must be a positive integer, got null")
    _non_negative_int(data["max_shift"], "data.max_shift")
    _non_negative_int(data["seed"], "data.seed")
    return data


def _generation(section: dict) -> dict:
    """Validate the `generation` section: GenerationConfig fields that `slam-hf train` writes to
    generation_config.json, so they are the defaults of `model.generate()` and `slam-hf generate`."""
    from transformers import GenerationConfig

    allowed = {k for k in GenerationConfig().to_dict() if not k.startswith("_") and k != "transformers_version"}
    for key in section:
        if key in TOKENIZER_GENERATION_KEYS:
            raise ConfigError(f"`generation.{key}` cannot be set in the YAML: it comes from the tokenizer")
        if key not in allowed:
            raise _unknown_key_error("generation", key, allowed - set(TOKENIZER_GENERATION_KEYS))
    try:
        # strict: a setting the chosen mode ignores (temperature without do_sample) is an error, not a warning
        GenerationConfig(**section).validate(strict=True)
    except ValueError as err:
        raise ConfigError(f"invalid `generation` section: {err}") from err
    return section


def _config_parameters(config_class) -> set[str]:
    import inspect

    params = inspect.signature(config_class.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def load_run_config(path) -> dict:
    """Read and validate a training YAML; returns {model, variant, data, training, generation, exit_calibration,
    output_dir, hub, torch_threads, base_model, lora}.

    `torch_threads` (optional, top level): torch intra-op threads for the run (null: torch's default). Tiny models
    train faster on 1 thread, and on a busy machine OpenMP spin-waiting made 2 threads ~25-50x slower.
    `generation` (optional, top level): GenerationConfig fields saved in generation_config.json, the decoding a user
    of the folder gets by default (without it: transformers' defaults, i.e. greedy, at most 20 tokens in all).
    `exit_calibration` (optional, slam_loop only): see `_exit_calibration`; None for the other variants.
    `base_model` + `lora` (optional, together): LoRA adapters on a frozen trained model; see `_lora_section`. Both
    None for a run that trains a model from its config.
    """
    raw = _read_yaml(Path(path))
    variant, model = _model_section(raw)
    data = _data_section(raw, variants()[variant].task)
    training = _training_section(raw)
    generation = _generation(_section(raw, "generation"))
    exit_calibration = _exit_calibration(raw, variant, model)
    hub = _checked_keys(_section(raw, "hub"), "hub", HUB_KEYS)
    output_dir = raw.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        raise ConfigError(f"`output_dir` must be a path string, got {output_dir!r}")
    torch_threads = _optional_positive_int(raw.get("torch_threads"), "torch_threads")
    base_model, lora = _lora_section(raw, variant, model, generation)
    return dict(
        variant=variant,
        model=model,
        data=data,
        training=training,
        generation=generation,
        exit_calibration=exit_calibration,
        output_dir=output_dir,
        hub=hub,
        torch_threads=torch_threads,
        base_model=base_model,
        lora=lora,
    )


def _lora_section(raw: dict, variant: str, model: dict, generation: dict) -> tuple[str | None, dict | None]:
    """(`base_model`, `lora`) of a LoRA run, else (None, None).

    `base_model` is a folder written by `slam-hf train` (or a Hub id) whose weights stay frozen; `lora` holds
    `peft.LoraConfig` fields (`target_modules` required: a SLAM model_type has no PEFT default). Projections of a
    ternary base (`ternary_linear: true`) get full-precision adapters whose merge is refused
    (slam_hf.adapters.ternary_lora). The run saves the adapter, so the architecture comes from the base: `model`
    holds only `variant`, and `generation` stays the base folder's.
    """
    lora = _section(raw, "lora")
    base_model = raw.get("base_model")
    if base_model is None and not lora:
        return None, None
    if base_model is None:
        raise ConfigError("`lora` trains adapters on a trained model: set `base_model:` to its folder or Hub id")
    if not isinstance(base_model, str) or not base_model:
        raise ConfigError(f"`base_model` must be a model folder or Hub id, got {base_model!r}")
    if not lora:
        raise ConfigError(
            "`base_model` is the frozen base of a LoRA run: add a `lora` section (LoraConfig fields, e.g. "
            "`r: 8` and `target_modules: [q_proj, k_proj, v_proj, o_proj]`)"
        )
    if variant not in LORA_VARIANTS:
        raise ConfigError(f"`lora` runs support model.variant {' and '.join(LORA_VARIANTS)}, not {variant}")
    if model:
        raise ConfigError(
            f"`model.{next(iter(model))}`: a LoRA run takes the architecture from `base_model`'s config.json; "
            "`model` holds only `variant`"
        )
    if generation:
        raise ConfigError(
            "`generation`: a LoRA run saves an adapter, which decodes with the base folder's generation_config.json; "
            "remove the section"
        )
    for key in lora:
        if key in RESERVED_LORA_KEYS:
            raise ConfigError(f"`lora.{key}` cannot be set in the YAML: {RESERVED_LORA_KEYS[key]}")
    if "target_modules" not in lora:
        raise ConfigError(
            "`lora.target_modules` is required (a SLAM model has no PEFT default): e.g. [q_proj, k_proj, v_proj, "
            "o_proj, up_proj, down_proj], or all-linear"
        )
    from peft import LoraConfig

    from ..adapters.ternary_lora import ternary_lora_config

    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    _checked_keys(lora, "lora", fields - RESERVED_LORA_KEYS.keys())
    try:
        ternary_lora_config(task_type="CAUSAL_LM", **lora)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid `lora` section: {err}") from err
    return base_model, lora


def _exit_calibration(raw: dict, variant: str, model: dict) -> dict | None:
    """The `exit_calibration` section of a slam_loop run: {enabled, criterion, loss_budget}.

    After training, `slam-hf train` sets the saved config's exit (loop_exit_criterion, loop_exit_threshold) to the
    threshold of `criterion` that saves the most core iterations while the held-out loss stays within
    (1 + loss_budget) x the full-depth loss (slam_hf.training.loop.calibrate_exit_threshold). Defaults: enabled,
    the model section's loop_exit_criterion (else "confidence"), loss_budget 0.005 (0.5 %).
    """
    section = _checked_keys(_section(raw, "exit_calibration"), "exit_calibration", EXIT_CALIBRATION_KEYS)
    if variant != "slam_loop":
        if section:
            raise ConfigError(
                f"`exit_calibration` applies to the latent-loop model (model.variant: slam_loop) only; remove it "
                f"from this {variant} config"
            )
        return None
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"`exit_calibration.enabled` must be true or false, got {enabled!r}")
    model_criterion = model.get("loop_exit_criterion")
    criterion = section.get("criterion", model_criterion or "confidence")
    budget = check_exit_loss_budget(
        section.get("loss_budget", DEFAULT_EXIT_LOSS_BUDGET), "exit_calibration.loss_budget"
    )
    if not enabled:
        return dict(enabled=False, criterion=criterion, loss_budget=budget)
    if criterion not in CALIBRATED_CRITERIA:
        why = {
            "kl": "'kl' probes the coda after every iteration, which cached decoding (generate's default) cannot do",
            "none": "'none' has no threshold to calibrate",
        }.get(criterion, f"{criterion!r} is not an exit criterion")
        raise ConfigError(
            f"`exit_calibration.criterion` must be one of {', '.join(CALIBRATED_CRITERIA)}: {why}; to save the "
            "model without calibrating, set `exit_calibration.enabled: false`"
        )
    if model_criterion is not None and model_criterion != criterion:
        raise ConfigError(
            f"`model.loop_exit_criterion` ({model_criterion}) and `exit_calibration.criterion` ({criterion}) differ: "
            "calibration writes its criterion into the saved config; set one of them, or `exit_calibration.enabled: "
            "false` to keep the model section's exit"
        )
    if criterion == "confidence" and model.get("loop_confidence_loss_weight", 1.0) == 0:
        raise ConfigError(
            "`exit_calibration.criterion: confidence` needs a trained confidence head, but "
            "`model.loop_confidence_loss_weight` is 0; raise it, or calibrate `criterion: hidden_change`"
        )
    return dict(enabled=True, criterion=criterion, loss_budget=budget)


def check_exit_loss_budget(value, where: str) -> float:
    """A relative held-out loss increase >= 0 (0.005 = 0.5 %), else a ConfigError naming `where`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"`{where}` must be a relative loss increase >= 0 (0.005 = 0.5 %), got {value!r}")
    return float(value)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with the sections {', '.join(TOP_LEVEL_KEYS)}")
    _checked_keys(raw, "", TOP_LEVEL_KEYS)
    return raw


def _checked_keys(section: dict, name: str, allowed) -> dict:
    """`section` itself, once every key is in `allowed` (else a ConfigError naming the key and a close match)."""
    for key in section:
        if key not in allowed:
            raise _unknown_key_error(name, key, allowed)
    return section


def _model_section(raw: dict) -> tuple[str, dict]:
    """(`model.variant`, the other `model` keys), each a parameter of the variant's config class (and of its
    sub-configs, e.g. SLAM v3's `model.vision_config`)."""
    model = _section(raw, "model")
    known = variants()
    variant = model.pop("variant", None)
    if variant not in known:
        raise ConfigError(f"`model.variant` must be one of {', '.join(known)}; got {variant!r}")
    config_class = known[variant].config_class
    _checked_keys(model, "model", _config_parameters(config_class))
    for key, sub_class in getattr(config_class, "sub_configs", {}).items():
        if model.get(key) is None:
            continue
        if not isinstance(model[key], dict):
            raise ConfigError(f"`model.{key}` must be a mapping of keys to values, got {type(model[key]).__name__}")
        _checked_keys(model[key], f"model.{key}", _config_parameters(sub_class))
    return variant, model


def _data_section(raw: dict, task: str) -> dict:
    data = _section(raw, "data")
    if task == IMAGE_TEXT_TASK:
        return _image_text_data(data)
    _checked_keys(data, "data", DATA_KEYS)
    data.setdefault("block_size", 128)
    if not isinstance(data["block_size"], int) or isinstance(data["block_size"], bool) or data["block_size"] < 2:
        raise ConfigError(f"`data.block_size` must be an integer >= 2, got {data['block_size']!r}")
    for key in ("max_train_rows", "max_eval_rows"):
        data[key] = _optional_positive_int(data.get(key), f"data.{key}")
    return data


def _training_section(raw: dict) -> dict:
    training = _section(raw, "training")
    for key in training:
        if key in RESERVED_TRAINING_KEYS:
            raise ConfigError(f"`training.{key}` cannot be set in the YAML: {RESERVED_TRAINING_KEYS[key]}")
    return _checked_keys(training, "training", _training_fields() - RESERVED_TRAINING_KEYS.keys())


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """`hub_templates/<name>` (default `modelcard_template.md`), inside the package or next to it in a source
    checkout."""
    here = Path(__file__).resolve().parents[1]  # slam_hf/
    for candidate in (here / "hub_templates" / name, here.parent / "hub_templates" / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"model card template hub_templates/{name} not found in {here} or {here.parent}; "
        "run from a source checkout of slam_hf or install a build that ships the template"
    )


def lora_targets(config) -> list[str]:
    mlp = ["gate_proj", "up_proj", "down_proj"] if config.mlp_type in GATED_MLP_TYPES else ["up_proj", "down_proj"]
    return LORA_ATTENTION_MODULES + mlp
