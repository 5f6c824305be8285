"""`slam-hf`: train a SLAM model from a YAML file and write a Hub-ready folder, or generate from one.

    slam-hf train --config configs/slam-v1-tiny.yaml --output-dir out/slam-v1-tiny
    slam-hf train --config configs/slam-v2-tiny.yaml --output-dir out/slam-v2-tiny
    slam-hf train --config configs/slam-v3-tiny.yaml --output-dir out/slam-v3-tiny
    slam-hf generate --model out/slam-v1-tiny --input "To be, or not to be"
    slam-hf generate --model out/slam-v3-tiny --image digits.png --input "what number is shown?"
    slam-hf push --model out/slam-v1-tiny --repo your-name/slam-v1-tiny

`train` reads three YAML sections (`model`, `data`, `training`; plus optional `output_dir` and `hub`).
Text variants (SLAM v1, v2): trains `AutoModelForCausalLM.from_config(config)` with the transformers `Trainer`
on the Shakespeare corpus shipped with `slam_hf.data` (whole works held out for validation), measures
held-out perplexity before and after training (the LM loss alone: auxiliary losses such as SLAM v2's MoA load
balancing are trained with but not scored), and saves weights (safetensors), config with `auto_map`, remote
code, tokenizer, a model card (README.md) and `training_metrics.json`.
Image-text variant (SLAM v3): trains `AutoModelForImageTextToText.from_config(config)` on MNIST digit tiles
("what number is shown?" -> the digit string; validation and test tiles are built from digit images never
seen in training), reports held-out exact match of greedy generation against chance, and saves the processor
(tokenizer + image processor, with their remote code) next to the model.
Every folder loads with `trust_remote_code=True` where slam_hf is not installed; `push` checks a folder and
uploads it to the Hub (slam_hf.hub).

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import os
import platform
import sys
import time
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
    head_auto_classes: tuple = ("AutoModelForCausalLM",)  # the Auto factories that load head_class
    interpretation: tuple = ()  # model card: where the public description was loose, what this code chose


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


def _v3_cache_bytes_per_token(config, bytes_per_value: int = 4) -> tuple[int, int]:
    """Decoder self-attention cache per generated token, all layers: (MLA latent cache, full per-head K/V)."""
    latent = (config.kv_lora_rank + config.qk_rope_head_dim) * config.decoder_layers * bytes_per_value
    heads = config.num_attention_heads
    full = heads * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim) * config.decoder_layers
    return latent, full * bytes_per_value


def _v3_rows(config) -> list[tuple[str, object]]:
    vision = config.vision_config
    latent_bytes, full_bytes = _v3_cache_bytes_per_token(config)
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


_MLP_LORA_MODULES = (
    "`up_proj`, `down_proj` (MLP), and `gate_proj` for gated MLPs (`mlp_type` `geglu` or `swiglu`) only. "
    '`target_modules="all-linear"` also works'
)


def variants() -> dict[str, Variant]:
    """`model.variant` -> classes. One line per SLAM variant."""
    from .configuration_slam import SlamV1Config, SlamV2Config, SlamV3Config
    from .modeling_slam import SlamV1ForCausalLM, SlamV2ForCausalLM, SlamV3ForConditionalGeneration

    return {
        "slam_v1": Variant(
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
                "\"Mean of the two outputs\" is the mean over every window covering a token; a causal model "
                "attends causally inside windows.",
                "Positions count real tokens, so left padding does not change the outputs.",
                "Published defaults: post-LayerNorm, GELU, multi-head attention; positions (unspecified in the "
                "description) default to RoPE.",
            ),
        ),
        "slam_v2": Variant(
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
                "dense \"MoE attention\").",
                "Segments have a fixed length at fixed positions (the last may be partial; longer inputs have more "
                "than four, segment k going to block (k + c) mod 4), so the KV cache stays valid.",
                "The four blocks are shared by all cycles; each cycle computes new K/V and owns one cache layer.",
                "Experts have their own query and output projections over shared keys and values (top-k routing, "
                "GQA ratio kept); the load-balancing loss is added whenever labels are given.",
                "Published defaults: post-LayerNorm, GELU, MHA, RoPE, 8 experts, top-2.",
            ),
        ),
        "slam_v3": Variant(
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
            head_auto_classes=("AutoModelForImageTextToText", "AutoModelForSeq2SeqLM"),
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
        ),
    }


# --------------------------------------------------------------------------------------------------------------
# YAML config

TOP_LEVEL_KEYS = ("model", "data", "training", "output_dir", "hub", "torch_threads")
DATA_KEYS = ("block_size", "max_train_rows", "max_eval_rows")
# SLAM v3 (digit tiles): rows per split (validation scores the loss, test the exact match), digits per tile,
# the training collator's translation augmentation, and the tiling seed.
IMAGE_TEXT_DATA_KEYS = ("num_digits", "train_rows", "eval_rows", "test_rows", "max_shift", "seed")
IMAGE_TEXT_DATA_DEFAULTS = {
    "num_digits": 2, "train_rows": 8000, "eval_rows": 500, "test_rows": 500, "max_shift": 2, "seed": 0,
}  # fmt: skip
HUB_KEYS = ("model_name", "repo_id")
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
    from .data import _digit_range

    for key in data:
        if key not in IMAGE_TEXT_DATA_KEYS:
            raise _unknown_key_error("data", key, IMAGE_TEXT_DATA_KEYS)
    data = {**IMAGE_TEXT_DATA_DEFAULTS, **data}
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


def _config_parameters(config_class) -> set[str]:
    import inspect

    params = inspect.signature(config_class.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def load_run_config(path) -> dict:
    """Read and validate a training YAML; returns {model, variant, data, training, output_dir, hub, torch_threads}.

    `torch_threads` (optional, top level): torch intra-op threads for the run (null: torch's default). Tiny models
    train faster on 1 thread, and on a busy machine OpenMP spin-waiting made 2 threads ~25-50x slower.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with the sections {', '.join(TOP_LEVEL_KEYS)}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise _unknown_key_error("", key, TOP_LEVEL_KEYS)

    model = _section(raw, "model")
    known = variants()
    variant = model.pop("variant", None)
    if variant not in known:
        raise ConfigError(f"`model.variant` must be one of {', '.join(known)}; got {variant!r}")
    allowed_model = _config_parameters(known[variant].config_class)
    for key in model:
        if key not in allowed_model:
            raise _unknown_key_error("model", key, allowed_model)
    sub_configs = getattr(known[variant].config_class, "sub_configs", {})
    for key, sub_class in sub_configs.items():  # SLAM v3: model.vision_config
        if model.get(key) is None:
            continue
        if not isinstance(model[key], dict):
            raise ConfigError(f"`model.{key}` must be a mapping of keys to values, got {type(model[key]).__name__}")
        allowed_sub = _config_parameters(sub_class)
        for sub_key in model[key]:
            if sub_key not in allowed_sub:
                raise _unknown_key_error(f"model.{key}", sub_key, allowed_sub)

    data = _section(raw, "data")
    if known[variant].task == IMAGE_TEXT_TASK:
        data = _image_text_data(data)
    else:
        for key in data:
            if key not in DATA_KEYS:
                raise _unknown_key_error("data", key, DATA_KEYS)
        data.setdefault("block_size", 128)
        if not isinstance(data["block_size"], int) or isinstance(data["block_size"], bool) or data["block_size"] < 2:
            raise ConfigError(f"`data.block_size` must be an integer >= 2, got {data['block_size']!r}")
        for key in ("max_train_rows", "max_eval_rows"):
            data[key] = _optional_positive_int(data.get(key), f"data.{key}")

    training = _section(raw, "training")
    allowed_training = _training_fields() - RESERVED_TRAINING_KEYS.keys()
    for key in training:
        if key in RESERVED_TRAINING_KEYS:
            raise ConfigError(f"`training.{key}` cannot be set in the YAML: {RESERVED_TRAINING_KEYS[key]}")
        if key not in allowed_training:
            raise _unknown_key_error("training", key, allowed_training)

    hub = _section(raw, "hub")
    for key in hub:
        if key not in HUB_KEYS:
            raise _unknown_key_error("hub", key, HUB_KEYS)

    output_dir = raw.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        raise ConfigError(f"`output_dir` must be a path string, got {output_dir!r}")
    torch_threads = _optional_positive_int(raw.get("torch_threads"), "torch_threads")
    return {
        "variant": variant, "model": model, "data": data, "training": training, "output_dir": output_dir, "hub": hub,
        "torch_threads": torch_threads,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# train


def _evenly_spaced(dataset, limit):
    """A fixed subset of `limit` rows spread over the whole split, so every work is represented."""
    n = len(dataset)
    if limit is None or limit >= n:
        return dataset
    if limit == 1:
        return dataset.select([0])
    return dataset.select(sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)}))


