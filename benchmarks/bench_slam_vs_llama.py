#!/usr/bin/env python
"""SLAM v1 / SLAM v2 vs. a Llama baseline at equal parameter count, in one run.

Measures, for every model in --models (any of v1, v2, llama):
  * training throughput: tokens/s of one forward + backward + AdamW step, per sequence length;
  * peak memory of a training step (fresh subprocess per measurement, method printed with the results);
  * generation throughput: `model.generate` with a KV cache, greedy, prompt + N new tokens;
and prints a table with the ratios model/llama, an analytic per-token cost model that explains them, and
PASS/FAIL against the issue's targets. Optional extra sections:
  * the mixture-of-attention-experts micro-benchmark (SLAM v2's Level-3 attention, top-k of E experts,
    vs. a dense attention layer of the same width): forward + backward time ratio (when v2 is benchmarked);
  * held-out LM loss after the same number of training tokens on the Shakespeare corpus (--heldout-steps);
  * a SLAM v2 segment-length sweep (--v2-sweep), a per-part time breakdown (--breakdown) and
    torch.profiler tables (--profile, --profile-generate).

Every SLAM model is configured to match LlamaForCausalLM layer for layer (RMSNorm, pre-norm, SwiGLU, RoPE,
no biases, tied embeddings, same hidden/heads/KV heads/vocab). Parameter counts are matched to one reference
model (--match-params-to, default v2 when it is benchmarked) by solving the other models' SwiGLU
intermediate size (Llama's depth is --llama-layers); they are checked within --param-tolerance and printed.

Timings interleave the models step by step (order reversed every round) and report medians, so a noisy,
shared machine shifts all alike and the ratios stay meaningful.

    PYTHONPATH=. python benchmarks/bench_slam_vs_llama.py --threads 1 --timer process       # CPU, all three
    PYTHONPATH=. python benchmarks/bench_slam_vs_llama.py --models v1 llama --seq-lens 512 2048
    PYTHONPATH=. python benchmarks/bench_slam_vs_llama.py --device cuda --dtype bfloat16 --batch-size 8 \
        --hidden-size 1024 --num-heads 16 --intermediate-size 2816
"""

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from torch.nn import functional as F

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _REPO_ROOT)

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from slam_hf import SlamV1Config, SlamV1ForCausalLM, SlamV2Config, SlamV2ForCausalLM  # noqa: E402
from slam_hf.bench.diagnostics import PartTimer, profile_table, saved_for_backward  # noqa: E402
from slam_hf.bench.machine import cpu_name, load_average, software_versions  # noqa: E402
from slam_hf.bench.measure import (  # noqa: E402
    CLOCKS,
    MALLOC_ENV,
    PeakMemory,
    count_parameters,
    interleaved,
    synchronize,
    timed,
)

MODEL_CHOICES = ("v1", "v2", "llama")
LABELS = {"v1": "SLAM v1", "v2": "SLAM v2", "llama": "Llama"}
BASELINE = "llama"
# The issues' targets, as ratios model / llama. speed: training tokens/s at a sequence length (>=);
# memory: training step memory at a sequence length (v1: <= 1.00; v2: "lower peak memory", i.e. < 1.00).
TARGETS = {
    "v1": {"speed": {512: 0.90, 2048: 1.30}, "memory": {2048: (1.00, "<=")}},
    "v2": {"speed": {2048: 1.50, 8192: 2.00}, "memory": {2048: (1.00, "<"), 8192: (1.00, "<")}},
}
MOA_TARGET = 1.30  # MoA forward + backward time / dense attention of the same width (<=)
INTERMEDIATE_MULTIPLE = 8  # solved intermediate sizes are rounded to a multiple of this


# --------------------------------------------------------------------------------------------- setup
def _run_options(p):
    """Models, device, dtype, sequence lengths, timing protocol."""
    p.add_argument("--models", nargs="+", default=list(MODEL_CHOICES), choices=MODEL_CHOICES)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation, all models")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048, 8192], help="training sequence lengths")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and sequence length")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model and sequence length (median)")
    p.add_argument("--long-seq", type=int, default=4096, help="lengths >= this use --long-warmup / --long-repeats")
    p.add_argument("--long-warmup", type=int, default=1)
    p.add_argument("--long-repeats", type=int, default=3)


def _model_size_options(p):
    """Model size (shared by all models)."""
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-kv-heads", type=int, default=None, help="GQA; default = --num-heads (MHA)")
    p.add_argument(
        "--intermediate-size",
        type=int,
        default=768,
        help="SwiGLU inner size of the parameter reference model (see --match-params-to)",
    )
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--norm-eps", type=float, default=1e-6)


def _parameter_matching_options(p):
    """Parameter matching: which model is the reference and how the others are sized."""
    p.add_argument(
        "--match-params-to",
        default=None,
        choices=["v1", "v2"],
        help="reference model whose parameter count the others match (default: v2 if benchmarked, else v1)",
    )
    p.add_argument(
        "--llama-layers",
        type=int,
        default=None,
        help="Llama depth (default: v2's 1 + ef_num_blocks + 1 distinct layers when v2 is the reference, "
        "else v1's 2 + 2 * ef_cycles)",
    )
    p.add_argument("--llama-intermediate-size", type=int, default=None, help="default: solved to match parameters")
    p.add_argument("--v1-intermediate-size", type=int, default=None, help="default: solved to match parameters")
    p.add_argument("--v2-intermediate-size", type=int, default=None, help="default: solved to match parameters")
    p.add_argument("--param-tolerance", type=float, default=0.03, help="max relative parameter difference")


def _slam_v1_options(p):
    """SLAM v1 encoder-fusion geometry."""
    p.add_argument("--ef-cycles", type=int, default=2, help="SLAM v1: depth = 2 + 2 * ef_cycles layers")
    # 288 / 32 = stride 256: windows tile 512 and 2048 exactly (no mostly-empty trailing window), and
    # each token pair on a window border is shared. See benchmarks/README.md for the geometry sweep.
    p.add_argument("--ef-segment-length", type=int, default=288, help="SLAM v1 window")
    p.add_argument("--ef-segment-overlap", type=int, default=32, help="SLAM v1 window overlap")


def _slam_v2_options(p):
    """SLAM v2 fusion cycles, segments and attention experts."""
    p.add_argument("--v2-ef-cycles", type=int, default=2, help="SLAM v2 fusion cycles (the config default)")
    p.add_argument("--v2-num-blocks", type=int, default=4, help="SLAM v2 shared blocks = segments per rotation")
    # 256: divides 512, 2048 and 8192, so every segment is full; from 1024 tokens on all four slots hold
    # segments and each cycle is one batched computation. See benchmarks/README.md (and --v2-sweep).
    p.add_argument("--v2-segment-length", type=int, default=256, help="SLAM v2 ef_segment_length (fixed segments)")
    p.add_argument("--moa-experts", type=int, default=8)
    p.add_argument("--moa-top-k", type=int, default=2)
    p.add_argument("--router-aux-loss-coef", type=float, default=0.01)


def _generation_options(p):
    """Generation throughput."""
    p.add_argument("--gen-prompt-len", type=int, default=128)
    p.add_argument("--gen-new-tokens", type=int, default=64)
    p.add_argument("--gen-batch-size", type=int, default=1)
    p.add_argument("--gen-repeats", type=int, default=3)


