"""`slam-hf train` with a `lora` section (run_config._lora_section): LoRA adapters trained on a frozen model loaded
from `base_model`, saved as a PEFT adapter folder.

The adapters are full precision. On a BitNet b1.58 ternary base (`ternary_linear: true`) the `TernaryLinear`
projections get `TernaryLoraLinear` (slam_hf.adapters.ternary_lora): the base keeps its ternary forward and stays
frozen, and merging the adapter is refused unless asked for with `merge_ternary_lora`, which reports what the
re-quantisation costs. Plain `nn.Linear` targets get PEFT's ordinary LoRA layer.

Not part of the remote code: this module may import anything.
"""

from __future__ import annotations

from .run_config import ConfigError, Variant


def base_config(variant: Variant, base_model: str, tokenizer):
    """The base model's config, checked against the YAML's variant and the tokenizer the run uses."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as err:
        raise ConfigError(f"`base_model`: cannot load a model config from {base_model!r}: {err}") from err
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization.quant_method
        raise ConfigError(
            f"`base_model` {base_model} is a {method}-quantized folder (e.g. from `slam-hf export --ternary`), whose "
            "packed layers cannot take adapters: use the full-precision master folder `slam-hf train` wrote (its "
            "ternary projections are TernaryLinear)"
        )
    expected = variant.config_class.model_type
    if config.model_type != expected:
        raise ConfigError(
            f"`base_model` {base_model} is a {config.model_type} model, but `model.variant` is {expected}"
        )
    if config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"`base_model` {base_model} has vocab_size {config.vocab_size}, fewer than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    return config


def build_peft_model(run: dict, config, job):
    """(The PeftModel: the base from `base_model`, frozen, with LoRA adapters; the base's `use_cache`)."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, set_seed

    from ..adapters.ternary_lora import TernaryLoraLinear, check_trainable_format, ternary_lora_config
    from ..slam_ternary import TernaryLinear

    set_seed(job.training_args.seed)  # the adapters' initialisation
    base = AutoModelForCausalLM.from_pretrained(run["base_model"], config=config)
    check_trainable_format(base)
    ternary = sum(isinstance(module, TernaryLinear) for module in base.modules())
    model = get_peft_model(base, ternary_lora_config(task_type="CAUSAL_LM", **run["lora"]))
    adapted = [module for module in model.modules() if isinstance(module, LoraLayer)]
    on_ternary = sum(isinstance(m, TernaryLoraLinear) for m in adapted)
    trainable, total = model.get_nb_trainable_parameters()
    job.say(
        f"LoRA on {run['base_model']} (frozen; {ternary} ternary projections): {len(adapted)} adapted projections, "
        f"{on_ternary} of them ternary (full-precision adapters, merge refused); {trainable:,} trainable of "
        f"{total:,} parameters"
    )
    return model, base.config.use_cache


def check_not_fsdp(trainer) -> None:
    """FSDP gathers the trained weights into a fresh model built from the config, which has no adapters."""
    if trainer.is_fsdp_enabled:
        raise ConfigError("`lora` runs do not support FSDP; launch them in one process or with DDP")


def save_adapter_folder(model, job, tokenizer) -> None:
    """The adapter folder: adapter_model.safetensors + adapter_config.json (and PEFT's README.md), the tokenizer."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(job.output_dir)
    tokenizer.save_pretrained(job.output_dir)


def lora_metrics(run: dict, model) -> dict:
    """training_metrics.json's `lora` record."""
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "base_model": run["base_model"],
        "config": run["lora"],
        "trainable_parameters": trainable,
        "all_parameters": total,
    }
