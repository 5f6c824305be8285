"""Analytic forward cost per token of SLAM v1, SLAM v2 and Llama: multiply-accumulates split into attention, MLP,
projections and lm_head, the geometry of the EF windows / fusion segments, and the predicted speedup over Llama.

Causal attention counts the lower triangle only (what flash/SDPA causal kernels compute). SLAM v1 EF blocks project
Q/K/V for *every* token in both blocks, then run o_proj + MLP on the gathered window slots. SLAM v2 fusion cycles
run Q/K/V, o_proj and the MLP on every computed segment slot (a batched cycle also computes the empty slots of a
partial last group); its MoA layer runs top_k experts' q/o projections per token, shared K/V of expert width, a
router, and top_k * expert_heads query heads. Backward is ~2x the same mix."""


def v1_geometry(seq_len, window, overlap):
    """Windows a causal SLAM v1 EF cycle runs over a sequence of `seq_len` tokens (see plan_windows)."""
    stride = window - overlap
    num_windows = -(-seq_len // stride)  # every window that starts before the end
    q_len = min(window, seq_len)
    return {"stride": stride, "windows": num_windows, "window_tokens": q_len, "slots": num_windows * q_len}


def v2_geometry(seq_len, segment_length, num_slots):
    """Segments a causal SLAM v2 fusion cycle runs (see plan_segments / SlamCyclicFusion)."""
    segments = -(-seq_len // segment_length)
    q_len = min(segment_length, seq_len)
    groups = -(-segments // num_slots)
    batched = segments >= num_slots  # every slot holds a segment: one batched computation per cycle
    computed = num_slots * groups if batched else segments  # segment slots computed (incl. empty ones)
    return {
        "segments": segments,
        "segment_tokens": q_len,
        "computed_segments": computed,
        "slots": computed * q_len,
        "batched": batched,
    }


class _Shapes:
    """Per-token sizes shared by every layer of the compared models."""

    def __init__(self, args, seq_len):
        self.hidden, self.heads = args.hidden_size, args.num_heads
        self.kv_heads = args.num_kv_heads or self.heads
        self.head_dim = self.hidden // self.heads
        self.qkv = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        self.o = self.heads * self.head_dim * self.hidden
        self.causal_attention = 2 * self.heads * self.head_dim * (seq_len + 1) / 2  # QK^T + AV, mean key count

    def full_layer(self, intermediate):
        return {
            "qkv_o_proj": self.qkv + self.o,
            "attention": self.causal_attention,
            "mlp": 3 * self.hidden * intermediate,
        }


def _add(parts, more, times=1.0):
    for key, value in more.items():
        parts[key] += times * value


def _llama_parts(args, shapes, seq_len, parts):
    _add(parts, shapes.full_layer(args.sizes["llama"]), args.llama_layers)
    return None


def _v1_parts(args, shapes, seq_len, parts):
    inter = args.sizes["v1"]
    _add(parts, shapes.full_layer(inter), 2)
    geo = v1_geometry(seq_len, args.ef_segment_length, args.ef_segment_overlap)
    w, slots = geo["window_tokens"], geo["slots"]
    per_cycle = {
        "qkv_o_proj": 2 * shapes.qkv + shapes.o * slots / seq_len,
        "attention": 2 * shapes.heads * shapes.head_dim * geo["windows"] * w * (w + 1) / 2 / seq_len,
        "mlp": 3 * shapes.hidden * inter * slots / seq_len,
    }
    _add(parts, per_cycle, args.ef_cycles)
    return dict(geo, coverage=slots / seq_len)


def _v2_parts(args, shapes, seq_len, parts):
    inter, h, d = args.sizes["v2"], shapes.hidden, shapes.head_dim
    _add(parts, shapes.full_layer(inter))  # Level 1
    geo = v2_geometry(seq_len, args.v2_segment_length, args.v2_num_blocks)
    S, slots = geo["segment_tokens"], geo["slots"]
    per_cycle = {
        "qkv_o_proj": (shapes.qkv + shapes.o) * slots / seq_len,
        "attention": 2 * shapes.heads * d * geo["computed_segments"] * S * (S + 1) / 2 / seq_len,
        "mlp": 3 * h * inter * slots / seq_len,
    }
    _add(parts, per_cycle, args.v2_ef_cycles)
    k, experts = args.moa_top_k, args.moa_experts
    expert_heads = shapes.heads // k
    moa_kv = expert_heads * shapes.kv_heads // shapes.heads
    moa_layer = {
        "qkv_o_proj": h * experts + 2 * h * moa_kv * d + 2 * k * h * expert_heads * d,
        "attention": 2 * k * expert_heads * d * (seq_len + 1) / 2,
        "mlp": 3 * h * inter,
    }
    _add(parts, moa_layer)
    return dict(geo, coverage=slots / seq_len)


_MODEL_PARTS = {"llama": _llama_parts, "v1": _v1_parts, "v2": _v2_parts}


def cost_model(args, seq_len):
    """Forward multiply-accumulates per token of every model in `args.cost_models`, split into parts, with the
    predicted speedup over Llama and the v1 / v2 geometry at this length."""
    shapes = _Shapes(args, seq_len)
    out, geometry = {}, {}
    for name in args.cost_models:
        parts = {"qkv_o_proj": 0.0, "attention": 0.0, "mlp": 0.0, "lm_head": shapes.hidden * args.vocab_size}
        geo = _MODEL_PARTS[name](args, shapes, seq_len, parts)
        if geo is not None:
            geometry[name] = geo
        total = sum(parts.values())
        out[name] = {"macs_per_token": total, "fractions": {k: v / total for k, v in parts.items()}}
    if "llama" in out:
        for name in out:
            out[name]["predicted_speedup"] = out["llama"]["macs_per_token"] / out[name]["macs_per_token"]
    out["geometry"] = geometry
    return out