def _sections_options(p):
    """Which sections run."""
    p.add_argument("--no-train", action="store_true", help="skip training throughput")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--no-generate", action="store_true", help="skip generation throughput")
    p.add_argument("--no-moa", action="store_true", help="skip the MoA micro-benchmark")
    p.add_argument("--moa-seq-lens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--moa-repeats", type=int, default=7)


def _heldout_options(p):
    """Held-out loss (small models trained on the Shakespeare corpus)."""
    p.add_argument("--heldout-steps", type=int, default=0, help="training steps per model; 0 skips the section")
    p.add_argument("--heldout-models", nargs="+", default=["v2", "llama"], choices=MODEL_CHOICES)
    p.add_argument("--heldout-seq-len", type=int, default=1024)
    p.add_argument("--heldout-batch-size", type=int, default=2)
    p.add_argument("--heldout-hidden-size", type=int, default=128)
    p.add_argument("--heldout-num-heads", type=int, default=4)
    p.add_argument("--heldout-intermediate-size", type=int, default=384, help="of the parameter reference model")
    p.add_argument(
        "--heldout-v2-segment-length",
        type=int,
        default=None,
        help="default: --v2-segment-length (256: four segments of a 1024-token row, the published four parts)",
    )
    p.add_argument("--heldout-lr", type=float, default=1e-3)
    p.add_argument("--heldout-eval-batches", type=int, default=None, help="cap on validation batches (default all)")


def _diagnostics_options(p):
    """Diagnostics, clock, threads and output."""
    p.add_argument(
        "--v2-sweep",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="also measure SLAM v2 training tok/s with these ef_segment_length values (vs Llama)",
    )
    p.add_argument("--sweep-seq-lens", type=int, nargs="+", default=[2048])
    p.add_argument(
        "--breakdown",
        type=int,
        default=None,
        metavar="SEQ",
        help="time forward and backward of each part (layer, fusion cycle, MoA layer) of one training step",
    )
    p.add_argument(
        "--breakdown-generate",
        action="store_true",
        help="time the forward of each part during one generate() call (prefill + decode)",
    )
    p.add_argument(
        "--saved-memory",
        type=int,
        default=None,
        metavar="SEQ",
        help="MiB of tensors saved for backward by each part in one training forward (explains step memory)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="SEQ",
        help="also run torch.profiler on one training step of each model at this sequence length",
    )
    p.add_argument("--profile-generate", action="store_true", help="torch.profiler table of one generate() call")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timer",
        default="wall",
        choices=["wall", "process"],
        help="wall: perf_counter (default). process: CPU time of this process (CPU only; with --threads 1 it "
        "is insensitive to other processes competing for the cores, i.e. a fair comparison on a busy machine)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: leave torch's default; 1 is steadier on a shared, busy CPU)",
    )
    p.add_argument("--json-out", default=None, help="write all results to this JSON file")
    # Internal: one isolated memory measurement in a fresh process (see measure_memory).
    p.add_argument("--_memory-worker", nargs=2, metavar=("MODEL", "SEQ"), default=None, help=argparse.SUPPRESS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_options in (
        _run_options,
        _model_size_options,
        _parameter_matching_options,
        _slam_v1_options,
        _slam_v2_options,
        _generation_options,
        _sections_options,
        _heldout_options,
        _diagnostics_options,
    ):
        add_options(p)
    args = p.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))  # unique, in the given order
    if args.timer == "process" and args.device == "cuda":
        p.error("--timer process measures CPU time; use the default wall timer with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was requested but torch.cuda.is_available() is False")
    if args.match_params_to is None:
        args.match_params_to = "v2" if "v2" in args.models else "v1"
    if args.llama_layers is None:
        args.llama_layers = 2 + (args.v2_num_blocks if args.match_params_to == "v2" else 2 * args.ef_cycles)
    return args


def torch_dtype(args):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]


def max_positions(args):
    lens = list(args.seq_lens) + [
        args.gen_prompt_len + args.gen_new_tokens,
        args.profile or 0,
        args.breakdown or 0,
        args.saved_memory or 0,
    ]
    return max(lens + list(args.sweep_seq_lens if args.v2_sweep else []))


def common_fields(args):
    return dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=max_positions(args),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def slam_fields(args):
    return dict(
        mlp_type="swiglu",
        norm_type="rmsnorm",
        norm_position="pre",
        norm_eps=args.norm_eps,
        position_embedding_type="rope",
        rope_theta=args.rope_theta,
    )


def v1_config(args, intermediate_size) -> SlamV1Config:
    return SlamV1Config(
        **common_fields(args),
        **slam_fields(args),
        intermediate_size=intermediate_size,
        ef_cycles=args.ef_cycles,
        ef_segment_length=args.ef_segment_length,
        ef_segment_overlap=args.ef_segment_overlap,
    )


def v2_config(args, intermediate_size, segment_length=None) -> SlamV2Config:
    return SlamV2Config(
        **common_fields(args),
        **slam_fields(args),
        intermediate_size=intermediate_size,
        ef_cycles=args.v2_ef_cycles,
        ef_num_blocks=args.v2_num_blocks,
        ef_segment_length=segment_length or args.v2_segment_length,
        moa_num_experts=args.moa_experts,
        moa_top_k=args.moa_top_k,
        router_aux_loss_coef=args.router_aux_loss_coef,
    )


def llama_config(args, intermediate_size) -> LlamaConfig:
    return LlamaConfig(
        **common_fields(args),
        intermediate_size=intermediate_size,
        num_hidden_layers=args.llama_layers,
        hidden_act="silu",
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
    )


CONFIGS = {"v1": v1_config, "v2": v2_config, "llama": llama_config}
CLASSES = {"v1": SlamV1ForCausalLM, "v2": SlamV2ForCausalLM, "llama": LlamaForCausalLM}


def make_config(name, args, **overrides):
    config = CONFIGS[name](args, args.sizes[name], **overrides)
    config._attn_implementation = args.attn
    return config


def _params_at(name, args, intermediate_size):
    with torch.device("meta"):  # shapes only: no memory, no init
        return count_parameters(CLASSES[name](CONFIGS[name](args, intermediate_size)))


def plan_sizes(args, names):
    """Intermediate size per model: the reference keeps --intermediate-size, the others are solved to match
    its parameter count (parameters are affine in the intermediate size), unless given explicitly."""
    ref = args.match_params_to
    explicit = {"v1": args.v1_intermediate_size, "v2": args.v2_intermediate_size, "llama": args.llama_intermediate_size}
    sizes = {ref: explicit[ref] or args.intermediate_size}
    target = _params_at(ref, args, sizes[ref])
    for name in names:
        if name in sizes:
            continue
        if explicit[name]:
            sizes[name] = explicit[name]
            continue
        lo, hi = 64, 128
        p_lo, p_hi = _params_at(name, args, lo), _params_at(name, args, hi)
        solved = lo + (target - p_lo) * (hi - lo) / (p_hi - p_lo)
        sizes[name] = max(INTERMEDIATE_MULTIPLE, INTERMEDIATE_MULTIPLE * round(solved / INTERMEDIATE_MULTIPLE))
    return sizes


