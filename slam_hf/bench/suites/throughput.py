"""Training and generation throughput of the compared models, interleaved step by step (order reversed every
round) so that a noisy, shared machine shifts all alike, and the SLAM v2 segment-length sweep."""

import gc
from types import SimpleNamespace

import torch

from slam_hf.bench.measure import interleaved

from .cost_model import cost_model
from .slam_vs_llama import BASELINE, build_model, greedy_generate, make_batch, make_optimizer, repeats_for, train_step


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
