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
  added by `_ensure_peft_type`, the one function here that touches enum internals; it checks its own work and
  raises naming the peft version if a future peft or Python changes those internals.

This module imports only torch and peft (besides the standard library). It is not remote code: the SLAM model files
(configuration_slam.py, modeling_slam.py and their siblings) never import it or peft.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import peft
import torch
from peft.config import PeftConfig
from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils.peft_types import PeftType, register_peft_method
from torch import nn
from torch.nn import functional as F

SVF_PEFT_TYPE = "SVF"
SVF_PREFIX = "svf_"
SVF_SCALINGS = ("sigmoid_renorm", "plain")
DEFAULT_INIT_Z = {"sigmoid_renorm": 0.1, "plain": 1.0}
# peft versions on which the PeftType extension below is tested (the oldest pin and the newest resolved).
TESTED_PEFT_VERSIONS = ("0.18.0", "0.21.2")
# Where PEFT puts the wrapped model in module names: PeftModel -> SVFModel -> the transformers model.
_PEFT_MODEL_PREFIX = "base_model.model."
# |z| bound of the sigmoid form: sigmoid is saturated in float32 long before, and sinh/cosh of z / 2 stay finite.
_SIGMOID_Z_LIMIT = 60.0

_LLAMA_MLP = ["gate_proj", "up_proj", "down_proj"]
_LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# BERT-style encoders name the MLP `layer.N.intermediate.dense` and `layer.N.output.dense`; a plain suffix
# "output.dense" would also match the attention output `layer.N.attention.output.dense`, hence regexes.
_BERT_MLP = r".*\.layer\.\d+\.(?:intermediate|output)\.dense"
_BERT_ATTENTION = r".*\.layer\.\d+\.attention\.(?:self\.(?:query|key|value)|output\.dense)"

# Default SVF targets by `config.model_type`: the MLP projections, as the released Transformer² code adapts them.
SVF_MLP_TARGET_MODULES: dict[str, Union[list[str], str]] = {
    # SLAM: every MLP (text, vision, fusion, decoder) is a SlamMLP with Llama names; gate_proj exists only for
    # gated MLPs (geglu, swiglu), and a name that matches nothing is skipped.
    "slam_v1": _LLAMA_MLP,
    "slam_v2": _LLAMA_MLP,
    "slam_v3": _LLAMA_MLP,
    **{
        model_type: _LLAMA_MLP
        for model_type in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
        )
    },
    "phi3": ["gate_up_proj", "down_proj"],
    "starcoder2": ["c_fc", "c_proj"],
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["fc1", "fc2"],
    "distilbert": ["lin1", "lin2"],
    "t5": ["wi", "wi_0", "wi_1", "wo"],
    **{model_type: _BERT_MLP for model_type in ("bert", "roberta", "xlm-roberta", "electra")},
}
# The attention projections of the same model types, for `svf_target_modules(..., attention=True)`.
SVF_ATTENTION_TARGET_MODULES: dict[str, Union[list[str], str]] = {
    # SLAM v3's decoder uses MLA (DeepSeek names); v2's mixture of attention experts keeps q_proj/o_proj per expert.
    **{
        model_type: _LLAMA_ATTENTION + ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"]
        for model_type in ("slam_v1", "slam_v2", "slam_v3")
    },
    **{
        model_type: _LLAMA_ATTENTION
        for model_type in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "starcoder2",
        )
    },
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "t5": ["q", "k", "v", "o"],
    **{model_type: _BERT_ATTENTION for model_type in ("bert", "roberta", "xlm-roberta", "electra")},
}


# ----------------------------------------------------------------------------------- PeftType extension ----
def _enum_problem(enum_cls, name: str, member) -> Optional[str]:
    """What (if anything) keeps `member` from behaving like a genuine member `name` of `enum_cls`."""
    try:
        if enum_cls[name] is not member:
            return f"{enum_cls.__name__}[{name!r}] does not return the new member"
        if enum_cls(name) is not member:
            return f"{enum_cls.__name__}({name!r}) does not return the new member"
        if getattr(enum_cls, name) is not member:
            return f"{enum_cls.__name__}.{name} does not return the new member"
        if name not in list(enum_cls):
            return f"iterating {enum_cls.__name__} does not yield {name!r}"
        if not (member == name and hash(member) == hash(name)):
            return f"the new member does not compare and hash like the string {name!r}"
    except Exception as err:  # any failure of the enum protocol is the problem to report
        return f"{type(err).__name__}: {err}"
    return None