def build_model(name, args, **overrides):
    """Seeded construction in float32, then cast: the same seed gives the same weights on any device."""
    torch.manual_seed(args.seed)
    model = CLASSES[name](make_config(name, args, **overrides))
    return model.to(device=args.device, dtype=torch_dtype(args))


def make_batch(args, seq_len, batch_size, salt=0):
    generator = torch.Generator().manual_seed(args.seed + 1000 * seq_len + salt)
    # Ids >= 3 avoid pad / bos / eos; the same batch for every model.
    ids = torch.randint(3, args.vocab_size, (batch_size, seq_len), generator=generator)
    return ids.to(args.device)


def train_step(model, optimizer, ids):
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def greedy_generate(args, model, prompt, **kwargs):
    """Exactly --gen-new-tokens new tokens (min_new_tokens suppresses eos), greedy, with the KV cache."""
    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=args.gen_new_tokens,
        min_new_tokens=args.gen_new_tokens,
        do_sample=False,
        pad_token_id=0,
        **kwargs,
    )


def make_optimizer(model, lr=1e-4):
    # foreach=True is the default on CUDA; fixed here so both devices run the same implementation.
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=True)


def repeats_for(args, seq):
    if seq >= args.long_seq:
        return args.long_warmup, args.long_repeats
    return args.warmup, args.repeats


# ------------------------------------------------------------------------------------ cost model
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


def cost_model(args, seq_len):
    """Forward multiply-accumulates per token, split into parts (backward is ~2x the same mix).

    Causal attention counts the lower triangle only (what flash/SDPA causal kernels compute). SLAM v1 EF
    blocks project Q/K/V for *every* token in both blocks, then run o_proj + MLP on the gathered window slots.
    SLAM v2 fusion cycles run Q/K/V, o_proj and the MLP on every computed segment slot (a batched cycle
    also computes the empty slots of a partial last group); its MoA layer runs top_k experts' q/o
    projections per token, shared K/V of expert width, a router, and top_k * expert_heads query heads.
    """
    h, heads, vocab = args.hidden_size, args.num_heads, args.vocab_size
    kv_heads = args.num_kv_heads or heads
    d = h // heads
    L = seq_len
    qkv = h * (heads + 2 * kv_heads) * d  # per token
    o = heads * d * h
    causal_attn = 2 * heads * d * (L + 1) / 2  # QK^T + AV, average key count (L + 1) / 2

    def empty():
        return {"qkv_o_proj": 0.0, "attention": 0.0, "mlp": 0.0, "lm_head": h * vocab}

    def add(parts, more, times=1.0):
        for k, v in more.items():
            parts[k] += times * v

    def full_layer(inter):
        return {"qkv_o_proj": qkv + o, "attention": causal_attn, "mlp": 3 * h * inter}

    out, extra = {}, {}
    sizes = args.sizes
    for name in args.cost_models:
        parts = empty()
        if name == "llama":
            add(parts, full_layer(sizes["llama"]), args.llama_layers)
        elif name == "v1":
            add(parts, full_layer(sizes["v1"]), 2)
            geo = v1_geometry(L, args.ef_segment_length, args.ef_segment_overlap)
            w, slots = geo["window_tokens"], geo["slots"]
            per_cycle = {
                "qkv_o_proj": 2 * qkv + o * slots / L,
                "attention": 2 * heads * d * geo["windows"] * w * (w + 1) / 2 / L,
                "mlp": 3 * h * sizes["v1"] * slots / L,
            }
            add(parts, per_cycle, args.ef_cycles)
            extra["v1"] = dict(geo, coverage=slots / L)
        else:  # v2
            inter = sizes["v2"]
            add(parts, full_layer(inter))  # Level 1
            geo = v2_geometry(L, args.v2_segment_length, args.v2_num_blocks)
            S, slots = geo["segment_tokens"], geo["slots"]
            per_cycle = {
                "qkv_o_proj": (qkv + o) * slots / L,
                "attention": 2 * heads * d * geo["computed_segments"] * S * (S + 1) / 2 / L,
                "mlp": 3 * h * inter * slots / L,
            }
            add(parts, per_cycle, args.v2_ef_cycles)
            k, experts = args.moa_top_k, args.moa_experts
            expert_heads = heads // k
            moa_kv = expert_heads * kv_heads // heads
            add(
                parts,
                {
                    "qkv_o_proj": h * experts + 2 * h * moa_kv * d + 2 * k * h * expert_heads * d,
                    "attention": 2 * k * expert_heads * d * (L + 1) / 2,
                    "mlp": 3 * h * inter,
                },
            )
            extra["v2"] = dict(geo, coverage=slots / L)
        total = sum(parts.values())
        out[name] = {"macs_per_token": total, "fractions": {k: v / total for k, v in parts.items()}}
    if "llama" in out:
        for name in out:
            out[name]["predicted_speedup"] = out["llama"]["macs_per_token"] / out[name]["macs_per_token"]
    out["geometry"] = extra
    return out


# ----------------------------------------------------------------------------------------- timing
def ratio_text(stats, name, key="tokens_per_s"):
    if name == BASELINE or BASELINE not in stats:
        return ""
    return f" ({stats[name][key] / stats[BASELINE][key]:.3f}x)"


def bench_training(args, models, optimizers):
    results = {}
    for seq in args.seq_lens:
        ids = make_batch(args, seq, args.batch_size)
        for model in models.values():
            model.train()
        fns = {name: (lambda m=models[name], o=optimizers[name]: train_step(m, o, ids)) for name in models}
        warmup, repeats = repeats_for(args, seq)
        stats = interleaved(fns, warmup, repeats, clock=args.timer, device=args.device)
        for name in models:
            stats[name]["tokens_per_s"] = args.batch_size * seq / stats[name]["median_s"]
        results[seq] = stats
        print(
            f"  train seq={seq:<6d} "
            + "   ".join(f"{n} {stats[n]['tokens_per_s']:9.1f} tok/s{ratio_text(stats, n)}" for n in models),
            flush=True,
        )
    return results


def bench_generation(args, models):
    prompt = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
    mask = torch.ones_like(prompt)
    n = args.gen_new_tokens
    outputs = {}

    def generate(model, name):
        outputs[name] = greedy_generate(args, model, prompt, num_beams=1, use_cache=True)

    def prefill(model):
        model(input_ids=prompt, attention_mask=mask, use_cache=True, logits_to_keep=1)

    for model in models.values():
        model.eval()
    with torch.inference_mode():
        gen = interleaved(
            {k: (lambda m=m, k=k: generate(m, k)) for k, m in models.items()},
            1,
            args.gen_repeats,
            clock=args.timer,
            device=args.device,
        )
        pre = interleaved(
            {k: (lambda m=m: prefill(m)) for k, m in models.items()},
            1,
            args.gen_repeats,
            clock=args.timer,
            device=args.device,
        )
    results = {}
    for name in models:
        assert outputs[name].shape == (args.gen_batch_size, args.gen_prompt_len + n), outputs[name].shape
        total, prefill_s = gen[name]["median_s"], pre[name]["median_s"]
        results[name] = {
            "generate": gen[name],
            "prefill": pre[name],
            "tokens_per_s": args.gen_batch_size * n / total,
            "prefill_tokens_per_s": args.gen_batch_size * args.gen_prompt_len / prefill_s,
            # Decode-only estimate: generate time minus one prompt forward (the prefill it contains).
            "decode_tokens_per_s": args.gen_batch_size * (n - 1) / (total - prefill_s) if total > prefill_s else None,
        }
    print(
        f"  generate prompt={args.gen_prompt_len} new={n}: "
        + "   ".join(f"{name} {results[name]['tokens_per_s']:.1f} tok/s{ratio_text(results, name)}" for name in models),
        flush=True,
    )
    return results


