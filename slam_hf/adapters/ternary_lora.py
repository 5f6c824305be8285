"""LoRA on BitNet b1.58 ternary projections (`TernaryLinear`, slam_ternary): full-precision adapters over a frozen
ternary base, and a merge that is refused unless asked for explicitly.

What the adapted layer computes: y = TernaryLinear(x) + (alpha / r) * B A x. The base term is the ternary product
(weights rounded to {-1, 0, 1} * mean|W|, activations to int8 per token); the adapter term runs in full precision on
the unquantised input, as QLoRA does over its 4-bit base. Only A and B train: PEFT freezes the base, including the
full-precision master weights `TernaryLinear` keeps.

Why merging is refused by default: merging adds (alpha / r) * B A to the master weight W, and `TernaryLinear`
re-quantises whatever weight it holds in every forward. Ternary(W + BA) is not Ternary(W) + BA: the merged weight
rounds to other ternary values with another scale, and its product sees int8 activations where the adapter saw full
precision. So the merged model's outputs differ from the adapted model's, by an amount only a measurement can tell.
`merge_and_unload()` (and `merge_adapter()`) therefore raise `TernaryMergeError`; `merge_ternary_lora(peft_model)`
is the opt-in: it merges into the master weights (re-quantised by construction, since the forward quantises), measures
the logit change against the adapted model on a probe batch, logs it and returns it.

Usage::

    from slam_hf.adapters.ternary_lora import get_ternary_peft_model, load_ternary_adapter, merge_ternary_lora

    peft_model = get_ternary_peft_model(model, task_type="CAUSAL_LM", r=8, target_modules="all-linear")
    ...  # train: only the LoRA matrices have gradients
    peft_model.save_pretrained("adapter")
    peft_model = load_ternary_adapter(model, "adapter")  # PeftModel.from_pretrained with the ternary layer
    merged, report = merge_ternary_lora(peft_model, input_ids=batch)  # opt-in; report.max_logit_change

Notes:

* The ternary layer is registered through PEFT's custom-module hook (`LoraConfig._register_custom_module`, PEFT's
  documented but experimental API, present with the same meaning in peft 0.18.0 and 0.21.2). The registration lives
  on the config object, not in `adapter_config.json`: load adapters with `load_ternary_adapter` (or pass
  `register_ternary_lora(LoraConfig.from_pretrained(dir))` as `config=` to `PeftModel.from_pretrained`). A plain
  `PeftModel.from_pretrained` still loads the adapter, with equal outputs, since `TernaryLinear` is an `nn.Linear`,
  but wraps it in PEFT's ordinary LoRA layer, whose merge re-quantises silently; so does any loader that rebuilds
  the LoraConfig from adapter_config.json alone.
* LoRA trains on the full-precision master checkpoint (`TernaryLinear`). The deployed formats cannot take adapters:
  transformers' `BitLinear` (an `export_ternary` folder loaded through the `bitnet` quantizer; weights packed 4 per
  uint8) and `Int8TernaryLinear` (`load_ternary`) hold buffers only, and PEFT refuses them ("Target module
  BitLinear() is not supported"); `get_ternary_peft_model` and `load_ternary_adapter` say why before PEFT does.
* DoRA is refused: its magnitude vector normalises the full-precision W + BA, while the base computes with the
  ternary weight, so the two halves of its formula would describe different layers.
* Refusal is per layer: with adapters on both plain `nn.Linear` and `TernaryLinear` projections, plain layers PEFT
  visits before the first ternary one are merged (exactly) before the error.

Not part of the remote code: this module may import peft.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.peft_types import PeftType

from ..slam_ternary import Int8TernaryLinear, TernaryLinear, is_bitlinear, ternary_weight

logger = logging.getLogger(__name__)

# Set only inside merge_ternary_lora: TernaryLoraLinear.merge refuses otherwise.
_REQUANTISING_MERGE = contextvars.ContextVar("ternary_lora_requantising_merge", default=False)

MERGE_REFUSED = (
    "Refusing to merge a LoRA adapter into a BitNet b1.58 ternary projection (TernaryLinear). TernaryLinear "
    "re-quantises its weight in every forward (RoundClip(W / mean|W|, -1, 1) * mean|W|, with int8 activations), so "
    "the merged master weight W + (alpha/r)*B@A rounds to different ternary values and a new scale: the merged "
    "model's outputs differ from the adapted model's, where the adapter ran in full precision beside the ternary "
    "base. Keep the adapter unmerged (use the PeftModel, or save_pretrained the adapter), or opt in with "
    "slam_hf.adapters.ternary_lora.merge_ternary_lora(peft_model, input_ids=...), which merges into the "
    "full-precision master weights, re-quantises, and reports the measured logit change."
)
DORA_REFUSED = (
    "DoRA (use_dora=True) is not supported on ternary projections (TernaryLinear): its magnitude vector "
    "normalises the full-precision weight W + BA while the base layer computes with the ternary weight. Use plain "
    "LoRA (use_dora=False)."
)
DEPLOYED_FORMAT_REFUSED = (
    "The model holds deployed ternary layers ({layers}): transformers' packed BitLinear (a folder written by "
    "`slam-hf export --ternary` / export_ternary, loaded through the `bitnet` quantizer: 2-bit weights packed in "
    "uint8) or slam_hf's Int8TernaryLinear (load_ternary / to_int8_ternary). They hold buffers, no parameters and "
    "no gradient path, and PEFT cannot wrap them ('Target module ... is not supported'). Train LoRA on the "
    "full-precision master checkpoint, whose projections are TernaryLinear (the SLAM model with "
    "`ternary_linear=True`, as `slam-hf train` saves it), and keep the adapter beside it."
)


class TernaryMergeError(ValueError):
    """Merging a LoRA adapter into a ternary projection without `merge_ternary_lora` (see MERGE_REFUSED)."""


class TernaryLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear` around a `TernaryLinear`: the same full-precision adapter and forward (ternary base output
    plus (alpha / r) * B A x), but `merge()` refuses outside `merge_ternary_lora`, and DoRA is refused.

    The constructor passes PEFT's arguments through unchanged: peft 0.21 hands the LoraConfig as `config=`, peft 0.18
    its fields one by one, and `LoraLinear.__init__` of each version takes its own form.
    """

    def __init__(self, base_layer, adapter_name: str, **kwargs) -> None:
        base = base_layer.get_base_layer() if hasattr(base_layer, "get_base_layer") else base_layer
        if not isinstance(base, TernaryLinear):
            raise TypeError(f"TernaryLoraLinear wraps a TernaryLinear, got {type(base).__name__}")
        super().__init__(base_layer, adapter_name, **kwargs)

    def update_layer(self, adapter_name, r, *args, **kwargs):
        config = kwargs.get("config")  # peft 0.21: the LoraConfig; peft 0.18: use_dora as its own argument
        if kwargs.get("use_dora") or getattr(config, "use_dora", False):
            raise ValueError(DORA_REFUSED)
        return super().update_layer(adapter_name, r, *args, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        if not _REQUANTISING_MERGE.get():
            raise TernaryMergeError(MERGE_REFUSED)
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)


