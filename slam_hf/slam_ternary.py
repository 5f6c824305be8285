"""BitNet b1.58 ternary projections (DESIGN §2): `TernaryLinear` for training, its packed deployment format, and
`Int8TernaryLinear` for fast CPU inference.

The recipe of "The Era of 1-bit LLMs" (Ma et al., 2024), as transformers' `AutoBitLinear` computes it online:

    weights      gamma = mean(|W|)                       (per tensor, absmean)
                 W_q   = RoundClip(W / gamma, -1, 1)     in {-1, 0, 1}
    activations  s_x   = 127 / max(|x|)                  (per token, absmax over the features)
                 x_q   = Clip(Round(x * s_x), -128, 127) (int8 range)
    output       y     = (x_q @ W_q^T) / (s_x * (1 / gamma)) (+ bias)

with gamma and max(|x|) floored at 1e-5. Training keeps full-precision master weights and passes gradients straight
through both roundings (the straight-through estimator: d RoundClip(v) / dv := 1), so `Trainer`, optimizers and
PEFT (which wraps any `nn.Linear` subclass) see an ordinary linear layer; evaluation runs the same quantised math.

The output is computed in the order of transformers' `BitLinear` (integer-valued product, then one division by
input scale times `weight_scale = 1 / gamma`). x_q and W_q are small integers, so the float product is exact (every
partial sum is an integer below 2**24 for in_features < 131072) and equals `torch._int_mm`'s int32 product. The three
implementations (this training layer, transformers' packed `BitLinear`, `Int8TernaryLinear`) therefore give the same
float32 outputs bit for bit, not merely close ones: a last-bit difference upstream would move an activation across a
rounding boundary and change a later layer by a whole quantisation step.

Deployment format (`pack_ternary`, transformers' BitLinear layout): W_q + 1 in 2 bits, four output rows per uint8
byte; packed row r of a weight with R = out_features / 4 packed rows holds rows r, R + r, 2R + r, 3R + r at bits 0-1,
2-3, 4-5, 6-7; `weight_scale` = 1 / gamma.
"""

import torch
from torch import nn
from torch.nn import functional as F

WEIGHT_EPS = 1e-5  # floor of gamma = mean|W|
ACTIVATION_EPS = 1e-5  # floor of max|x| per token
ACTIVATION_MAX = 127  # int8: x_q in [-128, 127]
ROWS_PER_BYTE = 4  # 2-bit ternary values per packed uint8


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs: the scales need at least float32 (bf16 would move roundings)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def ternary_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_q in {-1, 0, 1} as float, gamma): the per-tensor absmean quantisation of a weight, in float32 (or 64)."""
    weight = weight.to(compute_dtype(weight))
    gamma = weight.abs().mean().clamp(min=WEIGHT_EPS)
    return (weight / gamma).round().clamp(-1, 1), gamma


def int8_activations(hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q in [-128, 127] as float, s_x (..., 1)): the per-token absmax quantisation of activations, in float32
    (or 64)."""
    hidden_states = hidden_states.to(compute_dtype(hidden_states))
    scale = ACTIVATION_MAX / hidden_states.abs().amax(dim=-1, keepdim=True).clamp_(min=ACTIVATION_EPS)
    # in place on the new product: one (tokens x features) temporary instead of three
    return torch.mul(hidden_states, scale).round_().clamp_(-ACTIVATION_MAX - 1, ACTIVATION_MAX), scale