# ------------------------------------------------------------------------------- MoA micro-benchmark
def bench_moa(args):
    """SLAM v2's Level-3 attention (top-k of E experts, shared K/V) vs. a dense SlamAttention of the same
    hidden size and heads, and the whole layers (attention + SwiGLU MLP + norms). Forward + backward of
    sum(output) w.r.t. the input and the weights, interleaved, medians."""
    from slam_hf.slam_attention import SlamAttention
    from slam_hf.slam_blocks import SlamLayer, SlamMoALayer
    from slam_hf.slam_layers import SlamRotaryEmbedding
    from slam_hf.slam_moa import SlamMixtureOfAttention

    config = make_config("v2", args)
    torch.manual_seed(args.seed)
    device, dtype = args.device, torch_dtype(args)
    modules = {
        "moa_attention": SlamMixtureOfAttention(config, 0),
        "dense_attention": SlamAttention(config, 0),
        "moa_layer": SlamMoALayer(config, 0),
        "dense_layer": SlamLayer(config, 0),
    }
    for m in modules.values():
        m.to(device=device, dtype=dtype).train()
        for p in m.parameters():  # as SlamPreTrainedModel initialises them: normal(0, initializer_range), norms 1
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=config.initializer_range)
            else:
                torch.nn.init.ones_(p)
    rotary = SlamRotaryEmbedding(config.head_dim, config.rope_theta).to(device)
    params = {name: count_parameters(m) for name, m in modules.items()}
    results = {
        "params": params,
        "experts": config.moa_num_experts,
        "top_k": config.moa_top_k,
        "expert_heads": config.moa_expert_heads,
        "moa_kv_heads": config.moa_key_value_heads,
        "seq": {},
    }
    print(
        f"  MoA: {config.moa_num_experts} experts, top-{config.moa_top_k}, {config.moa_expert_heads} query heads per "
        f"expert, {config.moa_key_value_heads} shared K/V heads; dense: {config.num_attention_heads} heads "
        f"(params: MoA attention {params['moa_attention']:,}, dense attention {params['dense_attention']:,})",
        flush=True,
    )
    for seq in args.moa_seq_lens:
        generator = torch.Generator().manual_seed(args.seed + seq)
        x = torch.randn(args.batch_size, seq, args.hidden_size, generator=generator).to(device, dtype)
        x.requires_grad_(True)
        positions = torch.arange(seq, device=device)[None].expand(args.batch_size, -1)
        cos_sin = rotary(positions, dtype)

        def step(module):
            out = module(x, cos_sin, None)
            out = out[0] if isinstance(out, tuple) else out
            out.float().sum().backward()
            x.grad = None
            module.zero_grad(set_to_none=True)

        fns = {name: (lambda m=m: step(m)) for name, m in modules.items()}
        warmup, repeats = repeats_for(args, seq)
        stats = interleaved(fns, max(warmup, 2), max(repeats, args.moa_repeats), clock=args.timer, device=args.device)
        attention_ratio = stats["moa_attention"]["median_s"] / stats["dense_attention"]["median_s"]
        layer_ratio = stats["moa_layer"]["median_s"] / stats["dense_layer"]["median_s"]
        results["seq"][seq] = {"stats": stats, "attention_ratio": attention_ratio, "layer_ratio": layer_ratio}
        print(
            f"  moa seq={seq:<6d} fwd+bwd  attention: MoA {1e3 * stats['moa_attention']['median_s']:8.1f} ms  dense "
            f"{1e3 * stats['dense_attention']['median_s']:8.1f} ms  ratio {attention_ratio:.3f}   layer: MoA "
            f"{1e3 * stats['moa_layer']['median_s']:8.1f} ms  dense {1e3 * stats['dense_layer']['median_s']:8.1f} ms  "
            f"ratio {layer_ratio:.3f}",
            flush=True,
        )
    return results


# ------------------------------------------------------------------------------------- held-out loss
def heldout_args(args):
    """The benchmark's arguments with the small held-out model sizes."""
    small = SimpleNamespace(**vars(args))
    small.hidden_size = args.heldout_hidden_size
    small.num_heads = args.heldout_num_heads
    small.num_kv_heads = None
    small.intermediate_size = args.heldout_intermediate_size
    small.v2_segment_length = args.heldout_v2_segment_length or args.v2_segment_length
    small.seq_lens = [args.heldout_seq_len]
    small.gen_prompt_len, small.gen_new_tokens, small.profile, small.breakdown, small.v2_sweep = 0, 0, 0, 0, None
    small.saved_memory = 0
    return small


def lm_loss_sum(logits, ids):
    """Sum of next-token cross-entropy (no auxiliary terms) and the number of predicted tokens."""
    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"), ids[:, 1:].numel()