def register_ternary_lora(config: LoraConfig) -> LoraConfig:
    """`config` itself, with `TernaryLinear` mapped to `TernaryLoraLinear` (PEFT's custom-module hook)."""
    if not isinstance(config, LoraConfig) or config.peft_type != PeftType.LORA:
        raise TypeError(f"expected a peft LoraConfig, got {type(config).__name__}")
    if config.use_dora:
        raise ValueError(DORA_REFUSED)
    config._register_custom_module({TernaryLinear: TernaryLoraLinear})
    return config


def ternary_lora_config(**lora_kwargs) -> LoraConfig:
    """`LoraConfig(**lora_kwargs)` whose adapters on `TernaryLinear` projections are `TernaryLoraLinear` (full
    precision, merge refused by default). Plain `nn.Linear` targets get PEFT's ordinary LoRA layer."""
    return register_ternary_lora(LoraConfig(**lora_kwargs))


def check_trainable_format(model: torch.nn.Module) -> None:
    """Raise if `model` holds a deployed ternary layer (BitLinear, Int8TernaryLinear), which cannot take adapters."""
    deployed = sorted(
        {type(m).__name__ for m in model.modules() if is_bitlinear(m) or isinstance(m, Int8TernaryLinear)}
    )
    if deployed:
        raise ValueError(DEPLOYED_FORMAT_REFUSED.format(layers=", ".join(deployed)))


def get_ternary_peft_model(
    model: torch.nn.Module, lora_config: LoraConfig | None = None, adapter_name: str = "default", **lora_kwargs
) -> PeftModel:
    """`peft.get_peft_model(model, config)` for a model with `TernaryLinear` projections (a SLAM config with
    `ternary_linear=True`): full-precision LoRA adapters on the ternary projections, the base frozen, merging refused
    unless through `merge_ternary_lora`.

    Pass a `LoraConfig` (registered in place) or LoraConfig keyword arguments (`task_type="CAUSAL_LM"`, `r`,
    `target_modules`, ...), not both. A SLAM model_type has no default targets: name them or use "all-linear".
    """
    if lora_config is not None and lora_kwargs:
        raise TypeError("pass either a LoraConfig or LoraConfig keyword arguments, not both")
    check_trainable_format(model)
    if not any(isinstance(module, TernaryLinear) for module in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no TernaryLinear projection (its config has `ternary_linear=False`?); for a "
            "full-precision model use peft.get_peft_model"
        )
    config = register_ternary_lora(lora_config) if lora_config is not None else ternary_lora_config(**lora_kwargs)
    return get_peft_model(model, config, adapter_name=adapter_name)


def load_ternary_adapter(
    model: torch.nn.Module, adapter_path, adapter_name: str = "default", is_trainable: bool = False, **kwargs
) -> PeftModel:
    """`PeftModel.from_pretrained(model, adapter_path, ...)` with the ternary LoRA layer registered (the registration
    is not stored in `adapter_config.json`). `kwargs` go to `PeftModel.from_pretrained` (e.g. `revision`)."""
    check_trainable_format(model)
    hub_kwargs = {key: kwargs[key] for key in ("revision", "subfolder", "token", "cache_dir") if key in kwargs}
    config = LoraConfig.from_pretrained(adapter_path, **hub_kwargs)
    register_ternary_lora(config)
    return PeftModel.from_pretrained(
        model, adapter_path, adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
    )


