"""Reading, writing, checking and mixing the z vectors of SVF adapters (DESIGN §7).

An SVF adapter is one z vector per adapted `nn.Linear`. These functions address them by the module names of the
wrapped transformers model (`model.layers.0.mlp.up_proj`), whether the model is a PeftModel, an SVFModel or a model
with injected layers, and `load_z_vectors` reads them from a saved adapter without building a model.
`mix_z_vectors` is Transformer²'s few-shot mixture z' = Σₖ αₖ zₖ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .svf_layer import SVF_PREFIX, SVFLayer, _display_name, _listing
from .svf_peft_type import SVF_PEFT_TYPE


def _model_root(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel or SVFModel (module names relative to it), else `model`."""
    if isinstance(model, BaseTuner):
        return model.model
    tuner = getattr(model, "base_model", None)
    if isinstance(tuner, BaseTuner):
        return tuner.model
    return model


def svf_layers(model: nn.Module) -> dict[str, SVFLayer]:
    """Every SVF layer of `model` (a PeftModel, an SVFModel or a model with injected layers) by module name."""
    return {name: module for name, module in _model_root(model).named_modules() if isinstance(module, SVFLayer)}


def _adapter_layers(model: nn.Module, adapter_name: Optional[str]) -> tuple[str, dict[str, SVFLayer]]:
    layers = svf_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no SVF layers: wrap it with get_peft_model(model, SVFConfig()).")
    available = sorted({name for layer in layers.values() for name in layer.svf_z})
    if adapter_name is None:
        active = getattr(model, "active_adapters", None)
        active = list(active) if isinstance(active, (list, tuple)) else next(iter(layers.values())).active_adapters
        active = [name for name in active if name in available]
        if len(active) != 1:
            raise ValueError(
                f"Pass adapter_name=...: the model has SVF adapters {available} and {len(active)} of them are active."
            )
        adapter_name = active[0]
    if adapter_name not in available:
        raise ValueError(f"The model has no SVF adapter {adapter_name!r}; its SVF adapters are {available}.")
    return adapter_name, {name: layer for name, layer in layers.items() if adapter_name in layer.svf_z}


def z_vector_lengths(model: nn.Module, adapter_name: Optional[str] = None) -> dict[str, int]:
    """{module name: number of singular values} of the modules an SVF adapter (default: the active one) adapts."""
    _, layers = _adapter_layers(model, adapter_name)
    return {name: layer.rank for name, layer in layers.items()}


def get_z_vectors(model: nn.Module, adapter_name: Optional[str] = None) -> dict[str, torch.Tensor]:
    """{module name: z (r,)} of an SVF adapter (default: the active one): detached float32 copies on the CPU.

    Module names are those of the wrapped transformers model (`model.layers.0.mlp.up_proj`), as `load_z_vectors`
    returns them for a saved adapter.
    """
    adapter_name, layers = _adapter_layers(model, adapter_name)
    return {name: layer.svf_z[adapter_name].detach().float().cpu().clone() for name, layer in layers.items()}


def check_z_vectors(
    model: nn.Module,
    z_vectors: Mapping[str, torch.Tensor],
    adapter_name: Optional[str] = None,
    strict: bool = True,
    source: str = "z_vectors",
) -> dict[str, torch.Tensor]:
    """Validate `z_vectors` ({module name: z}) against an SVF adapter of `model`; return them as float tensors.

    Raises ValueError naming `source` (e.g. an expert's name) and the offending modules when a name is not an SVF
    module of the adapter, a z has the wrong shape or is not finite, or (with `strict`) a module is left out.
    """
    adapter_name, layers = _adapter_layers(model, adapter_name)
    unknown = sorted(set(z_vectors) - set(layers))
    if unknown:
        raise ValueError(
            f"{source} names {len(unknown)} module(s) that SVF adapter {adapter_name!r} does not adapt: "
            f"{_listing(unknown)}. Its modules are e.g. {_listing(layers)}; z vectors from another base model or "
            "target_modules do not fit."
        )
    if strict:
        missing = sorted(set(layers) - set(z_vectors))
        if missing:
            raise ValueError(
                f"{source} lacks z vectors for {len(missing)} module(s) of SVF adapter {adapter_name!r}: "
                f"{_listing(missing)}. Pass one z per adapted module, or strict=False to set only some."
            )
    checked = {}
    for name, z in z_vectors.items():
        z = torch.as_tensor(z)
        expected = layers[name].rank
        if tuple(z.shape) != (expected,):
            raise ValueError(
                f"{source}: the z vector for {name} has shape {tuple(z.shape)}, but the module has {expected} "
                f"singular values, so z must have shape ({expected},). It comes from another base model."
            )
        if not z.is_floating_point() or not torch.isfinite(z).all():
            raise ValueError(f"{source}: the z vector for {name} must hold finite floats (got dtype {z.dtype}).")
        checked[name] = z
    return checked


