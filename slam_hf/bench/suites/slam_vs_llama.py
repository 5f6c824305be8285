"""SLAM v1 / SLAM v2 vs. a Llama baseline at equal parameter count: the models and how they are matched.

Every SLAM model is configured to match LlamaForCausalLM layer for layer (RMSNorm, pre-norm, SwiGLU, RoPE, no
biases, tied embeddings, same hidden/heads/KV heads/vocab). Parameter counts are matched to one reference model
by solving the other models' SwiGLU intermediate size. Also the batches, the training step and greedy generation
every section of benchmarks/bench_slam_vs_llama.py times."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slam_hf import SlamV1Config, SlamV1ForCausalLM, SlamV2Config, SlamV2ForCausalLM
from slam_hf.bench.measure import count_parameters

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
        attn_implementation=args.attn,
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
    return CONFIGS[name](args, args.sizes[name], **overrides)


def params_at(name, args, intermediate_size):
    with torch.device("meta"):  # shapes only: no memory, no init
        return count_parameters(CLASSES[name](CONFIGS[name](args, intermediate_size)))


def plan_sizes(args, names):
    """Intermediate size per model: the reference keeps --intermediate-size, the others are solved to match
    its parameter count (parameters are affine in the intermediate size), unless given explicitly."""
    ref = args.match_params_to
    explicit = {"v1": args.v1_intermediate_size, "v2": args.v2_intermediate_size, "llama": args.llama_intermediate_size}
    sizes = {ref: explicit[ref] or args.intermediate_size}
    target = params_at(ref, args, sizes[ref])
    for name in names:
        if name in sizes:
            continue
        if explicit[name]:
            sizes[name] = explicit[name]
            continue
        lo, hi = 64, 128
        p_lo, p_hi = params_at(name, args, lo), params_at(name, args, hi)
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