def _hardware(processes: int = 1, distributed: str | None = None) -> str:
    """The device one process ran on; with `processes` > 1, how many ran and how (`distributed`: e.g. "DDP, gloo")."""
    import torch

    if processes > 1:
        return f"{processes} processes ({distributed or 'distributed'}), each on {_hardware()}"
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} torch threads ({os.cpu_count()} logical cores visible)"


def _template_path(name: str = TEMPLATE_NAME) -> Path:
    """`hub_templates/<name>` (default `modelcard_template.md`), inside the package or next to it in a source
    checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "hub_templates" / name, here.parent / "hub_templates" / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"model card template hub_templates/{name} not found in {here} or {here.parent}; "
        "run from a source checkout of slam_hf or install a build that ships the template"
    )


def _lora_targets(config) -> list[str]:
    mlp = ["gate_proj", "up_proj", "down_proj"] if config.mlp_type in GATED_MLP_TYPES else ["up_proj", "down_proj"]
    return LORA_ATTENTION_MODULES + mlp


def _config_rows(config, block_size, variant: Variant) -> list[tuple[str, object]]:
    rows = [
        ("model_type", config.model_type),
        ("hidden_size", config.hidden_size),
        ("num_hidden_layers", f"{config.num_hidden_layers} (" + " → ".join(config.layer_schedule) + ")"),
        ("num_attention_heads / num_key_value_heads", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("head_dim", config.head_dim),
        ("intermediate_size", config.intermediate_size),
        ("mlp_type", config.mlp_type),
        ("norm", f"{config.norm_position}-{config.norm_type}"),
        ("position_embedding_type", config.position_embedding_type),
    ]
    rows += variant.architecture_rows(config)
    rows += [
        ("vocab_size", config.vocab_size),
        ("tie_word_embeddings", config.tie_word_embeddings),
        ("training context (block_size)", block_size),
    ]
    return rows


def _versions() -> dict:
    import huggingface_hub
    import torch
    import transformers

    from . import __version__

    return {
        "slam_hf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
    }


def _model_card(template, model_name, pipeline_tag, tags, metric, eval_result: dict, **template_vars):
    """The run's model card: shared card metadata, one measured `EvalResult`, the template filled in."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    card_data = ModelCardData(
        model_name=model_name,
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        metrics=[metric],
        eval_results=[EvalResult(task_type=pipeline_tag, metric_type=metric, **eval_result)],
    )
    from .hub import tested_transformers_range

    template_vars.setdefault("tested_range", tested_transformers_range())
    # with eval_results, model_name leaves card_data's template variables: pass it again
    return ModelCard.from_template(card_data, template_path=str(template), model_name=model_name, **template_vars)