def _ensure_peft_type(name: str = SVF_PEFT_TYPE, enum_cls=PeftType):
    """Return `enum_cls[name]`, adding the member first if peft lacks it (the one place that touches enum internals).

    Why: `peft.utils.peft_types.register_peft_method` refuses any name that is not already a member of the closed
    `PeftType` str-Enum, and peft offers no API to add one. `EnumType.__setattr__` forbids assigning members, so
    the member is built as enum.py builds str members and entered into the three tables enum lookups read
    (by name, by value, iteration order). Verified on CPython 3.11 with peft 0.18.0 and 0.21.2; the result is
    checked here, so a peft or Python whose enum internals differ fails with a RuntimeError naming the versions
    instead of misbehaving later.
    """
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        return existing
    try:
        member = str.__new__(enum_cls, name)
        member._name_ = name
        member._value_ = name
        member.__objclass__ = enum_cls
        member._sort_order_ = len(enum_cls._member_names_)
        type.__setattr__(enum_cls, name, member)
        enum_cls._member_map_[name] = member
        enum_cls._value2member_map_[name] = member
        enum_cls._member_names_.append(name)
    except Exception as err:
        problem = f"{type(err).__name__}: {err}"
    else:
        problem = _enum_problem(enum_cls, name, member)
        if problem is None:
            return member
    raise RuntimeError(
        f"slam_hf.adapters.svf could not add {name!r} to {enum_cls.__module__}.{enum_cls.__name__} on peft "
        f"{peft.__version__} (Python {sys.version.split()[0]}): {problem}. PEFT registers a new method only under "
        "an existing PeftType member, and this peft/Python changed the enum internals the workaround relies on "
        f"(tested with peft {' and '.join(TESTED_PEFT_VERSIONS)} on CPython 3.11). Install a tested peft "
        f"(pip install 'peft=={TESTED_PEFT_VERSIONS[-1]}') or report this to slam_hf."
    )


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