class TernaryMatmul(torch.autograd.Function):
    """x @ W^T through ternary weights and int8 activations; the backward is the straight-through estimator's:
    the gradients of F.linear(x_q / s_x, W_q * gamma) with respect to x and W."""

    @staticmethod
    def forward(ctx, hidden_states, weight):
        weight_q, gamma = ternary_weight(weight)
        activations_q, scale = int8_activations(hidden_states)
        output = F.linear(activations_q, weight_q) / (scale * (1 / gamma))  # BitLinear's order (module docstring)
        ctx.save_for_backward(activations_q, scale, weight_q, gamma)
        ctx.dtypes = hidden_states.dtype, weight.dtype
        return output.to(hidden_states.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        activations_q, scale, weight_q, gamma = ctx.saved_tensors
        input_dtype, weight_dtype = ctx.dtypes
        grad_output = grad_output.to(weight_q.dtype)
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = (grad_output @ (weight_q * gamma)).to(input_dtype)
        if ctx.needs_input_grad[1]:
            activations = (activations_q / scale).flatten(0, -2)
            grad_weight = (grad_output.flatten(0, -2).T @ activations).to(weight_dtype)
        return grad_input, grad_weight


class TernaryLinear(nn.Linear):
    """A linear layer with BitNet b1.58 ternary weights and int8 activations (see the module docstring).

    The parameters are an ordinary `nn.Linear`'s (full-precision `weight`, optional `bias`), so checkpoints, PEFT
    and optimizers treat it as one; only the forward differs.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = TernaryMatmul.apply(hidden_states, self.weight)
        return output if self.bias is None else output + self.bias


def pack_ternary(weight_q: torch.Tensor) -> torch.Tensor:
    """W_q (out, in) in {-1, 0, 1} -> uint8 (out / 4, in) in transformers' BitLinear layout (module docstring)."""
    out_features = weight_q.shape[0]
    if out_features % ROWS_PER_BYTE:
        raise ValueError(
            f"a packed ternary weight holds {ROWS_PER_BYTE} output rows per byte, and transformers' BitLinear unpacks "
            f"exactly out_features / {ROWS_PER_BYTE} rows: out_features must be a multiple of {ROWS_PER_BYTE}, got "
            f"{out_features}; keep this projection full precision (leave it out of `ternary_modules`)."
        )
    levels = (weight_q.round().clamp(-1, 1) + 1).to(torch.uint8).view(ROWS_PER_BYTE, -1, *weight_q.shape[1:])
    packed = torch.zeros_like(levels[0])
    for slot in range(ROWS_PER_BYTE):
        packed |= levels[slot] << (2 * slot)
    return packed


def unpack_ternary(packed: torch.Tensor, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """The inverse of `pack_ternary`: uint8 (out / 4, in) -> W_q (out, in) in {-1, 0, 1} as `dtype`."""
    slots = [((packed >> (2 * slot)) & 3).to(dtype) - 1 for slot in range(ROWS_PER_BYTE)]
    return torch.cat(slots)


def onednn_int8_linear_available() -> bool:
    """Whether this torch build has oneDNN's int8 linear ops (x86 CPU builds with mkldnn)."""
    onednn = getattr(torch.ops, "onednn", None)
    return torch.backends.mkldnn.is_available() and onednn is not None and hasattr(onednn, "qlinear_pointwise")


class Int8TernaryLinear(nn.Module):
    """Inference-only ternary projection for CPUs: W_q held once as int8, x_q @ W_q by an int8 matmul with int32
    accumulation, the same outputs as `TernaryLinear` and transformers' `BitLinear` (module docstring).

    1 byte per weight (a quarter of float32), unpacked once when built, never per call. The matmul is oneDNN's int8
    linear on a weight packed once in its blocked layout (`torch._int_mm` re-orders the weight on every call, which
    benchmarks/bench_ternary.py measured at ~1.3x the packed kernel's prefill time), for weights of at least
    `onednn_min_weights` where the op exists and reproduces `_int_mm` on a probe when packed; otherwise
    `torch._int_mm` (CPU) or a float matmul of the integer values (other devices; exact, as in `TernaryMatmul`).
    Built by `to_int8_ternary`; no trainable parameters (train `TernaryLinear`, deploy this)."""

    # oneDNN's int8 linear costs ~20 us a call however small the layer (0.4-1.6 ms for 128 outputs at one row on the
    # benchmark's CPU): below this many weights `_int_mm` is faster
    onednn_min_weights = 2**20

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_q.shape
        self.register_buffer("weight_t", weight_q.to(torch.int8).T.contiguous())  # (in, out): _int_mm's layout
        self.register_buffer("weight_scale", weight_scale.float().reshape(()))  # 1 / gamma, as BitLinear stores it
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.packed_weight = None  # oneDNN's packed W_q, which then replaces weight_t
        self.pack_weight()

    @classmethod
    def from_ternary_linear(cls, layer: TernaryLinear) -> "Int8TernaryLinear":
        weight_q, gamma = ternary_weight(layer.weight.detach())
        return cls(weight_q, 1 / gamma.float(), layer.bias)

    @classmethod
    def from_bitlinear(cls, layer: nn.Module) -> "Int8TernaryLinear":
        """From transformers' `BitLinear` (packed uint8 `weight`, `weight_scale` = 1 / gamma)."""
        return cls(unpack_ternary(layer.weight), layer.weight_scale, layer.bias)

    def int8_weight(self) -> torch.Tensor:
        """W_q^T as int8 (in, out), packed or not."""
        return self.weight_t if self.packed_weight is None else self.packed_weight.to_dense()  # (in, out)

    def pack_weight(self):
        """Pack W_q for oneDNN where that pays (class docstring), after checking the packed product on a probe."""
        large = self.in_features * self.out_features >= self.onednn_min_weights
        if not (large and self.weight_t.device.type == "cpu" and onednn_int8_linear_available()):
            return
        # the op's per-output-channel scales and zero points, constant: allocated once, not per call
        self.unit_scales = torch.ones(self.out_features)
        self.zero_points = torch.zeros(self.out_features, dtype=torch.long)
        try:
            packed = torch.ops.onednn.qlinear_prepack(self.weight_t.T.contiguous(), None)
            probe = torch.randint(-128, 128, (3, self.in_features), dtype=torch.int8)
            exact = torch.equal(self._onednn_product(probe, packed), torch._int_mm(probe, self.weight_t).float())
        except (RuntimeError, TypeError, NotImplementedError):  # an op whose signature this code does not know
            return
        if exact:
            self.packed_weight, self.weight_t = packed, None

    def _onednn_product(self, activations_q: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        # (x_q @ W_q^T) * 1 * 1 as float32: with unit scales and zero points, oneDNN returns the exact integer product
        return torch.ops.onednn.qlinear_pointwise(
            activations_q,
            1.0,
            0,
            packed,
            self.unit_scales,
            self.zero_points,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )

    def product(self, activations_q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x_q @ W_q^T (rows, out), exact, in `dtype` (from x_q as integer-valued floats)."""
        if self.packed_weight is not None:
            return self._onednn_product(activations_q.to(torch.int8), self.packed_weight).to(dtype)
        if activations_q.device.type == "cpu":
            return torch._int_mm(activations_q.to(torch.int8), self.weight_t).to(dtype)
        return activations_q @ self.weight_t.to(dtype)  # CUDA's _int_mm needs M > 16 and multiples of 8

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        activations_q, scale = int8_activations(hidden_states.reshape(-1, self.in_features))
        product = self.product(activations_q, scale.dtype)
        output = product.div_(scale.mul_(self.weight_scale.to(scale.dtype))).to(hidden_states.dtype)
        if self.bias is not None:
            output = output + self.bias
        return output.view(*shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        # a packed weight is an opaque CPU tensor: unpack it for .to() / .cuda() / .half(), pack again on the CPU
        if self.packed_weight is not None:
            self.weight_t, self.packed_weight = self.int8_weight().contiguous(), None
        result = super()._apply(fn, recurse)
        self.pack_weight()
        return result

    def __getstate__(self):
        # deepcopy and pickle cannot read an opaque tensor: hand them the int8 weight (packed again on load)
        state = super().__getstate__()
        if self.packed_weight is not None:
            state = {**state, "packed_weight": None, "_buffers": {**state["_buffers"], "weight_t": self.int8_weight()}}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.packed_weight is None and self.weight_t is not None:
            self.pack_weight()

    def extra_repr(self) -> str:
        kernel = "onednn" if self.packed_weight is not None else "int_mm"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {kernel}"
        )


def is_bitlinear(module: nn.Module) -> bool:
    """transformers' packed `BitLinear` (matched by name and layout: remote code does not import its module)."""
    return (
        type(module).__name__ == "BitLinear"
        and getattr(module, "weight", None) is not None
        and (module.weight.dtype == torch.uint8)
    )


@torch.no_grad()
def to_int8_ternary(model: nn.Module) -> nn.Module:
    """Replace every `TernaryLinear` (full-precision master weights) and transformers' packed `BitLinear` (a model
    loaded from `export_ternary`'s folder through the stock quantizer) by an `Int8TernaryLinear`, in place. Returns
    the model, in eval mode: the result is for inference only."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, TernaryLinear):
            model.set_submodule(name, Int8TernaryLinear.from_ternary_linear(module))
        elif is_bitlinear(module):
            model.set_submodule(name, Int8TernaryLinear.from_bitlinear(module))
        else:
            continue
        replaced += 1
    if not replaced:
        raise ValueError(
            "to_int8_ternary found no ternary projection: build the model with `ternary_linear=True`, or load a folder "
            "written by `slam_hf.export.export_ternary`."
        )
    return model.eval()


__all__ = [
    "Int8TernaryLinear",
    "TernaryLinear",
    "int8_activations",
    "onednn_int8_linear_available",
    "pack_ternary",
    "ternary_weight",
    "to_int8_ternary",
    "unpack_ternary",
]
