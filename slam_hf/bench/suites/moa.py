"""The MoA micro-benchmark: SLAM v2's Level-3 attention (top-k of E experts, shared K/V) vs. a dense SlamAttention
of the same hidden size and heads, and the whole layers (attention + SwiGLU MLP + norms). Forward + backward of
sum(output) w.r.t. the input and the weights, interleaved, medians."""

import torch

from slam_hf.bench.measure import count_parameters, interleaved
from slam_hf.slam_attention import SlamAttention
from slam_hf.slam_blocks import SlamLayer, SlamMoALayer
from slam_hf.slam_layers import SlamRotaryEmbedding
from slam_hf.slam_moa import SlamMixtureOfAttention

from .slam_vs_llama import make_config, repeats_for, torch_dtype


def build_modules(args):
    """The four timed modules, initialised as SlamPreTrainedModel does: normal(0, initializer_range), norms 1."""
    config = make_config("v2", args)
    torch.manual_seed(args.seed)
    modules = {
        "moa_attention": SlamMixtureOfAttention(config, 0),
        "dense_attention": SlamAttention(config, 0),
        "moa_layer": SlamMoALayer(config, 0),
        "dense_layer": SlamLayer(config, 0),
    }
    for m in modules.values():
        m.to(device=args.device, dtype=torch_dtype(args)).train()
        for p in m.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=config.initializer_range)
            else:
                torch.nn.init.ones_(p)
    return config, modules


def time_modules(args, modules, rotary, seq):
    """Interleaved forward + backward medians of every module at one sequence length."""
    device, dtype = args.device, torch_dtype(args)
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
    return interleaved(fns, max(warmup, 2), max(repeats, args.moa_repeats), clock=args.timer, device=args.device)


def bench_moa(args):
    config, modules = build_modules(args)
    rotary = SlamRotaryEmbedding(config.head_dim, config.rope_theta).to(args.device)
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
        stats = time_modules(args, modules, rotary, seq)
        ms = {name: 1e3 * stats[name]["median_s"] for name in modules}
        attention_ratio = stats["moa_attention"]["median_s"] / stats["dense_attention"]["median_s"]
        layer_ratio = stats["moa_layer"]["median_s"] / stats["dense_layer"]["median_s"]
        results["seq"][seq] = {"stats": stats, "attention_ratio": attention_ratio, "layer_ratio": layer_ratio}
        print(
            f"  moa seq={seq:<6d} fwd+bwd  attention: MoA {ms['moa_attention']:8.1f} ms  dense "
            f"{ms['dense_attention']:8.1f} ms  ratio {attention_ratio:.3f}   layer: MoA "
            f"{ms['moa_layer']:8.1f} ms  dense {ms['dense_layer']:8.1f} ms  ratio {layer_ratio:.3f}",
            flush=True,
        )
    return results