def _training_arguments(output_dir, train_cfg: dict):
    """The run's TrainingArguments; an invalid `training` section becomes a ConfigError naming it."""
    import torch
    from transformers import TrainingArguments

    # Checkpoints only when the YAML asks for them (training.save_strategy / save_steps); the final folder is
    # written by the command either way.
    train_cfg = {"save_strategy": "no", **train_cfg}
    try:
        return TrainingArguments(
            output_dir=str(output_dir),
            report_to=[],
            disable_tqdm=False,
            use_cpu=not torch.cuda.is_available(),
            prediction_loss_only=True,
            **train_cfg,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid `training` section: {err}") from err


def _eval_perplexity(metrics: dict) -> tuple[float, float]:
    loss = float(metrics["eval_loss"])
    return loss, math.exp(loss)


def _resume_checkpoint(value, output_dir: Path) -> tuple[str, int, int] | None:
    """`--resume-from-checkpoint`: (checkpoint folder, its global step, entries in its log history); `latest` is the
    newest checkpoint-N in `output_dir`. None when not resuming."""
    if value is None:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    if value == "latest":
        path = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if path is None:
            raise ConfigError(
                f"--resume-from-checkpoint latest: no checkpoint-N folder in {output_dir}; runs write them with "
                "`training.save_strategy: steps` and `training.save_steps: N` in the YAML, or pass a checkpoint "
                "folder (and the --output-dir of the run that wrote it for `latest`)"
            )
        path = Path(path)
    else:
        path = Path(value)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise ConfigError(
            f"--resume-from-checkpoint {value}: {path} is not a Trainer checkpoint (no trainer_state.json); pass a "
            "checkpoint-N folder written with `training.save_strategy` in the YAML, or `latest`"
        )
    state = json.loads(state_file.read_text(encoding="utf-8"))
    return str(path), int(state["global_step"]), len(state.get("log_history", []))


def _enable_cpu_fsdp(trainer) -> None:
    """Under `accelerate launch` with `distributed_type: FSDP` on CPU, shard with FSDP2 (torch's `fully_shard`).

    accelerate (1.10 to 1.15 at least) switches to FSDP only for accelerator devices: `AcceleratorState` sets
    `DistributedType.FSDP` inside its MULTI_GPU / NPU / XPU / ... branch (accelerate/state.py), so a CPU run stays
    MULTI_CPU, the FSDP plugin is dropped and Trainer wraps the model in DDP, replicating every parameter without a
    word. torch's FSDP2 runs on CPU with gloo, and so does accelerate's FSDP2 preparation once the state says FSDP:
    this turns it on, with the plugin accelerate builds from the launcher's FSDP_* variables. FSDP1 cannot run on
    CPU: torch raises "FSDP needs a non-CPU accelerator device" (torch/distributed/fsdp/_init_utils.py).
    Call right after `Trainer.create_accelerator_and_postprocess`.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or trainer.is_fsdp_enabled:
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_AUTO_WRAP_POLICY, ... like accelerate does
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"FSDP version {plugin.fsdp_version} cannot run on CPU (torch: 'FSDP needs a non-CPU accelerator "
            "device'); set `fsdp_version: 2` under `fsdp_config` in the accelerate config, as "
            "configs/accelerate/fsdp-cpu-2proc.yaml does"
        )
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # as AcceleratorState.__init__ does on its FSDP path: later AcceleratorState() calls copy it back from here
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def _distributed_label(trainer) -> str:
    """How the processes of this run worked together, e.g. "DDP, gloo" or "FSDP2, gloo"."""
    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled:
        kind = f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', 1)}"
    elif state.num_processes > 1:
        kind = "DDP"
    else:
        kind = "single process"
    backend = getattr(state, "backend", None)
    return f"{kind}, {backend}" if backend else kind


def _parameters_per_process(trainer) -> list[int]:
    """Parameter elements each process holds after `prepare` (FSDP: its shards; DDP: a full replica). Collective."""
    import torch

    model = trainer.model_wrapped
    if trainer.is_fsdp_enabled:
        # FSDP2 leaves groups with reshard_after_forward=False (accelerate's embedding/head group) gathered after a
        # forward pass; reshard to count what each process stores between steps.
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    counts = trainer.accelerator.gather(torch.tensor([local], device=trainer.args.device))
    return [int(n) for n in counts.tolist()]


def _unsharded_model(trainer, model, build):
    """The trained model as one plain module: `model` itself, or under FSDP a fresh `build()` holding the full
    state dict (gathered from every process; a collective, so every process calls it; only the main process gets
    the weights)."""
    if not trainer.is_fsdp_enabled:
        return model
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return None
    full = build()
    full.load_state_dict(state_dict)
    return full


def train(args) -> dict:
    """`slam-hf train`: returns the metrics written to training_metrics.json."""
    t_start = time.perf_counter()
    run = load_run_config(args.config)
    with _torch_threads(run["torch_threads"]), _distributed_teardown():
        if variants()[run["variant"]].task == IMAGE_TEXT_TASK:
            return train_image_text(args, run, t_start)
        return _train_text(args, run, t_start)


@contextlib.contextmanager
def _distributed_teardown():
    """Under `accelerate launch`, end the process group when training is done: left to interpreter exit, gloo's
    threads can abort a rank ("terminate called without an active exception", seen on a busy 2-core machine)
    after the run has already finished and saved."""
    yield  # on an error, no barrier: the other ranks may never reach it
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def _torch_threads(count):
    """Within the block, torch uses `count` intra-op threads (None: leave the setting alone)."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Run(NamedTuple):
    """What both training paths settle before training: overrides applied, where it writes, how it reports."""

    train_cfg: dict  # the YAML's `training` section with the command-line overrides
    output_dir: Path
    model_name: str
    repo_id: str
    resume: tuple | None  # _resume_checkpoint's (folder, step, log entries)
    training_args: object
    is_main: bool  # under `accelerate launch` only the main process prints and writes

    @property
    def processes(self) -> int:
        return max(self.training_args.world_size, 1)

    @property
    def rows_per_step(self) -> int:
        """Rows per optimisation step over all processes (each draws its own per-device batch)."""
        args = self.training_args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * self.processes

    def say(self, message):
        if self.is_main:
            print(f"[slam-hf] {message}", flush=True)


def _prepare_run(args, run: dict) -> _Run:
    train_cfg = dict(run["training"])
    if args.max_steps is not None:
        train_cfg["max_steps"] = args.max_steps
    if args.seed is not None:
        train_cfg["seed"] = args.seed
    train_cfg.setdefault("seed", 42)
    output_dir = Path(args.output_dir or run["output_dir"] or Path("outputs") / Path(args.config).stem)
    # Under `accelerate launch` every process runs the whole command (data, training and evaluation are sharded
    # across them). The "before" evaluation runs inside train() (eval_on_start), after the model is prepared: a
    # Trainer.evaluate() call before train() prepares the model for evaluation only, and with accelerate 1.15 the
    # later training prepare() then skips the DDP wrapper (`_is_accelerate_prepared`), so processes would not sync
    # gradients. Resumed, that evaluation scores the checkpoint's weights (logged at its step).
    training_args = _training_arguments(output_dir, {**train_cfg, "eval_on_start": True})
    return _Run(
        train_cfg=train_cfg,
        output_dir=output_dir,
        model_name=run["hub"].get("model_name") or output_dir.resolve().name,
        repo_id=run["hub"].get("repo_id") or str(output_dir),
        resume=_resume_checkpoint(getattr(args, "resume_from_checkpoint", None), output_dir),
        training_args=training_args,
        is_main=training_args.process_index == 0,
    )


def _model_config(variant: Variant, model_section: dict, tokenizer, **defaults):
    """The variant's config from the YAML's `model` section; vocab_size and special-token ids default to the
    tokenizer's (it is built first for that reason)."""
    model_kwargs = dict(model_section)
    vocab_size = model_kwargs.setdefault("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ConfigError(f"`model.vocab_size` ({vocab_size}) is smaller than the tokenizer's {len(tokenizer)} tokens")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        model_kwargs.setdefault(name, getattr(tokenizer, name))
    for name, value in defaults.items():
        model_kwargs.setdefault(name, value)
    try:
        return variant.config_class(**model_kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid `model` section: {err}") from err


class _Trained(NamedTuple):
    output: object  # Trainer.train()'s TrainOutput
    steps: int  # global step reached (a resumed run counts its checkpoint's steps)
    start_step: int  # 0, or the checkpoint's step
    history: list  # the whole run's log (a resumed run's starts with its checkpoint's entries), final eval included
    before: dict  # eval_on_start: the model train() started from
    final_eval: dict
    optim_seconds: float  # this invocation's training time without its evaluations


def _train_and_evaluate(trainer, run: _Run) -> _Trained:
    """trainer.train() (resumed if asked), then the held-out evaluations before and after it."""
    start_step, restored = (run.resume[1], run.resume[2]) if run.resume else (0, 0)
    if run.resume:
        run.say(f"resuming from {run.resume[0]} at step {start_step}")
    output = trainer.train(resume_from_checkpoint=run.resume[0] if run.resume else None)
    steps = trainer.state.global_step
    history = list(trainer.state.log_history)
    this_run = history[restored:]
    before = next(e for e in this_run if "eval_loss" in e)
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in this_run)
    # Trainer already evaluates at the last step when eval_strategy="steps"; reuse that instead of a second pass.
    final_eval = next((e for e in reversed(this_run) if "eval_loss" in e and e.get("step") == steps), None)
    if final_eval is None or final_eval is before:
        final_eval = {**trainer.evaluate(), "step": steps}
        history.append(final_eval)
    optim_seconds = max(float(output.metrics["train_runtime"]) - eval_seconds, 1e-9)
    return _Trained(output, steps, start_step, history, before, final_eval, optim_seconds)


def _save_model_folder(model, output_dir: Path, use_cache: bool) -> None:
    """Weights, config (save_pretrained writes the full auto_map) and remote code into the Hub folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stale = output_dir / "pytorch_model.bin"
    if stale.exists():
        stale.unlink()
    model.config.use_cache = use_cache  # Trainer switched it off for training
    model.save_pretrained(output_dir)


def _train_text(args, run: dict, t_start: float) -> dict:
    """`slam-hf train` for a text variant (SLAM v1, v2): causal LM on the Shakespeare corpus."""
    template = _template_path()  # fail before training, not after
    # Training-only imports (datasets, Trainer, model cards) stay out of `generate` and `--help`.
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator, set_seed

    from .data import VALIDATION_WORKS, group_texts_for_causal_lm, load_default_tokenizer, load_shakespeare_corpus

    variant = variants()[run["variant"]]
    data_cfg = run["data"]
    for key in ("max_train_rows", "max_eval_rows"):
        if getattr(args, key) is not None:
            data_cfg[key] = getattr(args, key)
    block_size = data_cfg["block_size"]
    job = _prepare_run(args, run)
    say, training_args, output_dir, resume = job.say, job.training_args, job.output_dir, job.resume
    train_cfg, model_name, repo_id = job.train_cfg, job.model_name, job.repo_id

    tokenizer = load_default_tokenizer()
    config = _model_config(variant, run["model"], tokenizer)
    if config.position_embedding_type == "learned" and block_size > config.max_position_embeddings:
        raise ConfigError(
            f"`data.block_size` ({block_size}) exceeds `model.max_position_embeddings` "
            f"({config.max_position_embeddings})"
        )

    say(f"preparing data: Shakespeare corpus, block_size={block_size}")
    datasets.disable_progress_bars()
    corpus = load_shakespeare_corpus()
    train_rows = group_texts_for_causal_lm(corpus["train"], tokenizer, block_size)
    eval_rows = group_texts_for_causal_lm(corpus["validation"], tokenizer, block_size)
    datasets.enable_progress_bars()
    train_rows_total, eval_rows_total = len(train_rows), len(eval_rows)
    train_rows = _evenly_spaced(train_rows, data_cfg["max_train_rows"])
    eval_rows = _evenly_spaced(eval_rows, data_cfg["max_eval_rows"])
    say(
        f"train: {len(train_rows)}/{train_rows_total} rows of {block_size} tokens from "
        f"{corpus['train'].num_rows} works; validation: {len(eval_rows)}/{eval_rows_total} rows from the "
        f"{len(VALIDATION_WORKS)} held-out works ({', '.join(VALIDATION_WORKS)})"
    )

    # The model is built before Trainer seeds anything; every process builds the same weights (FSDP2 does not
    # broadcast them from rank 0 as DDP does).
    set_seed(training_args.seed)
    model = AutoModelForCausalLM.from_config(config)
    use_cache = model.config.use_cache  # Trainer switches the cache off for training; the saved config keeps it
    n_params = model.num_parameters()
    n_params_no_emb = model.num_parameters(exclude_embeddings=True)
    say(f"{run['variant']}: {n_params:,} parameters ({n_params_no_emb:,} without embeddings)")

    class PerplexityTrainer(Trainer):
        """Scores the LM loss alone, and logs the auxiliary (MoA load-balancing) loss next to the training loss.

        A model with `router_aux_loss_coef` (SLAM v2) adds coef * aux_loss to its loss whenever labels are given:
        that sum is what trains and what `loss` logs, but evaluation runs with the coefficient at 0, so
        `eval_loss` and perplexity are next-token cross-entropy only, comparable across variants.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.aux_losses = []  # training micro-batches since the last log

        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            _enable_cpu_fsdp(self)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            aux_loss = outputs.get("aux_loss") if isinstance(outputs, dict) else None
            if aux_loss is not None and model.training:
                self.aux_losses.append(aux_loss.detach().float())
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args, **kwargs):
            with _lm_loss_only(self.model):
                return super().evaluate(*args, **kwargs)

        def log(self, logs, *rest, **kwargs):
            if "eval_loss" in logs:
                logs["eval_perplexity"] = round(math.exp(logs["eval_loss"]), 3)
            if "loss" in logs and self.aux_losses:
                logs["aux_loss"] = round(torch.stack(self.aux_losses).mean().item(), 4)
                self.aux_losses = []
            super().log(logs, *rest, **kwargs)

    trainer = PerplexityTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=default_data_collator,
    )

    processes = job.processes
    hardware = _hardware(processes, _distributed_label(trainer))
    say(f"hardware: {hardware}")
    trained = _train_and_evaluate(trainer, job)
    train_output, steps, start_step, history = trained.output, trained.steps, trained.start_step, trained.history
    train_seconds, optim_seconds = float(train_output.metrics["train_runtime"]), trained.optim_seconds
    val_loss_before, val_ppl_before = _eval_perplexity(trained.before)
    val_loss_after, val_ppl_after = _eval_perplexity(trained.final_eval)
    where = "at initialisation" if resume is None else f"at the checkpoint (step {start_step})"
    say(f"held-out perplexity {where}: {val_ppl_before:.2f} (loss {val_loss_before:.4f})")
    say(f"held-out perplexity after training: {val_ppl_after:.2f} (loss {val_loss_after:.4f})")
    rows_per_step = job.rows_per_step
    train_tokens = steps * rows_per_step * block_size
    run_tokens = (steps - start_step) * rows_per_step * block_size
    parameters_per_process = _parameters_per_process(trainer)
    if processes > 1:
        say(
            f"parameters held per process ({_distributed_label(trainer)}): "
            + " / ".join(f"{n:,}" for n in parameters_per_process)
            + f" of {n_params:,}"
        )
    # Every process takes part in gathering FSDP shards; only the main one writes.
    model = _unsharded_model(trainer, model, lambda: AutoModelForCausalLM.from_config(config))
    if not job.is_main:
        return {"train_steps": steps, "val_loss_after": val_loss_after, "process_index": training_args.process_index}
    train_losses = [e["loss"] for e in history if "loss" in e]
    aux_losses = [e["aux_loss"] for e in history if "aux_loss" in e]
    eval_curve = [
        {"step": e["step"], "eval_loss": e["eval_loss"], "eval_perplexity": math.exp(e["eval_loss"])}
        for e in history
        if "eval_loss" in e
    ]

    # Hub folder: weights + config + remote code + generation config + tokenizer.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    _save_model_folder(model, output_dir, use_cache)
    tokenizer.save_pretrained(output_dir)

    wall_seconds = time.perf_counter() - t_start
    metrics = {
        "variant": run["variant"],
        "model_name": model_name,
        "parameters": n_params,
        "non_embedding_parameters": n_params_no_emb,
        "val_loss_before": val_loss_before,
        "val_perplexity_before": val_ppl_before,
        "val_loss_after": val_loss_after,
        "val_perplexity_after": val_ppl_after,
        "val_rows": len(eval_rows),
        "val_tokens": len(eval_rows) * block_size,
        "train_rows": len(train_rows),
        "train_steps": steps,
        "train_epochs": trainer.state.epoch,
        "train_tokens": train_tokens,
        "train_loss_mean": float(train_output.training_loss),
        "train_loss_last_logged": train_losses[-1] if train_losses else None,
        # SLAM v2: the MoA load-balancing loss (1 = balanced routing), in the training loss with this weight;
        # never in val_loss/perplexity. None for variants without one.
        "router_aux_loss_coef": getattr(config, "router_aux_loss_coef", None),
        "train_aux_loss_first_logged": aux_losses[0] if aux_losses else None,
        "train_aux_loss_last_logged": aux_losses[-1] if aux_losses else None,
        "train_seconds": train_seconds,
        "train_seconds_excluding_eval": optim_seconds,
        # this invocation's steps (a resumed run: those after its checkpoint) over its optimisation time
        "train_tokens_per_second": run_tokens / optim_seconds,
        "wall_seconds": wall_seconds,
        "process_cpu_seconds": time.process_time(),  # the main process's
        "hardware": hardware,
        "processes": processes,
        "distributed": _distributed_label(trainer),
        "global_batch_rows": rows_per_step,
        "parameters_per_process": parameters_per_process,
        "resumed_from_checkpoint": resume[0] if resume else None,
        "resumed_at_step": start_step if resume else None,
        "block_size": block_size,
        "seed": training_args.seed,
        "eval_curve": eval_curve,
        "training_config": {"model": run["model"], "data": data_cfg, "training": train_cfg},
        "versions": _versions(),
        "log_history": history,
    }
    (output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    card = _model_card(
        template,
        model_name,
        pipeline_tag="text-generation",
        tags=list(CARD_TAGS),
        metric="perplexity",
        eval_result=dict(
            task_name="Causal language modeling",
            dataset_type="shakespeare",
            dataset_name="Shakespeare, held-out works",
            dataset_split="validation",
            metric_name="Perplexity (held-out works)",
            metric_value=round(val_ppl_after, 2),
        ),
        repo_id=repo_id,
        variant=run["variant"],
        variant_summary=variant.summary,
        interpretation=variant.interpretation,
        config_rows=_config_rows(config, block_size, variant),
        lora_target_modules=_lora_targets(config),
        lora_modules=variant.lora_modules,
        validation_works=", ".join(VALIDATION_WORKS),
        train_works=corpus["train"].num_rows,
        tokenizer_size=f"{len(tokenizer):,}",
        m=metrics,
        t=training_args,
        optimizer=_enum_value(training_args.optim),
        scheduler=_enum_value(training_args.lr_scheduler_type),
        params=f"{n_params:,}",
        params_no_emb=f"{n_params_no_emb:,}",
        train_tokens=f"{train_tokens:,}",
        val_tokens=f"{metrics['val_tokens']:,}",
        ppl_before=f"{val_ppl_before:.2f}",
        ppl_after=f"{val_ppl_after:.2f}",
        loss_before=f"{val_loss_before:.4f}",
        loss_after=f"{val_loss_after:.4f}",
        wall_time=_format_seconds(wall_seconds),
        train_time=_format_seconds(optim_seconds),
        tokens_per_second=f"{run_tokens / optim_seconds:,.0f}",
        config_file=Path(args.config).as_posix(),
        resumed_step=start_step,
    )
    card.save(output_dir / "README.md")

    say(
        f"saved {output_dir}: {n_params:,} params, held-out perplexity {val_ppl_before:.2f} -> {val_ppl_after:.2f}, "
        f"{run_tokens:,} train tokens at "
        f"{run_tokens / optim_seconds:,.0f} tokens/s, wall time {_format_seconds(wall_seconds)}"
    )
    return metrics


# --------------------------------------------------------------------------------------------------------------
# train: image-text variants (SLAM v3) on MNIST digit tiles


def _image_text_config_rows(config, variant: Variant, image_size, grid) -> list[tuple[str, object]]:
    rows = [
        ("model_type", config.model_type),
        ("hidden_size", config.hidden_size),
        ("layers", " → ".join(config.layer_schedule)),
        (
            "num_attention_heads / num_key_value_heads (encoder, cross-attention)",
            f"{config.num_attention_heads} / {config.num_key_value_heads}",
        ),
        ("head_dim", config.head_dim),
        ("intermediate_size / mlp_type", f"{config.intermediate_size} / {config.mlp_type}"),
        ("norm", f"{config.norm_position}-{config.norm_type}"),
        ("position_embedding_type (encoder)", config.position_embedding_type),
    ]
    rows += variant.architecture_rows(config)
    rows += [
        (
            "vision patch grid",
            f"{grid[0]} × {grid[1]} = {grid[0] * grid[1]} patches ({image_size[0]} × {image_size[1]} pixel tiles)",
        ),
        ("vocab_size", config.vocab_size),
        ("tie_word_embeddings", config.tie_word_embeddings),
    ]
    return rows


def train_image_text(args, run: dict, t_start: float | None = None) -> dict:
    """`slam-hf train` for an image-text variant (SLAM v3): MNIST digit tiles -> the digit string.

    Tokenizer and processor are built from the training tiles (`slam_hf.data.digit_tile_processor`); the loss is
    scored on the validation tiles, greedy exact match on the test tiles; both splits are tiled from source digit
    images that training never sees. Returns the metrics written to training_metrics.json.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    template = _template_path(IMAGE_TEXT_TEMPLATE_NAME)  # fail before training, not after
    import datasets
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText, Trainer, set_seed

    from .data import (
        DIGIT_PROMPT,
        DIGIT_SIZE,
        DigitTileCollator,
        _digit_range,
        digit_exact_match,
        digit_exact_match_chance,
        digit_source_split,
        digit_tile_processor,
        load_digit_tiles,
        preprocess_digit_tiles,
        train_digit_tokenizer,
    )

    variant = variants()[run["variant"]]
    data_cfg = dict(run["data"])
    if args.max_train_rows is not None:
        data_cfg["train_rows"] = args.max_train_rows
    if args.max_eval_rows is not None:
        data_cfg["eval_rows"] = data_cfg["test_rows"] = args.max_eval_rows
    job = _prepare_run(args, run)
    say, training_args, output_dir, resume = job.say, job.training_args, job.output_dir, job.resume
    train_cfg, model_name, repo_id = job.train_cfg, job.model_name, job.repo_id
    num_digits = data_cfg["num_digits"]
    digits_text = str(num_digits) if isinstance(num_digits, int) else f"{num_digits[0]}-{num_digits[1]}"
    image_size = (DIGIT_SIZE, _digit_range(num_digits)[1] * DIGIT_SIZE)  # (height, width) of every tile
    say(f"preparing data: MNIST digit tiles of {digits_text} digits")
    datasets.disable_progress_bars()
    sizes = {"train": data_cfg["train_rows"], "validation": data_cfg["eval_rows"], "test": data_cfg["test_rows"]}
    tiles = load_digit_tiles(num_digits=num_digits, sizes=sizes, seed=data_cfg["seed"])
    chance = digit_exact_match_chance(tiles["test"])  # guessing digits of the right length, over the test rows

    # Tokenizer first: it fixes vocab_size and the special-token ids of the model config.
    tokenizer = train_digit_tokenizer(tiles["train"])
    config = _model_config(
        variant, run["model"], tokenizer,
        decoder_start_token_id=tokenizer.bos_token_id, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    patch_size = config.vision_config.patch_size
    if image_size[0] % patch_size or image_size[1] % patch_size:
        raise ConfigError(
            f"`model.vision_config.patch_size` ({patch_size}) must divide the {image_size[0]} × {image_size[1]} "
            f"pixel tiles; use 7, 14 or 28"
        )
    if config.vision_config.num_channels != 3:
        raise ConfigError("`model.vision_config.num_channels` must be 3: the image processor outputs RGB")
    processor = digit_tile_processor(tiles["train"], patch_size=patch_size, tokenizer=tokenizer)
    if processor.image_token_id != config.image_token_id:
        raise ConfigError(
            f"`model.image_token_id` ({config.image_token_id}) is not the tokenizer's <image> id "
            f"({processor.image_token_id}); leave it unset"
        )
    train_rows = preprocess_digit_tiles(tiles["train"], processor)
    eval_rows = preprocess_digit_tiles(tiles["validation"], processor)
    datasets.enable_progress_bars()
    grid = (image_size[0] // patch_size, image_size[1] // patch_size)
    plain = train_rows.with_format(None)
    tokens_per_row = float(np.mean([len(i) + len(l) for i, l in zip(plain["input_ids"], plain["labels"])]))
    sources = {name: len(idx) for name, idx in digit_source_split().items()}
    say(
        f"train: {len(train_rows)} tiles from {sources['train']} source digits; validation (loss): "
        f"{len(eval_rows)} tiles, test (exact match): {len(tiles['test'])} tiles, from {sources['validation']} "
        f"and {sources['test']} other source digits. Tiles {image_size[0]}×{image_size[1]} px = {grid[0]}×{grid[1]} "
        f"patches; prompt {DIGIT_PROMPT!r}; tokenizer {len(tokenizer)} tokens (one per digit); chance exact match "
        f"{chance:.2%}"
    )

    # The model is built before Trainer seeds anything; every process builds the same weights (FSDP2 does not
    # broadcast them from rank 0 as DDP does).
    set_seed(training_args.seed)
    model = AutoModelForImageTextToText.from_config(config)
    use_cache = model.config.use_cache  # Trainer switches the cache off for training; the saved config keeps it
    n_params = model.num_parameters()
    n_params_vision = sum(p.numel() for p in model.get_encoder().vision_tower.parameters())
    say(f"{run['variant']}: {n_params:,} parameters ({n_params_vision:,} in the vision tower)")

    class ImageTextTrainer(Trainer):
        """Trains through `train_collator` (translation augmentation) and evaluates through `data_collator`."""

        def __init__(self, *args, train_collator=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.train_collator = train_collator

        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            _enable_cpu_fsdp(self)

        def get_train_dataloader(self):
            eval_collator, self.data_collator = self.data_collator, self.train_collator or self.data_collator
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = eval_collator

    pad_id = tokenizer.pad_token_id
    trainer = ImageTextTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=DigitTileCollator(pad_id),
        train_collator=DigitTileCollator(pad_id, max_shift=data_cfg["max_shift"], seed=training_args.seed),
    )

    processes = job.processes
    hardware = _hardware(processes, _distributed_label(trainer))
    say(f"hardware: {hardware}")
    # Exact match before training scores the freshly built model (a resumed run: the checkpoint is loaded by
    # train(), so it is not scored before; the number is None). Every process generates on the whole test split.
    match_before = digit_exact_match(model, processor, tiles["test"]) if resume is None else None
    trained = _train_and_evaluate(trainer, job)
    train_output, steps, start_step, history = trained.output, trained.steps, trained.start_step, trained.history
    train_seconds, optim_seconds = float(train_output.metrics["train_runtime"]), trained.optim_seconds
    val_loss_before = float(trained.before["eval_loss"])
    where = "at initialisation" if resume is None else f"at the checkpoint (step {start_step})"
    exact_before = "" if match_before is None else f", test exact match {match_before['exact_match']:.2%}"
    say(f"{where}: held-out loss {val_loss_before:.4f}{exact_before} (chance {chance:.2%})")
    val_loss_after = float(trained.final_eval["eval_loss"])
    # Every process takes part in gathering FSDP shards (collective); the exact match then runs on a plain module.
    parameters_per_process = _parameters_per_process(trainer)
    model = _unsharded_model(trainer, model, lambda: AutoModelForImageTextToText.from_config(config))
    if not job.is_main:
        return {"train_steps": steps, "val_loss_after": val_loss_after, "process_index": training_args.process_index}
    t_match = time.perf_counter()
    match = digit_exact_match(model, processor, tiles["test"])
    match_seconds = time.perf_counter() - t_match
    say(
        f"after training: held-out loss {val_loss_after:.4f}, test exact match {match['exact_match']:.2%} "
        f"(digits right {match['digit_accuracy']:.2%}; chance {chance:.2%}) on {match['rows']} tiles"
    )
    rows_per_step = job.rows_per_step
    train_samples = steps * rows_per_step
    run_samples = (steps - start_step) * rows_per_step
    train_losses = [e["loss"] for e in history if "loss" in e]
    eval_curve = [{"step": e["step"], "eval_loss": e["eval_loss"]} for e in history if "eval_loss" in e]

    # Hub folder: weights + config + remote code + generation config + processor.
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    generation.eos_token_id, generation.decoder_start_token_id = tokenizer.eos_token_id, config.decoder_start_token_id
    _save_model_folder(model, output_dir, use_cache)
    processor.save_pretrained(output_dir)

    wall_seconds = time.perf_counter() - t_start
    latent_bytes, full_bytes = _v3_cache_bytes_per_token(config)
    metrics = {
        "variant": run["variant"],
        "task": variant.task,
        "model_name": model_name,
        "parameters": n_params,
        "vision_tower_parameters": n_params_vision,
        "num_digits": num_digits,
        "image_size": list(image_size),
        "patch_grid": list(grid),
        "test_exact_match": match["exact_match"],
        "test_digit_accuracy": match["digit_accuracy"],
        "test_exact_match_before": None if match_before is None else match_before["exact_match"],
        "chance_exact_match": chance,
        "test_rows": match["rows"],
        "val_loss_before": val_loss_before,
        "val_loss_after": val_loss_after,
        "val_rows": len(eval_rows),
        "train_rows": len(train_rows),
        "train_steps": steps,
        "train_epochs": trainer.state.epoch,
        "train_samples": train_samples,
        "tokens_per_sample": tokens_per_row,
        "train_tokens": train_samples * tokens_per_row,
        "train_loss_mean": float(train_output.training_loss),
        "train_loss_last_logged": train_losses[-1] if train_losses else None,
        "max_shift": data_cfg["max_shift"],
        "train_seconds": train_seconds,
        "train_seconds_excluding_eval": optim_seconds,
        # this invocation's steps (a resumed run: those after its checkpoint) over its optimisation time
        "train_samples_per_second": run_samples / optim_seconds,
        "train_tokens_per_second": run_samples * tokens_per_row / optim_seconds,
        "exact_match_seconds": match_seconds,
        "decoder_cache_bytes_per_token": latent_bytes,
        "decoder_cache_bytes_per_token_without_mla": full_bytes,
        "wall_seconds": wall_seconds,
        "process_cpu_seconds": time.process_time(),  # the main process's
        "hardware": hardware,
        "processes": processes,
        "distributed": _distributed_label(trainer),
        "global_batch_rows": rows_per_step,
        "parameters_per_process": parameters_per_process,
        "resumed_from_checkpoint": resume[0] if resume else None,
        "resumed_at_step": start_step if resume else None,
        "torch_threads": torch.get_num_threads(),
        "seed": training_args.seed,
        "eval_curve": eval_curve,
        "test_predictions_first": [
            {"answer": a, "prediction": p} for a, p in zip(tiles["test"]["answer"][:20], match["predictions"][:20])
        ],
        "training_config": {"model": run["model"], "data": data_cfg, "training": train_cfg},
        "versions": _versions(),
        "log_history": history,
    }
    (output_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    card = _model_card(
        template,
        model_name,
        pipeline_tag=IMAGE_TEXT_TASK,
        tags=list(CARD_TAGS) + ["mnist"],
        metric="exact_match",
        eval_result=dict(
            task_name="Reading digits from an image",
            dataset_type="mnist-digit-tiles",
            dataset_name=f"MNIST digit tiles ({digits_text} digits), held-out source digits",
            dataset_split="test",
            metric_name="Exact match (greedy)",
            metric_value=round(match["exact_match"], 4),
        ),
        repo_id=repo_id,
        variant=run["variant"],
        variant_summary=variant.summary,
        interpretation=variant.interpretation,
        config_rows=_image_text_config_rows(config, variant, image_size, grid),
        lora_modules=variant.lora_modules,
        decoder_lora_pattern=DECODER_LORA_PATTERN,
        digits_text=digits_text,
        prompt=DIGIT_PROMPT,
        image_token=processor.image_token,
        sources=sources,
        tokenizer_size=len(tokenizer),
        m=metrics,
        t=training_args,
        optimizer=_enum_value(training_args.optim),
        scheduler=_enum_value(training_args.lr_scheduler_type),
        params=f"{n_params:,}",
        params_vision=f"{n_params_vision:,}",
        exact_match=f"{match['exact_match']:.2%}",
        exact_match_before=(
            f"{match_before['exact_match']:.2%}" if match_before else f"not measured (resumed at step {start_step})"
        ),
        digit_accuracy=f"{match['digit_accuracy']:.2%}",
        chance=f"{chance:.2%}",
        loss_before=f"{val_loss_before:.4f}",
        loss_after=f"{val_loss_after:.4f}",
        wall_time=_format_seconds(wall_seconds),
        train_time=_format_seconds(optim_seconds),
        samples_per_second=f"{run_samples / optim_seconds:,.0f}",
        train_samples=f"{train_samples:,}",
        tokens_per_second=f"{run_samples * tokens_per_row / optim_seconds:,.0f}",
        config_file=Path(args.config).as_posix(),
    )
    card.save(output_dir / "README.md")

    exact_before = f"{match_before['exact_match']:.2%} -> " if match_before else ""
    say(
        f"saved {output_dir}: {n_params:,} params, test exact match {exact_before}{match['exact_match']:.2%} "
        f"(chance {chance:.2%}), {run_samples:,} train samples at {run_samples / optim_seconds:,.0f} samples/s, "
        f"wall time {_format_seconds(wall_seconds)}"
    )
    return metrics


@contextlib.contextmanager
def _lm_loss_only(model):
    """Within the block, a model with an auxiliary router loss returns the LM loss alone."""
    config = model.config
    coef = getattr(config, "router_aux_loss_coef", None)
    if not coef:
        yield
        return
    config.router_aux_loss_coef = 0.0
    try:
        yield
    finally:
        config.router_aux_loss_coef = coef


def _enum_value(value) -> str:
    return str(getattr(value, "value", value))


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


# --------------------------------------------------------------------------------------------------------------
# generate


def generate(args) -> str:
    """`slam-hf generate`: prints and returns prompt + continuation (text models), or the answer (image-text
    models such as SLAM v3, with or without `--image`)."""
    if not Path(args.model).is_dir() and not _looks_like_repo_id(args.model):
        raise ConfigError(f"model folder not found: {args.model}")
    image = getattr(args, "image", None)
    if image is not None and not Path(image).is_file() and not image.startswith(("http://", "https://")):
        raise ConfigError(f"image file not found: {image}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the output to the generated text
    if args.seed is not None:
        set_seed(args.seed)
    config = AutoConfig.from_pretrained(args.model, trust_remote_code=True)
    image_text = getattr(config, "vision_config", None) is not None
    if image is not None and not image_text:
        raise ConfigError(
            f"--image needs an image-text model (slam_v3), but {args.model} holds a text-only "
            f"`{config.model_type}` model; drop --image to continue text with it"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen_kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    if args.do_sample:
        gen_kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if image_text:
        return _generate_image_text(args, image, device, gen_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    model.to(device).eval()
    inputs = tokenizer(args.input, return_tensors="pt").to(device)
    with torch.no_grad():
        output = model.generate(**inputs, **gen_kwargs)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    print(text)
    return text


def _generate_image_text(args, image, device, gen_kwargs) -> str:
    """Encoder-decoder generation: the processor encodes the prompt (and image), the answer alone is printed."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.image_utils import load_image

    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True)
    model.to(device).eval()
    token = processor.image_token
    if image is not None:
        try:
            picture = load_image(image)
        except Exception as err:  # PIL raises several types for unreadable files
            raise ConfigError(f"cannot read image {image}: {err}") from err
        # One image: its placeholder goes first unless the prompt places it (as in training).
        text = args.input if token in args.input else token + args.input
        if text.count(token) != 1:
            raise ConfigError(f"--input holds {text.count(token)} {token} tokens; one image needs exactly one")
        inputs = processor(images=picture, text=text, return_tensors="pt")
    else:
        if token in args.input:
            raise ConfigError(f"--input holds {token} but no --image was given; pass --image FILE")
        inputs = processor(text=args.input, return_tensors="pt")
    inputs = inputs.to(device)
    with torch.no_grad():
        output = model.generate(**inputs, **gen_kwargs)
    text = processor.decode(output[0], skip_special_tokens=True)
    print(text)
    return text


