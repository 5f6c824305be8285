"""One SVF-adapted `nn.Linear`: its SVD bases, z vectors, forward and merge (DESIGN §7).

`SVFLayer` holds the state PEFT's tuner machinery expects of a layer (one z vector per adapter, keyed by adapter
name); `SVFLinear` is the module `SVFModel` puts in place of each targeted `nn.Linear`. The module docstring of
`slam_hf.adapters.svf` gives the formulas and why U, σ and Vᵀ are rebuilt rather than saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from .svf import SVFConfig

# PEFT finds an adapter's parameters by this prefix of their names (`svf_z`).
SVF_PREFIX = "svf_"
# Where PEFT puts the wrapped model in module names: PeftModel -> SVFModel -> the transformers model.
_PEFT_MODEL_PREFIX = "base_model.model."
# |z| bound of the sigmoid form: sigmoid is saturated in float32 long before, and sinh/cosh of z / 2 stay finite.
_SIGMOID_Z_LIMIT = 60.0


def _display_name(prefix_or_name: str) -> str:
    """A module name as the user's model names it: without PEFT's `base_model.model.` and the trailing dot."""
    name = prefix_or_name.rstrip(".")
    return name[len(_PEFT_MODEL_PREFIX) :] if name.startswith(_PEFT_MODEL_PREFIX) else name


def _listing(names) -> str:
    """Up to four module names, sorted, and how many more: for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


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