@dataclasses.dataclass(frozen=True)
class TernaryMergeReport:
    """What `merge_ternary_lora` measured on its probe batch (merged vs. adapted model, both in eval mode)."""

    layers: int  # TernaryLinear projections merged
    ternary_values: int  # weight entries of those projections
    ternary_values_changed: int  # entries whose ternary value (-1, 0, 1) differs after the merge
    max_logit_change: float  # max |logits(merged) - logits(adapted)|
    mean_logit_change: float  # mean of the same
    max_adapter_logit_change: float  # max |logits(adapted) - logits(base)|: what the adapter itself changed
    top1_agreement: float  # share of probe positions whose argmax token is the same in both models
    probe_tokens: int

    def __str__(self) -> str:
        return (
            f"merged LoRA into {self.layers} ternary projection(s), re-quantised: "
            f"{self.ternary_values_changed:,} of {self.ternary_values:,} ternary weights changed value; over "
            f"{self.probe_tokens:,} probe tokens the logits moved by max {self.max_logit_change:.4g} (mean "
            f"{self.mean_logit_change:.4g}) from the adapted model's, whose adapter had moved them by max "
            f"{self.max_adapter_logit_change:.4g} from the base model's; top-1 token agreement "
            f"{100 * self.top1_agreement:.1f} %"
        )


@contextlib.contextmanager
def _requantising_merge():
    token = _REQUANTISING_MERGE.set(True)
    try:
        yield
    finally:
        _REQUANTISING_MERGE.reset(token)


def _default_probe(model, seed: int = 0) -> torch.Tensor:
    """Two rows of 64 random token ids (a stand-in: pass real text to `merge_ternary_lora` to measure what matters)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (2, 64), generator=generator)


def merge_ternary_lora(
    peft_model: PeftModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    adapter_names: list[str] | None = None,
) -> tuple[torch.nn.Module, TernaryMergeReport]:
    """The explicit, re-quantising merge: `peft_model.merge_and_unload()` with ternary projections allowed, and what
    it cost. Returns (the merged base model, in eval mode; a `TernaryMergeReport`), and logs the report.

    The adapter deltas are added to the full-precision master weights of the `TernaryLinear` projections; their
    forward quantises the merged weight, so the result is re-quantised by construction and differs from the adapted
    model. The change is measured on `input_ids` (default: 2 x 64 random token ids; pass real text), comparing the
    merged model's logits with the adapted model's (active adapters) and, for scale, the adapted model's with the
    base's (adapters disabled). `peft_model` is consumed: its modules are the merged model's.
    """
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"merge_ternary_lora takes a peft PeftModel, got {type(peft_model).__name__}")
    ternary = [m for m in peft_model.modules() if isinstance(m, TernaryLoraLinear)]
    if not ternary:
        raise ValueError(
            "the PeftModel has no LoRA layer on a TernaryLinear registered as TernaryLoraLinear; use "
            "peft_model.merge_and_unload() (or build it with get_ternary_peft_model / load_ternary_adapter)"
        )
    bases = [layer.get_base_layer() for layer in ternary]
    codes_before = [ternary_weight(base.weight)[0] for base in bases]
    device = next(peft_model.parameters()).device
    if input_ids is None:
        input_ids = _default_probe(peft_model.get_base_model())
    inputs = {"input_ids": input_ids.to(device)}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask.to(device)

    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**inputs).logits.float()
        with peft_model.disable_adapter():
            base_logits = peft_model(**inputs).logits.float()
        with _requantising_merge():
            merged = peft_model.merge_and_unload(adapter_names=adapter_names)
        merged.eval()
        merged_logits = merged(**inputs).logits.float()

    change = (merged_logits - adapted).abs()
    report = TernaryMergeReport(
        layers=len(bases),
        ternary_values=sum(codes.numel() for codes in codes_before),
        ternary_values_changed=sum(
            int((ternary_weight(base.weight)[0] != codes).sum()) for base, codes in zip(bases, codes_before)
        ),
        max_logit_change=change.max().item(),
        mean_logit_change=change.mean().item(),
        max_adapter_logit_change=(adapted - base_logits).abs().max().item(),
        top1_agreement=(merged_logits.argmax(-1) == adapted.argmax(-1)).float().mean().item(),
        probe_tokens=int(inputs["input_ids"].numel()),
    )
    logger.warning("%s", report)
    return merged, report


__all__ = [
    "MERGE_REFUSED",
    "TernaryLoraLinear",
    "TernaryMergeError",
    "TernaryMergeReport",
    "check_trainable_format",
    "get_ternary_peft_model",
    "load_ternary_adapter",
    "merge_ternary_lora",
    "register_ternary_lora",
    "ternary_lora_config",
]