def _looks_like_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and not os.path.exists(name)


# --------------------------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slam-hf",
        description="Train SLAM models with transformers, generate from them and publish them to the Hub.",
        epilog="examples:\n"
        "  slam-hf train --config configs/slam-v1-tiny.yaml --output-dir outputs/slam-v1-tiny\n"
        "  slam-hf train --config configs/slam-v2-tiny.yaml --output-dir outputs/slam-v2-tiny\n"
        "  slam-hf train --config configs/slam-v3-tiny.yaml --output-dir outputs/slam-v3-tiny\n"
        '  slam-hf generate --model outputs/slam-v1-tiny --input "To be, or not to be" --max-new-tokens 40\n'
        '  slam-hf generate --model outputs/slam-v3-tiny --image digits.png --input "what number is shown?"\n'
        "  slam-hf push --model outputs/slam-v1-tiny --repo your-name/slam-v1-tiny",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate,push,bench}")

    p = sub.add_parser(
        "train",
        help="train from a YAML config and write a Hub-ready folder",
        description="Train a SLAM model and write a Hub-ready folder (safetensors, config with auto_map, remote "
        "code, tokenizer or processor, model card, training_metrics.json): SLAM v1/v2 as causal LMs on the "
        "Shakespeare corpus, SLAM v3 on MNIST digit tiles (image + 'what number is shown?' -> the digits).",
    )
    p.add_argument("--config", required=True, help="YAML file with `model`, `data` and `training` sections")
    p.add_argument("--output-dir", help="folder to write (default: `output_dir` in the YAML)")
    p.add_argument("--max-steps", type=_positive_int, help="override training.max_steps")
    p.add_argument("--seed", type=int, help="override training.seed")
    p.add_argument(
        "--max-train-rows",
        type=_positive_int,
        help="override data.max_train_rows (slam_v3: data.train_rows); quick runs",
    )
    p.add_argument(
        "--max-eval-rows",
        type=_positive_int,
        help="override data.max_eval_rows (slam_v3: data.eval_rows and data.test_rows); quick runs",
    )
    p.add_argument(
        "--resume-from-checkpoint",
        metavar="PATH|latest",
        help="continue a run from a checkpoint-N folder (written with training.save_strategy/save_steps in the "
        "YAML), restoring weights, optimizer, scheduler, RNG and data position; `latest`: the newest checkpoint-N "
        "in the output folder",
    )
    p.set_defaults(func=train)

    g = sub.add_parser(
        "generate",
        help="continue a prompt (or answer about an image) with a trained model",
        description="Load a folder written by `slam-hf train` (or a Hub repo) with trust_remote_code=True. "
        "Text models (SLAM v1, v2) print the prompt followed by its continuation; image-text models (SLAM v3) "
        "load their processor too and print the answer to the prompt about --image (or to the prompt alone).",
    )
    g.add_argument("--model", required=True, help="model folder or Hub repo id")
    g.add_argument("--input", required=True, help="prompt text")
    g.add_argument(
        "--image",
        help="image file (or URL) for an image-text model (slam_v3); its <image> placeholder goes before the "
        "prompt unless the prompt holds one",
    )
    g.add_argument("--max-new-tokens", type=_positive_int, default=50)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=_positive_float, default=0.8, help="with --do-sample")
    g.add_argument("--top-k", type=_positive_int, default=50, help="with --do-sample")
    g.add_argument("--top-p", type=_positive_float, default=1.0, help="with --do-sample")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.set_defaults(func=generate)

    h = sub.add_parser(
        "push",
        help="check a saved SLAM folder and upload it to the Hub",
        description="Check a folder the way a Hub user's from_pretrained(..., trust_remote_code=True) will read it "
        "(config.json and its auto_map, the remote code, weights against checksums.json and loaded strictly, the "
        "tokenizer or processor, the model card), add checksums.json and a model card if they are missing, upload "
        "it in one commit and verify every uploaded file against the Hub's checksums. Uses HF_TOKEN / your saved "
        "login and HF_ENDPOINT like every huggingface_hub tool.",
    )
    h.add_argument("--model", required=True, help="folder written by `slam-hf train` or save_pretrained")
    h.add_argument("--repo", required=True, help="Hub repo id: ORG/NAME, or NAME in your own namespace")
    h.add_argument("--revision", help="branch to commit to (created from main if missing; default main)")
    h.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its setting)")
    h.add_argument("--commit-message", help="default: 'Upload <class> (<parameters>) with slam-hf push'")
    h.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    h.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    h.add_argument("--dry-run", action="store_true", help="run the checks (and add the missing files) but upload nothing")
    h.set_defaults(func=push)

    b = sub.add_parser(
        "bench",
        help="train and measure SLAM models against transformers baselines",
        description="Train every model listed in the YAML (SLAM variants and transformers baselines built from "
        "config) with one tokenizer, the same rows, budget, optimizer, schedule and seeds, then measure parameters, "
        "peak memory, held-out loss / perplexity / top-1 accuracy, throughput, latency, generation speed, cache "
        "bytes per token and loss-curve stability. Writes results.json, leaderboard.md, loss_curves.png and "
        "quality_vs_throughput.png.",
    )
    b.add_argument("--config", required=True, help="benchmark YAML, e.g. configs/bench/smoke.yaml")
    b.add_argument("--output-dir", required=True, help="folder for the results and reports")
    b.add_argument("--models", help="comma-separated subset of the YAML's models")
    b.add_argument("--seeds", help="comma-separated seeds, replacing the YAML's")
    b.add_argument("--steps", type=_positive_int, help="replace the YAML's budget by this many optimizer steps")
    b.add_argument(
        "--max-train-seconds", type=_positive_float, help="per-model training time cap (the row says where it stopped)"
    )
    b.set_defaults(func=bench)
    return parser


