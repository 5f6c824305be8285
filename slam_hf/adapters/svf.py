"""Transformer² Singular Value Fine-tuning (SVF) as a PEFT method (DESIGN §7).

SVF adapts a weight matrix through its singular values only. Each targeted `nn.Linear` weight is decomposed once,
W = U diag(σ) Vᵀ, and one trainable vector z of r = min(out_features, in_features) entries rescales the singular
values. Two published forms are supported (`SVFConfig.scaling`):

* `"sigmoid_renorm"` (default; the released Transformer² code): m = sigmoid(z) and
  W' = U diag(σ ⊙ m) Vᵀ · Σσ / Σ(σ ⊙ m). The renormalisation keeps the sum of the singular values fixed, so any
  constant z (the start value `init_z`, 0.1 by default) reproduces W. The released code's multiplier on the mask
  (`max_mult`) cancels in that ratio, so it has no counterpart here; its start value carries N(0, 0.01²) noise,
  which is left out here so that the adapted model starts exactly at the base model.
* `"plain"` (the paper's formula): W' = U diag(σ ⊙ z) Vᵀ, starting at z = 1.

Usage::

    import slam_hf.adapters.svf  # registers SVF with PEFT; needed before *every* load of an SVF adapter
    from peft import PeftModel, get_peft_model
    from slam_hf.adapters.svf import SVFConfig

    peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM"))  # MLP projections by default
    peft_model.save_pretrained("expert")  # adapter_model.safetensors holds only the z vectors
    # ... in another process:
    import slam_hf  # or slam_hf.adapters.svf: registers SVF with PEFT
    peft_model = PeftModel.from_pretrained(base_model, "expert")

Design notes:

* The layer computes its output with W + ΔW, ΔW = U diag(Δσ) Vᵀ, where Δσ is the change of every singular value
  (one matmul per token with the adapted weight; few tokens, as in decoding, or a base layer that is not a plain
  nn.Linear: base(x) plus x ΔWᵀ through the factors).
  Δσ is written so that it is exactly zero (not merely close) at the start (sigmoid form: whenever all z of a
  layer are equal; plain form: z = 1), so the adapted model starts out bit-identical to the base model. Merging
  adds the same ΔW to the weight and unmerging subtracts it.
* U, σ and Vᵀ are non-persistent buffers, recomputed from the base weight whenever the adapter is created (also
  when it is loaded), so the adapter file holds the z vectors alone. Recomputing is safe because a paired sign flip
  of a singular-vector pair cancels in U diag(·) Vᵀ; only exactly repeated singular values have no unique basis.
  The same weights on the same device (and, on CPU, the same BLAS thread count) give bit-identical bases, so a
  reloaded adapter reproduces the logits exactly; elsewhere they agree to rounding.
* PEFT accepts new methods only under a name that already exists in its closed `PeftType` enum. The member is
  added by `svf_peft_type._ensure_peft_type`, the one function that touches enum internals; it checks its own work
  and raises naming the peft version if a future peft or Python changes those internals.

This module is the PEFT method (config, tuner, registration); its parts live beside it and are importable from here:
`svf_layer` (the adapted `nn.Linear`), `svf_targets` (default target modules per model type), `svf_z_vectors`
(reading, writing and mixing z vectors) and `svf_peft_type`. They import only torch and peft (besides the standard
library). None of them is remote code: the SLAM model files (configuration_slam.py, modeling_slam.py and their
siblings) never import them or peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import peft
from peft.config import PeftConfig
from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.peft_types import register_peft_method
from torch import nn

from .svf_layer import SVF_PREFIX, SVFLayer, SVFLinear, _listing, _not_linear_message
from .svf_peft_type import SVF_PEFT_TYPE, TESTED_PEFT_VERSIONS, _ensure_peft_type
from .svf_targets import SVF_ATTENTION_TARGET_MODULES, SVF_MLP_TARGET_MODULES, svf_target_modules
from .svf_z_vectors import (
    check_z_vectors,
    get_z_vectors,
    load_z_vectors,
    mix_z_vectors,
    set_z_vectors,
    svf_layers,
    z_vector_lengths,
)

SVF_SCALINGS = ("sigmoid_renorm", "plain")
DEFAULT_INIT_Z = {"sigmoid_renorm": 0.1, "plain": 1.0}


# ----------------------------------------------------------------------------------------------- config ----
_SVF_PEFT_TYPE_MEMBER = _ensure_peft_type()


@dataclass
class SVFConfig(PeftConfig):
    """Configuration of a Transformer² SVF adapter ([`SVFModel`]).

    Args:
        target_modules (`list[str]` or `str`, *optional*):
            The `nn.Linear` modules to adapt: exact names or name suffixes (a list), or a regex matched against the
            full module name (a string), or `"all-linear"`. Default: the MLP projections of the model type
            (`SVF_MLP_TARGET_MODULES`), as in the released Transformer² code. `svf_target_modules(model,
            attention=True)` adds the attention projections.
        exclude_modules (`list[str]` or `str`, *optional*):
            Modules never to adapt, matched like `target_modules`.
        scaling (`str`, defaults to `"sigmoid_renorm"`):
            `"sigmoid_renorm"`: W' = U diag(σ ⊙ sigmoid(z)) Vᵀ · Σσ / Σ(σ ⊙ sigmoid(z)), the released code's form
            (z is unconstrained; the sum of the singular values stays fixed). `"plain"`: W' = U diag(σ ⊙ z) Vᵀ, the
            paper's formula.
        init_z (`float`, *optional*):
            The value every z starts at. Default 0.1 for `"sigmoid_renorm"` (any constant reproduces W there) and
            1.0 for `"plain"`, where it must be 1.0 for the adapted model to start at the base model.
        modules_to_save (`list[str]`, *optional*):
            Other modules to train and save in full, e.g. a freshly initialised classification head.
        requires_import (`str`):
            Recorded in adapter_config.json for whoever loads the adapter: the module whose import registers SVF
            with PEFT (`import slam_hf` imports it too). Without it, `PeftModel.from_pretrained` fails with
            `KeyError: 'SVF'`.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "nn.Linear modules to adapt: names/suffixes (list), a full-name regex (str) or 'all-linear'. "
            "Default: the MLP projections of the model type."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Modules never to adapt, matched like target_modules."}
    )
    scaling: str = field(
        default="sigmoid_renorm",
        metadata={"help": "'sigmoid_renorm' (released Transformer² code, default) or 'plain' (the paper's z)."},
    )
    init_z: Optional[float] = field(
        default=None, metadata={"help": "Start value of every z: 0.1 for sigmoid_renorm, 1.0 for plain."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules besides the SVF layers to train and save in full."}
    )
    requires_import: str = field(
        default="slam_hf.adapters.svf",
        metadata={"help": "Module to import before loading this adapter: it registers SVF with PEFT."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = _SVF_PEFT_TYPE_MEMBER
        if self.scaling not in SVF_SCALINGS:
            raise ValueError(
                f"SVFConfig(scaling={self.scaling!r}) is not a known form: use 'sigmoid_renorm' (the released "
                "Transformer² code: sigmoid(z) with the sum of the singular values kept) or 'plain' (the paper: "
                "singular values times z)."
            )
        if self.init_z is None:
            self.init_z = DEFAULT_INIT_Z[self.scaling]
        self.init_z = float(self.init_z)
        if self.scaling == "plain" and self.init_z != 1.0:
            raise ValueError(
                f"SVFConfig(scaling='plain', init_z={self.init_z}) would start from W scaled by {self.init_z}, not "
                "from the base model: the plain form reproduces W only at z = 1. Leave init_z unset (1.0)."
            )
        if self.scaling == "sigmoid_renorm" and not abs(self.init_z) <= 30.0:
            raise ValueError(
                f"SVFConfig(init_z={self.init_z}) is outside [-30, 30], where sigmoid(z) is saturated and z gets "
                "no gradient: use a value such as the default 0.1."
            )
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)


# ------------------------------------------------------------------------------------------------ model ----
class SVFModel(BaseTuner):
    """Injects Transformer² SVF layers into a model (PEFT tuner for [`SVFConfig`]).

    Use it through PEFT: `get_peft_model(model, SVFConfig(...))`, `PeftModel.from_pretrained(model, path)` (after
    `import slam_hf.adapters.svf`). Trainable parameters: one z vector of min(out, in) entries per targeted `nn.Linear`.
    """

    prefix: str = SVF_PREFIX
    tuner_layer_cls = SVFLayer
    target_module_mapping = SVF_MLP_TARGET_MODULES

    def _prepare_adapter_config(self, peft_config: SVFConfig, model_config: dict) -> SVFConfig:
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            if model_type not in self.target_module_mapping:
                raise ValueError(
                    f"SVF has no default target modules for model_type {model_type!r}: pass "
                    "SVFConfig(target_modules=[...]) naming the nn.Linear layers to adapt (Transformer² adapts the "
                    "MLP projections), or target_modules='all-linear'. Types with defaults: "
                    f"{', '.join(sorted(self.target_module_mapping))}."
                )
            targets = self.target_module_mapping[model_type]
            peft_config.target_modules = targets if isinstance(targets, str) else set(targets)
        return peft_config

    def _create_and_replace(self, svf_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, SVFLayer):
            target.update_layer(adapter_name, svf_config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(_not_linear_message(current_key, base))
        new_module = SVFLinear(target, adapter_name, svf_config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is trained only once it is activated
        self._replace_module(parent, target_name, new_module, target)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # An SVF adapter is one z per targeted module. A loaded set that covers other modules was saved for a
        # different architecture; PEFT would only warn, and the uncovered modules would silently keep W.
        loaded: dict[Optional[str], set] = {}
        unmatched = set()  # peft >= 0.19 inserts the adapter name only into keys that match a model key
        for key in state_dict:
            if not key.startswith(prefix):
                continue
            head, found, adapter_name = key.rpartition(".svf_z.")
            if found and "." not in adapter_name:
                loaded.setdefault(adapter_name, set()).add(head[len(prefix) :])
            elif key.endswith(".svf_z"):
                unmatched.add(key[len(prefix) : -len(".svf_z")])
        if unmatched and len(loaded) <= 1:
            loaded.setdefault(next(iter(loaded), None), set()).update(unmatched)  # None: no z matched at all
        if loaded:
            present: dict[str, set] = {}
            for name, module in self.named_modules():
                if isinstance(module, SVFLayer):
                    for adapter_name in module.svf_z:
                        present.setdefault(adapter_name, set()).add(name)
            for adapter_name, names in loaded.items():
                _check_module_sets(adapter_name, names, present.get(adapter_name, set()))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _check_module_sets(adapter_name: Optional[str], loaded: set, present: set) -> None:
    def shown(names):  # SVFModel names start with its `model.` attribute
        return _listing(name[len("model.") :] if name.startswith("model.") else name for name in names)

    unknown, uncovered = loaded - present, present - loaded
    if not (unknown or uncovered):
        return
    problems = []
    if unknown:
        problems.append(
            f"it has z vectors for {len(unknown)} module(s) this model has no SVF layer for ({shown(unknown)})"
        )
    if uncovered:
        problems.append(f"it lacks z vectors for {len(uncovered)} adapted module(s) ({shown(uncovered)})")
    label = "The SVF adapter being loaded" if adapter_name is None else f"SVF adapter {adapter_name!r}"
    raise ValueError(
        f"{label} does not fit this model: " + "; ".join(problems) + ". It was saved for "
        "another base model (different depth or module names): load it onto the model it was trained on."
    )


# ------------------------------------------------------------------------------------- registration ----
def register_svf() -> None:
    """Register SVF with PEFT (idempotent; runs on import). Afterwards `PeftType.SVF`, `get_peft_model(model,
    SVFConfig(...))` and `PeftModel.from_pretrained` of SVF adapters work in this process."""
    peft_type = _ensure_peft_type()
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is SVFConfig and PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is SVFModel:
        return
    if registered is None:
        register_peft_method(name=SVF_PEFT_TYPE.lower(), config_cls=SVFConfig, model_cls=SVFModel, prefix=SVF_PREFIX)
        return
    if (registered.__module__, registered.__qualname__) != (SVFConfig.__module__, SVFConfig.__qualname__):
        raise RuntimeError(
            f"peft {peft.__version__} already has a PEFT method {SVF_PEFT_TYPE!r} "
            f"({registered.__module__}.{registered.__qualname__}), so slam_hf's Transformer² SVF cannot register "
            f"under that name. Use a peft release slam_hf is tested with ({', '.join(TESTED_PEFT_VERSIONS)}) or "
            "report this to slam_hf."
        )
    # This module was imported again (importlib.reload, or under a second name): point PEFT at the new classes.
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = SVFConfig
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = SVFModel
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = SVF_PREFIX
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING.pop(peft_type, None)


register_svf()


__all__ = [
    "SVFConfig",
    "SVFLayer",
    "SVFLinear",
    "SVFModel",
    "SVF_ATTENTION_TARGET_MODULES",
    "SVF_MLP_TARGET_MODULES",
    "SVF_SCALINGS",
    "check_z_vectors",
    "get_z_vectors",
    "load_z_vectors",
    "mix_z_vectors",
    "register_svf",
    "set_z_vectors",
    "svf_layers",
    "svf_target_modules",
    "z_vector_lengths",
]