def svf_target_modules(model_or_type, mlp: bool = True, attention: bool = False) -> Union[list[str], str]:
    """`target_modules` for `SVFConfig`: the MLP and/or attention projections of a model (or a `model_type`).

    Returns a list of module-name suffixes, or a regex string when a model type needs one (BERT-style encoders);
    both are accepted by `SVFConfig(target_modules=...)`.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None)
    tables = ([SVF_MLP_TARGET_MODULES] if mlp else []) + ([SVF_ATTENTION_TARGET_MODULES] if attention else [])
    if not tables:
        raise ValueError("svf_target_modules(mlp=False, attention=False) selects nothing: enable mlp or attention.")
    parts = []
    for table in tables:
        if model_type not in table:
            raise ValueError(
                f"slam_hf.adapters.svf has no default SVF targets for model_type {model_type!r}: pass "
                f"SVFConfig(target_modules=[...]) naming its nn.Linear layers. Known types: {', '.join(sorted(table))}."
            )
        parts.append(table[model_type])
    if all(isinstance(part, list) for part in parts):
        return [name for part in parts for name in part]

    def as_regex(part):
        return part if isinstance(part, str) else r"(?:.*\.)?(?:" + "|".join(re.escape(n) for n in part) + ")"

    return "|".join(f"(?:{as_regex(part)})" for part in parts)


# ------------------------------------------------------------------------------------------------ layer ----
def _display_name(prefix_or_name: str) -> str:
    """A module name as the user's model names it: without PEFT's `base_model.model.` and the trailing dot."""
    name = prefix_or_name.rstrip(".")
    return name[len(_PEFT_MODEL_PREFIX) :] if name.startswith(_PEFT_MODEL_PREFIX) else name


class SVFLayer(BaseTunerLayer):
    """SVF state of one `nn.Linear`: the shared SVD bases and one z vector per adapter.

    Buffers (non-persistent, rebuilt from the base weight): `svf_U` (out, r) and `svf_Vh` (r, in) in the weight's
    dtype, `svf_S` (r,) in float32 (float64 for a float64 weight). Parameters: `svf_z[adapter]` (r,), r = min(in, out).
    """

    adapter_layer_names = ("svf_z",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, module_name: str = "", **kwargs) -> None:
        self.base_layer = base_layer
        self.svf_z = nn.ParameterDict({})
        self.svf_scaling: dict[str, str] = {}  # adapter -> "sigmoid_renorm" | "plain"
        self.svf_module_name = module_name
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(_not_linear_message(module_name, base))
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = min(self.in_features, self.out_features)
        self.register_buffer("svf_U", None, persistent=False)
        self.register_buffer("svf_S", None, persistent=False)
        self.register_buffer("svf_Vh", None, persistent=False)

    @torch.no_grad()
    def _compute_bases(self) -> None:
        weight = self.get_base_layer().weight
        if weight.device.type == "meta":
            raise ValueError(
                f"SVF cannot decompose {self.svf_module_name}: its weight is on the meta device (not loaded yet). "
                "Load the base model's weights before get_peft_model / PeftModel.from_pretrained."
            )
        # LAPACK has no half-precision SVD; float32 is accurate enough for bases that only carry a change of W.
        work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        u, s, vh = torch.linalg.svd(weight.detach().to(work_dtype), full_matrices=False)
        store_dtype = weight.dtype if weight.dtype.is_floating_point else work_dtype
        self.svf_U = u.to(store_dtype).contiguous()  # (out, r)
        self.svf_S = s.to(work_dtype)  # (r,), descending
        self.svf_Vh = vh.to(store_dtype).contiguous()  # (r, in)

    def update_layer(self, adapter_name: str, config: SVFConfig, **kwargs) -> None:
        if self.svf_S is None:
            self._compute_bases()
        self.svf_scaling[adapter_name] = config.scaling
        self.svf_z[adapter_name] = nn.Parameter(torch.full((self.rank,), config.init_z, dtype=torch.float32))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def delete_adapter(self, adapter_name: str, *args, **kwargs) -> None:
        super().delete_adapter(adapter_name, *args, **kwargs)
        self.svf_scaling.pop(adapter_name, None)

    def singular_value_change(self, adapter_name: str) -> torch.Tensor:
        """Δσ (r,) float32 such that W' = U diag(σ + Δσ) Vᵀ; exactly zero at the start (every z equal)."""
        z = self.svf_z[adapter_name].float()
        sigma = self.svf_S.float()
        if self.svf_scaling[adapter_name] == "plain":
            return sigma * (z - 1.0)  # W' = U diag(σ z) Vᵀ; 1 - 1 is exactly 0 in every dtype
        # W' = U diag(σ m) Vᵀ · Σσ / Σσm with m = sigmoid(z). Write m = μ + d around a reference μ = sigmoid(z₀);
        # the scale of each singular value minus one is then (d Σσ − Σσd) / (μ Σσ + Σσd), exactly zero when every
        # d is. That holds for any z₀, so z₀ is one of the z themselves (detached): while all z are equal (the
        # start, whatever dtype casts z went through) every d is exactly 0. d comes from the identity
        # sigmoid(a) − sigmoid(b) = sinh((a−b)/2) / (2 cosh(a/2) cosh(b/2)): subtracting two sigmoids could leave
        # a rounding residue where a = b, and masking it with `where` would also cut the gradient at the start.
        z = z.clamp(-_SIGMOID_Z_LIMIT, _SIGMOID_Z_LIMIT)
        z0 = z[:1].detach()
        d = torch.sinh((z - z0) / 2) / (2 * torch.cosh(z / 2) * torch.cosh(z0 / 2))
        mu = torch.sigmoid(z0)
        total, shift = sigma.sum(), (sigma * d).sum()
        # An all-zero weight (total 0) has nothing to rescale: the numerator is 0 as well, so guard the 0 / 0.
        denominator = (mu * total + shift).clamp_min(torch.finfo(torch.float32).tiny)
        return sigma * ((d * total - shift) / denominator)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW = W' − W = U diag(Δσ) Vᵀ, (out, in) float32."""
        change = self.singular_value_change(adapter_name)
        return (self.svf_U.float() * change) @ self.svf_Vh.float()