def bench(args) -> dict:
    """`slam-hf bench`: returns the results dict (also written to --output-dir/results.json)."""
    from .bench import BenchConfigError, load_bench_config, run_bench

    config = load_bench_config(args.config)
    if args.models:
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in config["models"]]
        if unknown:
            raise BenchConfigError(f"--models names {unknown}, not in {args.config} ({', '.join(config['models'])})")
        config["models"] = chosen
        config["compile"] = [m for m in config["compile"] if m in chosen]
    if args.seeds:
        try:
            config["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError as err:
            raise BenchConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from err
    if args.steps:
        config["budget"] = {"steps": args.steps}
    if args.max_train_seconds:
        config["max_train_seconds"] = args.max_train_seconds
    command = "slam-hf bench --config " + str(args.config) + " --output-dir " + str(args.output_dir)
    for flag in ("models", "seeds", "steps", "max_train_seconds"):
        if getattr(args, flag):
            command += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    return run_bench(config, args.output_dir, command=command, log=lambda line: print(line, flush=True))


def push(args) -> dict:
    """`slam-hf push`: returns push_folder's result (repo id, commit sha, url, files)."""
    from .hub import push_folder

    result = push_folder(
        args.model,
        args.repo,
        revision=args.revision,
        private=args.private or None,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        token=args.token,
        dry_run=args.dry_run,
    )
    print(f"[slam-hf] checked {result['summary']}", flush=True)
    if args.dry_run:
        print(f"[slam-hf] dry run: {len(result['files'])} files would be uploaded to {args.repo}", flush=True)
    else:
        print(
            f"[slam-hf] pushed {len(result['files'])} files to {result['repo_id']} at commit {result['commit']}, "
            f"verified against the Hub's checksums: {result['url']}",
            flush=True,
        )
    return result


def _positive(cast, what):
    """An argparse `type` that accepts only numbers > 0."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
        return value

    return parse


_positive_int = _positive(int, "integer")
_positive_float = _positive(float, "number")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .bench import BenchConfigError
    from .hub import FolderError

    try:
        args.func(args)
    except (ConfigError, FolderError, BenchConfigError) as err:
        parser.exit(2, f"slam-hf {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