@torch.no_grad()
def set_z_vectors(
    model: nn.Module,
    z_vectors: Mapping[str, torch.Tensor],
    adapter_name: Optional[str] = None,
    strict: bool = True,
) -> None:
    """Write {module name: z} into an SVF adapter (default: the active one), after `check_z_vectors`."""
    adapter_name, layers = _adapter_layers(model, adapter_name)
    checked = check_z_vectors(model, z_vectors, adapter_name=adapter_name, strict=strict)
    merged = sorted(name for name in checked if adapter_name in layers[name].merged_adapters)
    if merged:
        raise ValueError(
            f"SVF adapter {adapter_name!r} is merged into {_listing(merged)}: call unmerge_adapter() before "
            "setting its z vectors (the merged weights would keep the old ones)."
        )
    for name, z in checked.items():
        param = layers[name].svf_z[adapter_name]
        param.copy_(z.to(device=param.device, dtype=param.dtype))


def mix_z_vectors(
    experts: Mapping[str, Mapping[str, torch.Tensor]],
    alphas: Union[Mapping[str, float], torch.Tensor, "list[float]", "tuple[float, ...]"],
) -> dict[str, torch.Tensor]:
    """Transformer²'s few-shot mixture z' = Σₖ αₖ zₖ of several experts' z vectors, module by module.

    Args:
        experts: {expert name: {module name: z}}, e.g. from `get_z_vectors` or `load_z_vectors`. Every expert must
            adapt the same modules with the same lengths (experts trained with the same `target_modules` on the
            same base model).
        alphas: one mixing weight per expert, in the order of `experts` (a sequence or a 1-D tensor), or
            {expert name: weight}. Weights must be finite; they need not sum to one.

    Returns {module name: z'} in float32 on the CPU. Raises ValueError naming the expert or weight at fault.
    """
    names = list(experts)
    if not names:
        raise ValueError("mix_z_vectors(experts={}) has no experts to mix: pass {expert name: z vectors}.")
    weights = _mixing_weights(names, alphas)
    _check_same_modules(experts)
    return {
        module: sum(weight * experts[name][module].detach().float().cpu() for name, weight in zip(names, weights))
        for module in experts[names[0]]
    }


def _mixing_weights(names: list[str], alphas) -> list[float]:
    """`alphas` as one finite float per expert, in the order of `names`."""
    if isinstance(alphas, Mapping):
        unknown, missing = sorted(set(alphas) - set(names)), [name for name in names if name not in alphas]
        if unknown or missing:
            raise ValueError(
                f"alphas names experts {sorted(alphas)}, but the experts are {names}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
                + ". Give one weight per expert."
            )
        alphas = [alphas[name] for name in names]
    if isinstance(alphas, torch.Tensor):
        if alphas.dim() != 1:
            raise ValueError(f"alphas must be a 1-D tensor of {len(names)} weights, got shape {tuple(alphas.shape)}.")
        weights = alphas.detach().double().tolist()
    else:
        try:
            weights = [float(weight) for weight in alphas]
        except (TypeError, ValueError) as err:
            raise ValueError(f"alphas must be {len(names)} numbers, one per expert ({err}).") from None
    if len(weights) != len(names):
        raise ValueError(
            f"alphas has {len(weights)} weight(s) but there are {len(names)} experts ({', '.join(names)}): pass one "
            "mixing weight per expert, in the experts' order."
        )
    for name, weight in zip(names, weights):
        if not math.isfinite(weight):
            raise ValueError(f"alphas: the weight of expert {name!r} is {weight}; mixing weights must be finite.")
    return weights


def _check_same_modules(experts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Raise unless every expert has z vectors of the same shapes for the same modules as the first one."""
    reference_name, *others = experts
    reference = experts[reference_name]
    for name in others:
        z_vectors = experts[name]
        extra, missing = sorted(set(z_vectors) - set(reference)), sorted(set(reference) - set(z_vectors))
        if extra or missing:
            details = [f"{len(extra)} module(s) expert {reference_name!r} lacks ({_listing(extra)})"] if extra else []
            details += [f"lacks {len(missing)} of its module(s) ({_listing(missing)})"] if missing else []
            raise ValueError(
                f"Expert {name!r} cannot be mixed with expert {reference_name!r}: it adapts other modules (it has "
                + "; it ".join(details)
                + "). Only experts trained with the same target_modules on the same base "
                "model can be mixed."
            )
        for module, z in z_vectors.items():
            if tuple(z.shape) != tuple(reference[module].shape):
                raise ValueError(
                    f"Expert {name!r} cannot be mixed with expert {reference_name!r}: its z vector for {module} has "
                    f"shape {tuple(z.shape)}, expert {reference_name!r}'s has {tuple(reference[module].shape)}. The "
                    "experts were trained on different base models."
                )


def load_z_vectors(adapter_name_or_path: str, **hub_kwargs) -> dict[str, torch.Tensor]:
    """{module name: z} of a saved SVF adapter (a folder or a Hub repo id), without building a model.

    `hub_kwargs` (revision, token, subfolder, ...) go to peft's `load_peft_weights`.
    """
    from peft.utils import load_peft_weights

    peft_type = PeftConfig._get_peft_type(adapter_name_or_path, **hub_kwargs)
    if peft_type != SVF_PEFT_TYPE:
        raise ValueError(f"{adapter_name_or_path} holds a {peft_type} adapter, not an SVF adapter.")
    weights = load_peft_weights(adapter_name_or_path, device="cpu", **hub_kwargs)
    suffix = f".{SVF_PREFIX}z"
    return {_display_name(key[: -len(suffix)]): tensor for key, tensor in weights.items() if key.endswith(suffix)}