def bench_heldout(args):
    import datasets

    from slam_hf.data import group_texts_for_causal_lm, load_default_tokenizer, load_shakespeare_corpus

    datasets.disable_progress_bars()
    small = heldout_args(args)
    tokenizer = load_default_tokenizer()
    small.vocab_size = len(tokenizer)
    names = list(dict.fromkeys(args.heldout_models))
    references = [n for n in (args.match_params_to, "v2", "v1") if n in names]
    small.match_params_to = references[0] if references else "llama"
    if small.match_params_to == "llama":
        small.sizes = {n: small.intermediate_size for n in names}
    else:
        small.sizes = plan_sizes(small, names)

    corpus = load_shakespeare_corpus()
    seq, batch, steps = args.heldout_seq_len, args.heldout_batch_size, args.heldout_steps
    train = torch.tensor(group_texts_for_causal_lm(corpus["train"], tokenizer, seq)["input_ids"])
    valid = torch.tensor(group_texts_for_causal_lm(corpus["validation"], tokenizer, seq)["input_ids"])
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(train), generator=generator) for _ in range(-(-steps * batch // len(train)))])
    order = order[: steps * batch].view(steps, batch)  # the same batches, in the same order, for every model
    eval_batches = list(valid.split(2 * batch))[: args.heldout_eval_batches]
    print(
        f"  held-out: train {train.numel():,} tokens ({len(train)} x {seq}), validation {valid.numel():,} tokens "
        f"(works {', '.join(sorted(set(corpus['validation']['work'])))}); {steps} steps x {batch} x {seq} = "
        f"{steps * batch * seq:,} training tokens per model; hidden {small.hidden_size}, heads {small.num_heads}, "
        f"v2 segment {small.v2_segment_length}, lr {args.heldout_lr} (warmup 10 %, cosine to 10 %)",
        flush=True,
    )
    results = {
        "config": {
            "seq_len": seq,
            "batch_size": batch,
            "steps": steps,
            "training_tokens": steps * batch * seq,
            "hidden_size": small.hidden_size,
            "num_heads": small.num_heads,
            "v2_segment_length": small.v2_segment_length,
            "intermediate_sizes": small.sizes,
            "lr": args.heldout_lr,
            "validation_tokens": valid.numel(),
            "eval_tokens": sum(b.numel() for b in eval_batches),
        },
        "models": {},
    }
    warm = max(1, steps // 10)

    def schedule(step):
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    for name in names:
        torch.manual_seed(args.seed)
        model = CLASSES[name](make_config(name, small)).to(args.device, torch_dtype(args))
        params = count_parameters(model)
        optimizer = make_optimizer(model, lr=args.heldout_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        model.train()
        clock = CLOCKS[args.timer]
        started = clock()
        recent = []
        for step in range(steps):
            ids = train[order[step]].to(args.device)
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            lm = out.loss.detach()
            if getattr(out, "aux_loss", None) is not None:  # v2: training loss = LM loss + coef * aux loss
                lm = lm - model.config.router_aux_loss_coef * out.aux_loss.detach()
            recent = (recent + [float(lm)])[-20:]
        train_s = clock() - started
        model.eval()
        total, count, aux = 0.0, 0, []
        with torch.no_grad():
            for ids in eval_batches:
                ids = ids.to(args.device)
                out = model(input_ids=ids, use_cache=False)
                loss_sum, n = lm_loss_sum(out.logits, ids)
                total, count = total + float(loss_sum), count + n
                if getattr(out, "aux_loss", None) is not None:
                    aux.append(float(out.aux_loss))
        loss = total / count
        results["models"][name] = {
            "params": params,
            "heldout_loss": loss,
            "heldout_ppl": math.exp(loss),
            "train_lm_loss_last20": statistics.mean(recent),
            "train_s": train_s,
            "heldout_router_aux_loss": statistics.mean(aux) if aux else None,
        }
        extra = f", router aux loss {statistics.mean(aux):.3f}" if aux else ""
        print(
            f"  held-out {name:5s} params {params:,}: held-out LM loss {loss:.4f} (ppl {math.exp(loss):.1f}), "
            f"train LM loss (last 20 steps) {statistics.mean(recent):.4f}{extra}; {train_s:.0f} s",
            flush=True,
        )
        del model, optimizer
        gc.collect()
    return results


# ------------------------------------------------------------------------------- v2 segment sweep
def bench_v2_sweep(args):
    """Training tok/s of SLAM v2 with several ef_segment_length values (same weights shapes: the segment
    length has no parameters), against Llama, interleaved."""
    results = {}
    sweep_args = SimpleNamespace(**vars(args))
    sweep_args.cost_models = ["v2", "llama"]
    for seq in args.sweep_seq_lens:
        models = {f"v2 S={s}": build_model("v2", args, segment_length=s) for s in args.v2_sweep}
        models["llama"] = build_model("llama", args)
        optimizers = {k: make_optimizer(m) for k, m in models.items()}
        ids = make_batch(args, seq, args.batch_size)
        fns = {k: (lambda m=models[k], o=optimizers[k]: train_step(m, o, ids)) for k in models}
        warmup, repeats = repeats_for(args, seq)
        stats = interleaved(fns, warmup, repeats, clock=args.timer, device=args.device)
        llama_tps = args.batch_size * seq / stats["llama"]["median_s"]
        rows = {}
        for s in args.v2_sweep:
            tps = args.batch_size * seq / stats[f"v2 S={s}"]["median_s"]
            sweep_args.v2_segment_length = s
            cost = cost_model(sweep_args, seq)
            rows[s] = {
                "tokens_per_s": tps,
                "ratio": tps / llama_tps,
                "predicted": cost["v2"]["predicted_speedup"],
                "batched": cost["geometry"]["v2"]["batched"],
            }
            print(
                f"  sweep seq={seq:<6d} v2 segment {s:<5d} {tps:9.1f} tok/s  ratio vs llama {tps / llama_tps:.3f} "
                f"(predicted {rows[s]['predicted']:.3f}; batched cycle: {rows[s]['batched']})",
                flush=True,
            )
        results[seq] = {"llama_tokens_per_s": llama_tps, "segments": rows}
        del models, optimizers
        gc.collect()
    return results


# ----------------------------------------------------------------------------------------- memory
MEMORY_METHOD = {
    "cuda": (
        "torch.cuda.max_memory_allocated() during one training step (after a warmup step, so weights and AdamW "
        "states already exist; gradients are freed by zero_grad(set_to_none=True) and count in the step), minus "
        "torch.cuda.memory_allocated() just before it; each (model, seq) in a fresh subprocess. 'peak' = that "
        "maximum, including weights and optimizer states."
    ),
    "cpu": (
        "Fresh subprocess per (model, seq) with glibc MALLOC_MMAP_THRESHOLD_=65536 (large tensors are mmap'ed "
        "and returned to the OS on free, so RSS tracks live tensors). After one warmup step (weights and AdamW "
        "states exist; gradients are freed each step and count in the step), gc + malloc_trim, then the "
        "peak-RSS counter is reset (echo 5 > /proc/self/clear_refs) and "
        "one step runs; step delta = VmHWM - VmRSS before the step; 'peak' = VmHWM (whole process, incl. "
        "Python + torch runtime). If clear_refs is unavailable, ru_maxrss is used (then a lower bound)."
    ),
}


def memory_worker(args):
    """Runs in a fresh process: one model, one sequence length (or 'gen'); prints one JSON line."""
    name, seq = args._memory_worker
    model = build_model(name, args)
    mib = 1024 * 1024
    if seq == "gen":
        ids = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
        model.eval()

        def step():
            with torch.inference_mode():
                greedy_generate(args, model, ids)
    else:
        ids = make_batch(args, int(seq), args.batch_size)
        optimizer = make_optimizer(model)
        model.train()

        def step():
            train_step(model, optimizer, ids)

    step()  # warmup: allocates AdamW states, lazy kernels, caches
    synchronize(args.device)
    memory = PeakMemory(args.device, reset=True).start()
    step()
    reading = memory.read()
    result = {"before_mib": reading["before"] / mib, "peak_mib": reading["peak"] / mib}
    result["step_delta_mib"] = reading["delta"] / mib
    if args.device != "cuda":
        result["peak_reset"] = reading["exact"]
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def measure_memory(args, argv, jobs):
    env = dict(os.environ)
    env.update(MALLOC_ENV)
    env["PYTHONPATH"] = os.pathsep.join([_REPO_ROOT] + [x for x in [env.get("PYTHONPATH")] if x])
    results = {}
    for name, seq in jobs:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_memory-worker", name, str(seq)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY_RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"memory worker {name} seq={seq} failed:\n{proc.stdout}\n{proc.stderr}")
        results.setdefault(str(seq), {})[name] = json.loads(line[-1].split(" ", 1)[1])
        r = results[str(seq)][name]
        print(
            f"  memory {name:5s} seq={seq!s:<6} step delta {r['step_delta_mib']:9.1f} MiB   "
            f"peak {r['peak_mib']:9.1f} MiB",
            flush=True,
        )
    return results


# ------------------------------------------------------------------------------ profile, breakdown
def model_parts(name, model):
    """(label, module) of the parts whose forward and backward `breakdown` times (nested parts allowed)."""
    trunk = model.model
    if name == "llama":
        return [(f"layer {i}", layer) for i, layer in enumerate(trunk.layers)]
    if name == "v1":
        return [(f"layers[{i}] {type(layer).__name__}", layer) for i, layer in enumerate(trunk.layers)]
    return [
        ("L1 full layer", trunk.input_layer),
        ("  L1 attention", trunk.input_layer.self_attn),
        ("L2 fusion (all cycles)", trunk.fusion),
        ("L3 MoA layer", trunk.moa_layer),
        ("  L3 MoA attention", trunk.moa_layer.self_attn),
        ("  L3 MLP", trunk.moa_layer.mlp),
    ]


def breakdown(args, models, optimizers, seq):
    """Forward / backward time of each part of one training step, with module hooks (process or wall clock; see
    PartTimer). 'rest' is the step minus the top-level parts: embeddings, final norm, lm_head + loss (forward and
    backward) and the AdamW step."""
    ids = make_batch(args, seq, args.batch_size)
    results = {}
    for name, model in models.items():
        model.train()
        optimizer = optimizers[name]
        with PartTimer(model_parts(name, model), args.timer, args.device) as timer:
            train_step(model, optimizer, ids)  # warmup
            timer.reset()
            total = timed(lambda: train_step(model, optimizer, ids), args.timer, args.device)
        acc, rest = timer.times, total - timer.top_level_seconds()
        results[name] = {"step_s": total, "parts": acc, "rest_s": rest}
        print(f"\n=== breakdown: {name}, one training step at seq {seq}: {1e3 * total:.0f} ms ===")
        print(f"  {'part':<28}{'calls':>6}{'forward ms':>12}{'backward ms':>13}{'share':>8}")
        for label, v in acc.items():
            both = v["forward"] + v["backward"]
            print(
                f"  {label:<28}{v['calls']:>6}{1e3 * v['forward']:>12.1f}{1e3 * v['backward']:>13.1f}"
                f"{100 * both / total:>7.1f}%"
            )
        print(f"  {'rest (embed, lm_head+loss, AdamW)':<46}{1e3 * rest:>13.1f}{100 * rest / total:>7.1f}%")
    return results


def saved_memory(args, models, seq):
    """MiB of tensors that one training forward saves for backward, by the innermost part running when they were
    saved (parameters listed separately): what a training step holds at its peak besides weights, optimizer states
    and short-lived temporaries."""
    ids = make_batch(args, seq, args.batch_size)
    results = {}
    for name, model in models.items():
        model.train()
        totals = saved_for_backward(
            model,
            model_parts(name, model),
            lambda: model(input_ids=ids, labels=ids, use_cache=False),
            "rest (embed, norm, lm_head, loss)",
        )
        results[name] = totals
        print(
            f"\n=== saved for backward: {name}, seq {seq}: {sum(totals.values()):.1f} MiB "
            "(by innermost part: an indented part's MiB are not in its parent's) ==="
        )
        for label, mib in totals.items():
            print(f"  {label:<36}{mib:9.1f} MiB")
        model.zero_grad(set_to_none=True)
    return results


def breakdown_generate(args, models):
    """Forward time of each part during one generate() (prefill + decode; inner parts are nested)."""
    prompt = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
    results = {}
    for name, model in models.items():
        model.eval()
        parts = [("model forward (all calls)", model)] + model_parts(name, model)
        with torch.inference_mode(), PartTimer(parts, args.timer, args.device, backward=False) as timer:
            greedy_generate(args, model, prompt)
            timer.reset()
            total = timed(lambda: greedy_generate(args, model, prompt), args.timer, args.device)
        acc = {label: v["forward"] for label, v in timer.times.items()}
        results[name] = {"generate_s": total, "parts_s": acc}
        print(
            f"\n=== generate breakdown: {name}, {args.gen_prompt_len} + {args.gen_new_tokens} tokens: "
            f"{1e3 * total:.0f} ms ==="
        )
        for label, sec in acc.items():
            print(f"  {label:<36}{1e3 * sec:9.1f} ms {100 * sec / total:6.1f}%")
    return results


def profile_step(args, models, optimizers, seq):
    ids = make_batch(args, seq, args.batch_size)
    tables = {}
    for name, model in models.items():
        optimizer = optimizers[name]
        model.train()
        train_step(model, optimizer, ids)
        synchronize(args.device)
        table, sort_by = profile_table(lambda: train_step(model, optimizer, ids), args.device, args.profile_rows)
        tables[name] = table
        print(f"\n=== torch.profiler: {name}, one training step at seq {seq} (sorted by {sort_by}) ===")
        print(table)
    return tables


def profile_generate(args, models):
    prompt = make_batch(args, args.gen_prompt_len, args.gen_batch_size, salt=7)
    tables = {}
    for name, model in models.items():
        model.eval()
        with torch.inference_mode():
            greedy_generate(args, model, prompt)
            table, _ = profile_table(lambda: greedy_generate(args, model, prompt), args.device, args.profile_rows)
        tables[name] = table
        print(f"\n=== torch.profiler: {name}, generate {args.gen_prompt_len} + {args.gen_new_tokens} tokens ===")
        print(table)
    return tables


# ----------------------------------------------------------------------------------------- report
def fmt_ratio(x):
    return f"{x:6.3f}x" if x is not None else "    n/a"


def report(args, params, costs, train, memory, gen, moa, heldout):
    names = list(args.models)
    others = [n for n in names if n != BASELINE]
    has_base = BASELINE in names
    verdicts = {}
    rows = []  # (metric, values per model, ratios per non-baseline model, notes)

    def check(ratio, target, op):
        if target is None or ratio is None:
            return None
        return {">=": ratio >= target, "<=": ratio <= target, "<": ratio < target}[op]

    for seq, stats in (train or {}).items():
        values = {n: f"{stats[n]['tokens_per_s']:.1f}" for n in names}
        ratios, notes = {}, []
        for n in others:
            if not has_base:
                continue
            r = stats[n]["tokens_per_s"] / stats[BASELINE]["tokens_per_s"]
            ratios[n] = r
            best = stats[BASELINE]["min_s"] / stats[n]["min_s"]
            target = TARGETS.get(n, {}).get("speed", {}).get(seq)
            ok = check(r, target, ">=")
            if ok is not None:
                verdicts[f"{n}_train_speed@{seq} (>={target:.2f})"] = ok
                notes.append(f"{n} >={target:.2f} {'PASS' if ok else 'FAIL'}")
            notes.append(f"{n} min-time {best:.3f}")
        rows.append((f"train tok/s @{seq}", values, ratios, "  ".join(notes)))
    for seq, stats in (memory or {}).items():
        label = "generate" if seq == "gen" else f"train @{seq}"
        for key, title in (("step_delta_mib", "step mem MiB"), ("peak_mib", "  process peak MiB")):
            values = {n: f"{stats[n][key]:.1f}" for n in names}
            ratios, notes = {}, []
            for n in others:
                if not has_base or stats[BASELINE][key] <= 0:
                    continue
                r = stats[n][key] / stats[BASELINE][key]
                ratios[n] = r
                target = TARGETS.get(n, {}).get("memory", {}).get(int(seq)) if seq != "gen" else None
                if target is not None and key == "step_delta_mib":
                    ok = check(r, *target)
                    verdicts[f"{n}_train_memory@{seq} ({target[1]}{target[0]:.2f})"] = ok
                    notes.append(f"{n} {target[1]}{target[0]:.2f} {'PASS' if ok else 'FAIL'}")
            if key == "peak_mib" and seq == "gen":
                continue
            rows.append((f"{title} {label}", values, ratios, "  ".join(notes)))
    if gen:
        for key, title in (
            ("tokens_per_s", "generate tok/s"),
            ("prefill_tokens_per_s", "  prompt prefill tok/s"),
            ("decode_tokens_per_s", "  decode-only tok/s (est.)"),
        ):
            if not all(gen[n][key] for n in names):
                continue
            values = {n: f"{gen[n][key]:.1f}" for n in names}
            ratios = {n: gen[n][key] / gen[BASELINE][key] for n in others if has_base}
            rows.append((title, values, ratios, ""))

    width = 30 + 12 * len(names) + 10 * (len(others) if has_base else 0)
    print("\n" + "=" * width)
    print("SLAM vs Llama at equal parameter count  (ratio = model / llama; >1 is better for tok/s, <1 for memory)")
    print("=" * width)
    header = f"{'metric':<30}" + "".join(f"{n:>12}" for n in names)
    if has_base:
        header += "".join(f"{n + '/llama':>10}" for n in others)
    print(header + "  targets")
    print("-" * width)
    for metric, values, ratios, notes in rows:
        line = f"{metric:<30}" + "".join(f"{values[n]:>12}" for n in names)
        if has_base:
            line += "".join(f"{fmt_ratio(ratios.get(n)):>10}" for n in others)
        print(line + ("  " + notes if notes else ""))
    print("-" * width)
    ref = params[args.match_params_to] if args.match_params_to in params else None
    counts = []
    for n in names:
        diff = f" ({100 * (params[n] - ref) / ref:+.2f} %)" if ref and n != args.match_params_to else ""
        counts.append(f"{n} {params[n]:,}{diff}")
    print(
        "params: "
        + ",  ".join(counts)
        + f"   (reference {args.match_params_to}, tolerance ±{100 * args.param_tolerance:.0f} %)"
    )
    print("sizes: " + describe_sizes(args))
    if memory:
        print(f"memory method ({args.device}): {MEMORY_METHOD[args.device]}")
        print("memory targets compare the step delta (activations, gradients, temporaries); weights and AdamW states")
        print("are equal up to the parameter difference, and the process peak adds the Python + torch runtime.")

    print("\nanalytic forward cost per token (MACs; backward ~2x with the same mix). coverage = token slots one EF")
    print("cycle runs o_proj + MLP on / tokens (1.0: each token through one block once):")
    for seq, c in costs.items():
        for n in args.cost_models:
            fr = c[n]["fractions"]
            pred = ""
            if "predicted_speedup" in c[n] and n != BASELINE:
                pred = f"  predicted speedup {c[n]['predicted_speedup']:.3f}x"
            print(
                f"  seq {seq:<6} {n:5s} {c[n]['macs_per_token'] / 1e6:7.2f} M  "
                f"attention {100 * fr['attention']:4.1f} %  mlp {100 * fr['mlp']:4.1f} %  "
                f"qkv/o {100 * fr['qkv_o_proj']:4.1f} %  lm_head {100 * fr['lm_head']:4.1f} %{pred}"
            )
        g = c["geometry"]
        if "v1" in g:
            v = g["v1"]
            print(
                f"  seq {seq:<6} v1 EF windows/cycle {v['windows']} x {v['window_tokens']} tokens "
                f"(stride {v['stride']}, coverage {v['coverage']:.3f})"
            )
            if v["windows"] < 2:
                print(f"  NOTE: at seq {seq} one v1 window holds the whole sequence: EF block B gets no tokens.")
        if "v2" in g:
            v = g["v2"]
            print(
                f"  seq {seq:<6} v2 segments {v['segments']} x {v['segment_tokens']} tokens, computed segment slots "
                f"{v['computed_segments']} per cycle (coverage {v['coverage']:.3f}, "
                f"{'one batched computation' if v['batched'] else 'slots run one block at a time'})"
            )
            if v["segments"] < 2:
                print(f"  NOTE: at seq {seq} one v2 segment holds the whole sequence: Level 2 attends globally.")

    if moa:
        print(
            f"\nMoA micro-benchmark (forward + backward; {moa['experts']} experts, top-{moa['top_k']}, shared K/V; "
            f"params MoA attention {moa['params']['moa_attention']:,} vs dense {moa['params']['dense_attention']:,}):"
        )
        for seq, r in moa["seq"].items():
            ok = r["attention_ratio"] <= MOA_TARGET
            verdicts[f"moa_vs_dense_attention@{seq} (<={MOA_TARGET:.2f})"] = ok
            print(
                f"  seq {seq:<6} attention MoA/dense {r['attention_ratio']:.3f}x  <={MOA_TARGET:.2f} "
                f"{'PASS' if ok else 'FAIL'}   whole layer (attention + MLP) MoA/dense {r['layer_ratio']:.3f}x"
            )
    if heldout:
        cfg = heldout["config"]
        print(
            f"\nheld-out LM loss (validation works, {cfg['eval_tokens']:,} tokens) after {cfg['training_tokens']:,} "
            f"training tokens ({cfg['steps']} steps x {cfg['batch_size']} x {cfg['seq_len']}), hidden "
            f"{cfg['hidden_size']}; v2 without the router aux term:"
        )
        hm = heldout["models"]
        for n, r in hm.items():
            delta = ""
            if n != BASELINE and BASELINE in hm:
                delta = f"  ({r['heldout_loss'] - hm[BASELINE]['heldout_loss']:+.4f} vs llama)"
            print(
                f"  {n:5s} params {r['params']:,}  held-out loss {r['heldout_loss']:.4f}  "
                f"ppl {r['heldout_ppl']:.1f}{delta}"
            )

    spreads = [st["max_s"] / st["min_s"] for stats in (train or {}).values() for st in stats.values()]
    if gen:
        spreads += [gen[n][part]["max_s"] / gen[n][part]["min_s"] for n in names for part in ("generate", "prefill")]
    if spreads and max(spreads) > 1.5:
        print(
            f"\nWARNING: repeated timings differ by up to {max(spreads):.1f}x (max/min): the machine was disturbed and "
            "the medians are unreliable. Rerun on an idle machine, with more --repeats, or (CPU) --threads 1 "
            "--timer process."
        )
    if verdicts:
        print("\ntargets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items()))
    return rows, verdicts


def describe_sizes(args):
    parts = []
    for n in args.models:
        if n == "llama":
            parts.append(f"llama {args.llama_layers} layers, intermediate {args.sizes[n]}")
        elif n == "v1":
            parts.append(
                f"v1 {2 + 2 * args.ef_cycles} layers (ef_cycles {args.ef_cycles}, window {args.ef_segment_length}, "
                f"overlap {args.ef_segment_overlap}), intermediate {args.sizes[n]}"
            )
        else:
            parts.append(
                f"v2 1 full + {args.v2_num_blocks} shared blocks x {args.v2_ef_cycles} cycles (segment "
                f"{args.v2_segment_length}) + MoA ({args.moa_experts} experts, top-{args.moa_top_k}), "
                f"intermediate {args.sizes[n]}"
            )
    return "; ".join(parts)


def environment(args):
    env = {
        **software_versions(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "device": args.device,
        "dtype": args.dtype,
        "attn": args.attn,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
    }
    if load_average() is not None:
        env["loadavg_at_start"] = load_average()
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def ratios_over_llama(args, train, memory, gen):
    """Every measured ratio model / llama, by metric, for the JSON file."""
    ratios = {}
    if BASELINE not in args.models:
        return ratios
    for n in args.models:
        if n == BASELINE:
            continue
        r = ratios[n] = {}
        for seq, stats in (train or {}).items():
            r[f"train_tokens_per_s@{seq}"] = stats[n]["tokens_per_s"] / stats[BASELINE]["tokens_per_s"]
            r[f"train_tokens_per_s_min_time@{seq}"] = stats[BASELINE]["min_s"] / stats[n]["min_s"]
        for seq, stats in (memory or {}).items():
            if stats[BASELINE]["step_delta_mib"] > 0:
                r[f"step_memory@{seq}"] = stats[n]["step_delta_mib"] / stats[BASELINE]["step_delta_mib"]
        if gen:
            for key in ("tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
                if gen[n][key] and gen[BASELINE][key]:
                    r[f"generate_{key}"] = gen[n][key] / gen[BASELINE][key]
    return ratios


def write_json(args, env, params, costs, sections, verdicts, elapsed):
    train, memory, gen = sections["train"], sections["memory"], sections["generate"]
    ratios = ratios_over_llama(args, train, memory, gen)
    payload = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "environment": env,
        "parameters": params,
        "cost_model": {str(k): v for k, v in costs.items()},
        "train": {str(k): v for k, v in (train or {}).items()},
        "memory": memory,
        "memory_method": MEMORY_METHOD[args.device],
        **{key: sections[key] for key in ("generate", "moa", "heldout", "v2_sweep")},
        **{key: sections[key] for key in ("breakdown", "breakdown_generate", "saved_for_backward_mib")},
        "ratios_over_llama": ratios,
        "targets": verdicts,
        "profile_tables": sections["profile_tables"],
        "profile_generate_tables": sections["profile_generate_tables"],
        "elapsed_s": elapsed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"wrote {args.json_out}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    needed = list(dict.fromkeys(args.models + [args.match_params_to] + (["v2", "llama"] if args.v2_sweep else [])))
    args.sizes = plan_sizes(args, needed)
    args.cost_models = list(args.models)
    if args._memory_worker:
        return memory_worker(args)
    started = time.perf_counter()
    env = environment(args)
    print(
        f"torch {env['torch']}  transformers {env['transformers']}  device {args.device}  dtype {args.dtype}  "
        f"attn {args.attn}  torch threads {env['torch_num_threads']} (interop {env['torch_num_interop_threads']}), "
        f"cpus {env['cpu_count']}" + (f", gpu {env['gpu']}" if "gpu" in env else "")
    )
    if "loadavg_at_start" in env:
        load = env["loadavg_at_start"][0]
        busy = load > 0.5 * (os.cpu_count() or 1)
        hint = "  WARNING: machine is busy, timings will be noisy (consider --threads 1 --timer process)"
        print(f"load average {load:.2f}" + (hint if busy and args.device == "cpu" else ""))
    print(
        f"models: hidden {args.hidden_size}, heads {args.num_heads} (kv {args.num_kv_heads or args.num_heads}), "
        f"vocab {args.vocab_size}, SwiGLU, pre-RMSNorm, RoPE, tied embeddings; {describe_sizes(args)}; "
        f"batch {args.batch_size}, warmup {args.warmup}/{args.long_warmup}, repeats {args.repeats}/{args.long_repeats} "
        f"(short/long >= {args.long_seq}), seed {args.seed}, timer {args.timer}"
    )

    models = {name: build_model(name, args) for name in args.models}
    params = {name: count_parameters(m) for name, m in models.items()}
    ref = _params_at(args.match_params_to, args, args.sizes[args.match_params_to])
    for name, p in params.items():
        if abs(p - ref) / ref > args.param_tolerance:
            raise SystemExit(f"parameter counts differ by more than ±{100 * args.param_tolerance:.0f} %: {params}")
    print("params: " + ",  ".join(f"{n} {p:,} ({100 * (p - ref) / ref:+.2f} %)" for n, p in params.items()))

    costs = {seq: cost_model(args, seq) for seq in args.seq_lens}
    train = memory = gen = tables = gen_tables = moa = heldout = sweep = parts = gen_parts = saved = None
    optimizers = {name: make_optimizer(m) for name, m in models.items()}
    if not args.no_train:
        print("training throughput (forward + backward + AdamW step):", flush=True)
        train = bench_training(args, models, optimizers)
    if not args.no_generate:
        print("generation throughput (greedy, KV cache):", flush=True)
        gen = bench_generation(args, models)
    if args.breakdown:
        parts = breakdown(args, models, optimizers, args.breakdown)
    if args.breakdown_generate:
        gen_parts = breakdown_generate(args, models)
    if args.saved_memory:
        saved = saved_memory(args, models, args.saved_memory)
    if args.profile:
        tables = profile_step(args, models, optimizers, args.profile)
    if args.profile_generate:
        gen_tables = profile_generate(args, models)
    del models, optimizers
    gc.collect()
    if "v2" in args.models and not args.no_moa:
        print("MoA micro-benchmark (SLAM v2 Level-3 attention vs dense attention of the same width):", flush=True)
        moa = bench_moa(args)
    if args.v2_sweep:
        print("SLAM v2 segment-length sweep (training tok/s):", flush=True)
        sweep = bench_v2_sweep(args)
    if args.heldout_steps:
        print("held-out loss (Shakespeare corpus, validation = held-out works):", flush=True)
        heldout = bench_heldout(args)
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the memory subprocesses need the GPU memory this process cached
    if not args.no_memory:
        print("peak memory (fresh subprocess per measurement):", flush=True)
        jobs = [(name, seq) for seq in args.seq_lens for name in args.models]
        if not args.no_generate:
            jobs += [(name, "gen") for name in args.models]
        memory = measure_memory(args, argv, jobs)

    rows, verdicts = report(args, params, costs, train, memory, gen, moa, heldout)
    elapsed = time.perf_counter() - started
    print(f"\ntotal time {elapsed:.1f} s")
    if args.json_out:
        sections = {
            "train": train,
            "memory": memory,
            "generate": gen,
            "moa": moa,
            "heldout": heldout,
            "v2_sweep": sweep,
        }
        sections.update(breakdown=parts, breakdown_generate=gen_parts, saved_for_backward_mib=saved)
        sections.update(profile_tables=tables, profile_generate_tables=gen_tables)
        write_json(args, env, params, costs, sections, verdicts, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
