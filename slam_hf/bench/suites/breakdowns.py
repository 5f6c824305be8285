"""Where the time and memory of a training step or a generate call go: per-part forward / backward times from
module hooks (--breakdown, --breakdown-generate), the tensors saved for backward by part (--saved-memory) and
torch.profiler tables (--profile, --profile-generate)."""

import torch

from slam_hf.bench.diagnostics import PartTimer, profile_table, saved_for_backward
from slam_hf.bench.measure import synchronize, timed

from .slam_vs_llama import greedy_generate, make_batch, train_step


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