def _not_linear_message(module_name: str, module: nn.Module) -> str:
    return (
        f"SVF adapts nn.Linear layers only, but target module {module_name or '(unnamed)'} is "
        f"{type(module).__module__}.{type(module).__name__}. Remove it from target_modules (or add it to "
        "exclude_modules); SVFConfig's default targets are the MLP projections, and svf_target_modules(model, "
        "attention=True) lists the attention projections."
    )


class SVFLinear(nn.Module, SVFLayer):
    """An `nn.Linear` with SVF adapters: its output with W' = W + ΔW of the active adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SVFConfig, module_name: str = "", **kwargs):
        super().__init__()
        SVFLayer.__init__(self, base_layer, module_name=module_name)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _delta_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        # x (..., in) -> (..., out)
        u, vh = self.svf_U, self.svf_Vh
        change = self.singular_value_change(adapter_name).to(u.dtype)
        x = x.to(u.dtype)
        tokens = x.numel() // self.in_features
        if tokens < self.rank:
            # Few tokens (decoding): apply the factors, r (in + out) per token, instead of building ΔW.
            return ((x @ vh.T) * change) @ u.T
        return F.linear(x, (u * change) @ vh)  # ΔW once, then one matmul

    def _adapted_weight_output(self, x: torch.Tensor, adapter_names: list[str]) -> Optional[torch.Tensor]:
        """F.linear(x, W + ΔW, b): one matmul per token forward and two backward, where base(x) + x ΔWᵀ takes two
        and three. Only for a plain nn.Linear without hooks (anything else may do more than F.linear) and enough
        tokens to pay for building ΔW; None otherwise. While every Δσ is 0, W + ΔW is W bit for bit."""
        base = self.get_base_layer()
        if (
            type(base) is not nn.Linear
            or base._forward_hooks
            or base._forward_pre_hooks
            or x.numel() // self.in_features < self.rank
            or not base.weight.dtype.is_floating_point
        ):
            return None
        weight = base.weight
        for adapter_name in adapter_names:
            weight = weight + self.get_delta_weight(adapter_name).to(weight.dtype)
        return F.linear(x.to(weight.dtype), weight, base.bias)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        adapter_names = [name for name in self.active_adapters if name in self.svf_z]
        if adapter_names and not args and not kwargs:
            result = self._adapted_weight_output(x, adapter_names)
            if result is not None:
                return result
        result = self.base_layer(x, *args, **kwargs)
        for adapter_name in adapter_names:
            result = result + self._delta_output(x, adapter_name).to(result.dtype)
        return result

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add ΔW of the active (or the named) adapters to the base weight."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        for adapter_name in adapter_names:
            if adapter_name not in self.svf_z:
                continue
            merged = weight.data + self.get_delta_weight(adapter_name).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(
                    f"Merging SVF adapter {adapter_name!r} into {self.svf_module_name} gives non-finite weights: "
                    "its z vector holds NaN or inf. Check the adapter (get_z_vectors) before merging."
                )
            weight.data = merged
            self.merged_adapters.append(adapter_name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW of every merged adapter again (up to rounding of the weight dtype)."""
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            adapter_name = self.merged_adapters.pop()
            if adapter_name in self.svf_z:
                weight.data = weight.data - self.get_delta_weight(adapter_name).to(weight.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checked here, before torch reports a bare "size mismatch for ...svf_z.default".
        for adapter_name, z in self.svf_z.items():
            loaded = state_dict.get(f"{prefix}svf_z.{adapter_name}")
            if loaded is not None and tuple(loaded.shape) != tuple(z.shape):
                raise ValueError(
                    f"SVF adapter {adapter_name!r}: the z vector loaded for {_display_name(prefix)} has shape "
                    f"{tuple(loaded.shape)}, but this module has {self.rank} singular values (nn.Linear "
                    f"{self.in_features} -> {self.out_features}). The adapter was saved for another base model: "
                    "load it onto the model it was trained on."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __repr__(self) -> str:
        return "svf." + super().__repr__()


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


def _listing(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


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


# ------------------------------------------------------------------------------------------ z vectors ----
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

    reference_name = names[0]
    reference = experts[reference_name]
    for name in names[1:]:
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
    return {
        module: sum(weight * experts[name][module].detach().float().cpu() for name, weight in zip(names, weights))
        for module in reference
    }


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
