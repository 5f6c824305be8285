"""Held-out LM loss after the same number of training tokens on the Shakespeare corpus: small models train on the
same batches in the same order, then report the mean next-token cross-entropy over the held-out works (for SLAM v2
without the router aux term, which it still trains on)."""

import gc
import math
import statistics
from types import SimpleNamespace

import torch
from torch.nn import functional as F

from slam_hf.bench.measure import CLOCKS, count_parameters

from .slam_vs_llama import CLASSES, make_config, make_optimizer, plan_sizes, torch_dtype


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


def warmup_cosine(steps):
    """LR factor: linear warmup over 10 % of the steps, then cosine decay to 10 %."""
    warm = max(1, steps // 10)

    def schedule(step):
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def small_models(args, tokenizer):
    """The held-out arguments, with the vocabulary of the tokenizer and matched intermediate sizes."""
    small = heldout_args(args)
    small.vocab_size = len(tokenizer)
    names = list(dict.fromkeys(args.heldout_models))
    references = [n for n in (args.match_params_to, "v2", "v1") if n in names]
    small.match_params_to = references[0] if references else "llama"
    if small.match_params_to == "llama":
        small.sizes = {n: small.intermediate_size for n in names}
    else:
        small.sizes = plan_sizes(small, names)
    return small, names


def corpus_batches(args, tokenizer):
    """(corpus, train rows, validation rows, training order (steps, batch), validation batches)."""
    from slam_hf.data import group_texts_for_causal_lm, load_shakespeare_corpus

    corpus = load_shakespeare_corpus()
    seq, batch, steps = args.heldout_seq_len, args.heldout_batch_size, args.heldout_steps
    train = torch.tensor(group_texts_for_causal_lm(corpus["train"], tokenizer, seq)["input_ids"])
    valid = torch.tensor(group_texts_for_causal_lm(corpus["validation"], tokenizer, seq)["input_ids"])
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(train), generator=generator) for _ in range(-(-steps * batch // len(train)))])
    order = order[: steps * batch].view(steps, batch)  # the same batches, in the same order, for every model
    eval_batches = list(valid.split(2 * batch))[: args.heldout_eval_batches]
    return corpus, train, valid, order, eval_batches


def train_model(args, model, train, order):
    """Trains for --heldout-steps steps; returns the mean LM loss of the last 20 steps and the training time."""
    optimizer = make_optimizer(model, lr=args.heldout_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.heldout_steps))
    model.train()
    clock = CLOCKS[args.timer]
    started = clock()
    recent = []
    for step in range(args.heldout_steps):
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
    return statistics.mean(recent), clock() - started


@torch.no_grad()
def evaluate(args, model, eval_batches):
    """Mean next-token cross-entropy over the validation batches, and the router aux losses (v2)."""
    model.eval()
    total, count, aux = 0.0, 0, []
    for ids in eval_batches:
        ids = ids.to(args.device)
        out = model(input_ids=ids, use_cache=False)
        loss_sum, n = lm_loss_sum(out.logits, ids)
        total, count = total + float(loss_sum), count + n
        if getattr(out, "aux_loss", None) is not None:
            aux.append(float(out.aux_loss))
    return total / count, aux


def bench_heldout(args):
    import datasets

    from slam_hf.data import load_default_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_default_tokenizer()
    small, names = small_models(args, tokenizer)
    corpus, train, valid, order, eval_batches = corpus_batches(args, tokenizer)
    seq, batch, steps = args.heldout_seq_len, args.heldout_batch_size, args.heldout_steps
    print(
        f"  held-out: train {train.numel():,} tokens ({len(train)} x {seq}), validation {valid.numel():,} tokens "
        f"(works {', '.join(sorted(set(corpus['validation']['work'])))}); {steps} steps x {batch} x {seq} = "
        f"{steps * batch * seq:,} training tokens per model; hidden {small.hidden_size}, heads {small.num_heads}, "
        f"v2 segment {small.v2_segment_length}, lr {args.heldout_lr} (warmup 10 %, cosine to 10 %)",
        flush=True,
    )
    config = {
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
    }
    results = {"config": config, "models": {}}
    for name in names:
        torch.manual_seed(args.seed)
        model = CLASSES[name](make_config(name, small)).to(args.device, torch_dtype(args))
        params = count_parameters(model)
        train_loss, train_s = train_model(args, model, train, order)
        loss, aux = evaluate(args, model, eval_batches)
        results["models"][name] = {
            "params": params,
            "heldout_loss": loss,
            "heldout_ppl": math.exp(loss),
            "train_lm_loss_last20": train_loss,
            "train_s": train_s,
            "heldout_router_aux_loss": statistics.mean(aux) if aux else None,
        }
        extra = f", router aux loss {statistics.mean(aux):.3f}" if aux else ""
        print(
            f"  held-out {name:5s} params {params:,}: held-out LM loss {loss:.4f} (ppl {math.exp(loss):.1f}), "
            f"train LM loss (last 20 steps) {train_loss:.4f}{extra}; {train_s:.0f} s",
            flush=True,
        )
        del model
        gc.collect()
    return results
