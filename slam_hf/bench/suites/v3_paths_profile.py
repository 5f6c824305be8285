"""The diagnosis after section 3 of the SLAM v3 benchmark: where the paths forward spends its time and what would
make it faster (1 thread, no grad): achieved GFLOP/s against this core's matmul roofline, the cost of weight
stacking, mask building, GQA repeat_kv and SDPA with a bool, float or no mask, and the compacted prototype."""

import gc

import torch

from slam_hf import SlamV3ForConditionalGeneration
from slam_hf.bench.measure import interleaved
from slam_hf.slam_fusion import path_masks
from slam_hf.slam_grouped import StackedLayers

from .v3_paths import compact_paths_forward, encoder_config, encoder_inputs, paths_flops, paths_inputs
from .v3_timing import TIMERS, format_ops, set_threads, top_ops


def median_ms(clock, fn, n=5):
    return interleaved({"fn": fn}, 1, n, clock=TIMERS[clock])["fn"]["median_s"] * 1e3


class PathsCase:
    """The paths of one encoder at one shape, on the mixed input and on a text-only input of the same shape."""

    def __init__(self, args, shape):
        hidden, length, batch = (int(x) for x in shape.lower().split("x"))
        torch.manual_seed(args.seed)
        self.config = encoder_config(hidden, args.encoder_layers)
        self.model = SlamV3ForConditionalGeneration(self.config).eval()
        encoder, self.paths = self.model.model.encoder, self.model.model.encoder.paths
        _, _, _, self.states, self.is_image, self.real = encoder_inputs(self.config, length, batch, args.seed)
        self.mixed = paths_inputs(encoder, self.states, self.is_image, self.real)
        self.text_only = torch.zeros_like(self.is_image)
        self.text = paths_inputs(encoder, self.states, self.text_only, self.real)
        self.batch, self.length = batch, length

    def forward(self, batched, text_only=False):
        self.paths.batch_paths = batched
        return self.paths(self.states, *(self.text if text_only else self.mixed), "sdpa")

    def compact(self, text_only=False):
        masks, is_image = (self.text, self.text_only) if text_only else (self.mixed, self.is_image)
        return compact_paths_forward(self.paths, self.states, *masks, is_image)

    def compact_check(self):
        """Max |compacted - sequential| over both inputs, and the largest output."""
        ref, ref_t = self.forward(False), self.forward(False, text_only=True)
        diff = max((self.compact() - ref).abs().max().item(), (self.compact(True) - ref_t).abs().max().item())
        return diff, max(ref.abs().max().item(), ref_t.abs().max().item())


def timed_rows(case, med):
    """ms of the paths forward and of each of its suspects, on the mixed and the text-only input."""
    paths = case.paths
    attention = paths.paths["text"][0].self_attn
    heads, kv_heads, head_dim = attention.num_heads, attention.num_key_value_heads, attention.head_dim
    groups = [paths.layer_group(i, range(4)) for i in range(paths.num_layers)]
    n, length = 4 * case.batch, case.length
    q = torch.randn(n, heads, length, head_dim)
    k = torch.randn(n, kv_heads, length, head_dim)
    v = torch.randn(n, kv_heads, length, head_dim)
    bool_mask = case.mixed[1].flatten(0, 1)[:, None]
    float_mask = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    k_rep, v_rep = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    layers, rep = paths.num_layers, heads // kv_heads

    def repeated_sdpa(mask):
        return [sdpa(q, k_rep, v_rep, attn_mask=mask) for _ in range(layers)]

    return {
        "batched forward": med(lambda: case.forward(True)),
        "sequential forward": med(lambda: case.forward(False)),
        "  stack weights, all layers (in batched)": med(lambda: [StackedLayers.try_build(g) for g in groups]),
        "  path_masks (4 x B x L x L bool; in encoder)": med(lambda: path_masks(case.is_image, case.real)),
        f"  repeat_kv K,V x{rep} (GQA with a mask), x{layers}": med(
            lambda: [(k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)) for _ in range(layers)]
        ),
        f"  SDPA x{layers}, bool mask (as now)": med(lambda: repeated_sdpa(bool_mask)),
        f"  SDPA x{layers}, float mask": med(lambda: repeated_sdpa(float_mask)),
        f"  SDPA x{layers}, no mask (lower bound)": med(lambda: repeated_sdpa(None)),
        "compacted sequential (prototype, see below)": med(lambda: case.compact()),
        "text-only input: batched": med(lambda: case.forward(True, text_only=True)),
        "text-only input: sequential": med(lambda: case.forward(False, text_only=True)),
        "text-only input: compacted (2 empty paths skipped)": med(lambda: case.compact(True)),
    }


def report_rows(report, rows, flops, peak, compact_diff, compact_scale):
    for name, ms in rows.items():
        note = ""
        if name in ("batched forward", "sequential forward"):
            gflops = flops / (ms / 1e3) / 1e9
            note = f"{gflops:6.1f} GFLOP/s = {100 * gflops / peak:3.0f} % of the matmul roofline"
        elif name.startswith("  "):
            note = f"{100 * ms / rows['batched forward']:5.1f} % of the batched forward"
        elif name.startswith("compacted"):
            note = (
                f"sequential / compacted {rows['sequential forward'] / ms:.2f}x (max |diff| {compact_diff:.1e}, "
                f"max |output| {compact_scale:.1e})"
            )
        elif name.startswith("text-only input: compacted"):
            note = f"sequential / compacted {rows['text-only input: sequential'] / ms:.2f}x"
        report(f"  {name:<52}{ms:>9.2f} ms  {note}")


def profile_shape(args, report, shape, med, peak):
    case = PathsCase(args, shape)
    compact_diff, compact_scale = case.compact_check()
    rows = timed_rows(case, med)
    attention = case.paths.paths["text"][0].self_attn
    flops = paths_flops(case.config, case.batch, case.length)
    report(
        f"shape {shape} (hidden x seq x batch), {attention.num_heads} heads / {attention.num_key_value_heads} kv heads "
        f"of {attention.head_dim}, {flops / 1e9:.2f} GFLOP per paths forward:"
    )
    report_rows(report, rows, flops, peak, compact_diff, compact_scale)
    tables = {}
    for batched in (True, False):
        key = "batched" if batched else "sequential"
        tables[key] = top_ops(lambda: case.forward(batched), rows=6)
        report(f"  top ops, {key} forward: {format_ops(tables[key])}")
    case.paths.batch_paths = True
    return {"rows_ms": rows, "top_ops": tables, "gflop": flops / 1e9, "compact_max_abs_diff": compact_diff}


@torch.no_grad()
def profile_paths(args, report):
    """Where the paths forward spends its time and what would make it faster (1 thread, no grad)."""
    report(
        "\n-- diagnosis of the paths forward (1 thread, process time, median of 5, no grad), at the first two shapes --"
    )
    set_threads(1)
    clock = "proc" if args.timer == "process" else "wall"

    def med(fn, n=5):
        return median_ms(clock, fn, n)

    a, b = torch.randn(2048, 1024), torch.randn(1024, 2048)
    peak = 2 * 2048 * 1024 * 2048 / (med(lambda: a @ b) / 1e3) / 1e9
    report(f"matmul roofline of this core: {peak:.1f} GFLOP/s (2048x1024 @ 1024x2048, fp32, 1 thread)")
    out = {"matmul_gflops": peak}
    for shape in args.encoder_shapes[:2]:
        out[shape] = profile_shape(args, report, shape, med, peak)
        gc.collect()
    set_threads(args.threads)
    return out
