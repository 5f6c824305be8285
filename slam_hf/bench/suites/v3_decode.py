"""Section 2 of the SLAM v3 benchmark: one decode step at --context tokens of decoder prefix, batch --batch-size, for
SLAM v3 with MLA absorbed (absorb="auto"), MLA expanded (absorb=False), the same decoder with MHA self-attention
(the target's baseline) and Bart, each with transformers' DynamicCache and the two SLAM decoders also with a
preallocated cache (append in place). Every model cross-attends to the same encoder memory; the cache is cropped
back to the prefix after each timed sample. Target: absorbed / MHA <= 1.0."""

import copy
import gc
import os
import statistics

import torch
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutput

from slam_hf.bench.measure import count_parameters, interleave
from slam_hf.slam_compat import output_cache

from .v3_cache import split_cache
from .v3_models import DECODE_TARGET, EQUAL_TOL, set_absorb
from .v3_timing import clock_pair, elapsed, format_ops, set_threads, top_ops

VARIANTS = {  # name -> (model key, absorb setting)
    "MLA absorbed (auto)": ("v3", "auto"),
    "MLA expanded (absorb=False)": ("v3", False),
    "MHA, same decoder": ("v3_mha", None),
    "Bart MHA": ("bart", None),
    "MLA absorbed, prealloc cache": ("v3_prealloc", "auto"),
    "MHA, same decoder, prealloc": ("v3_mha_prealloc", None),
}
BASE = "MHA, same decoder"


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose appends write into a buffer allocated once (no per-step torch.cat of the whole cache and
    no fresh allocation): isolates the attention from DynamicCache's append cost. Benchmark-only."""

    def __init__(self, keys, values, capacity):
        super().__init__()
        batch, heads, length = keys.shape[:3]
        self.key_buffer = keys.new_empty(batch, heads, capacity, keys.shape[-1])
        self.value_buffer = values.new_empty(batch, values.shape[1], capacity, values.shape[-1])
        self.key_buffer[:, :, :length].copy_(keys)
        self.value_buffer[:, :, :length].copy_(values)
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.crop_to(length)

    def crop_to(self, length):
        self.length = length
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[2]:
            raise RuntimeError("PreallocatedLayer is full")
        self.key_buffer[:, :, self.length : end].copy_(key_states)
        self.value_buffer[:, :, self.length : end].copy_(value_states)
        self.crop_to(end)
        return self.keys, self.values


def preallocated_copy(cache, capacity):
    cache = copy.deepcopy(cache)
    self_cache, _ = split_cache(cache)
    self_cache.layers = [PreallocatedLayer(layer.keys, layer.values, capacity) for layer in self_cache.layers]
    return cache


def crop(cache, length):
    self_cache, _ = split_cache(cache)
    for layer in self_cache.layers:
        if isinstance(layer, PreallocatedLayer):
            layer.crop_to(length)
        else:
            layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]


class DecodeSetup:
    """The prefilled caches of every variant and one decode step: a model forward of one new token per sequence,
    with the cache (append, cross-attention, MLP and lm_head included)."""

    def __init__(self, args, models):
        torch.manual_seed(args.seed)
        self.v3, self.context = models["v3"], args.context
        batch, shared = args.batch_size, args.prefill_batch
        if batch % shared:
            raise SystemExit(f"--prefill-batch {shared} must divide --batch-size {batch}")
        prompt = torch.randint(10, args.vocab_size, (shared, args.memory_len))
        prefix = torch.randint(10, args.vocab_size, (shared, self.context))
        self.tokens = torch.randint(10, args.vocab_size, (args.decode_steps, batch, 1))

        set_threads(args.setup_threads)
        start = clock_pair()
        memory = self.v3.get_encoder()(input_ids=prompt).last_hidden_state  # SLAM v3's real encoder output
        self.models = {"v3": self.v3, "v3_mha": models["v3_mha"], "bart": models["bart"]}
        self.caches = {}
        for name, model in self.models.items():
            encoder_outputs = BaseModelOutput(last_hidden_state=memory)
            out = model.model(encoder_outputs=encoder_outputs, decoder_input_ids=prefix, use_cache=True)
            self.caches[name] = output_cache(out)
            self.caches[name].batch_repeat_interleave(batch // shared)  # self- and cross-attention caches
        self.encoder_outputs = BaseModelOutput(last_hidden_state=memory.repeat_interleave(batch // shared, dim=0))
        self.prefill_s = elapsed(start)["wall"]
        set_threads(args.threads)
        for name, cache in self.caches.items():
            self_cache, _ = split_cache(cache)
            assert self_cache.get_seq_length() == self.context and self_cache.layers[0].keys.shape[0] == batch, name

        capacity = self.context + args.decode_steps
        self.caches["v3_prealloc"] = preallocated_copy(self.caches["v3"], capacity)
        self.caches["v3_mha_prealloc"] = preallocated_copy(self.caches["v3_mha"], capacity)
        self.models.update(v3_prealloc=self.v3, v3_mha_prealloc=models["v3_mha"])

    def step(self, key, token):
        return self.models[key](
            encoder_outputs=self.encoder_outputs, decoder_input_ids=token, cache=self.caches[key], use_cache=True
        ).logits[:, -1]

    def select(self, variant):
        """The model key of a variant, with the v3 model's absorb setting switched to it."""
        key, absorb = VARIANTS[variant]
        if absorb is not None:
            set_absorb(self.v3, absorb)
        return key

    def rewind(self, key):
        crop(self.caches[key], self.context)


def check_absorption(setup):
    """Absorbed vs expanded on the same cache: the fast path must compute the same thing."""
    v3 = setup.v3
    auto_absorbs = all(layer.self_attn.use_absorption(1) for layer in v3.model.decoder.layers)
    logits = {}
    for absorb in (True, False):
        set_absorb(v3, absorb)
        logits[absorb] = setup.step("v3", setup.tokens[0])
        setup.rewind("v3")
    max_diff = (logits[True] - logits[False]).abs().max().item()
    scale = logits[False].abs().max().item()
    return {"max_diff": max_diff, "scale": scale, "equal": max_diff <= EQUAL_TOL, "auto_absorbs": auto_absorbs}


class AttentionClock:
    """Time spent inside the decoder self-attention modules (forward hooks), summed over one step."""

    def __init__(self, timer, models):
        self.clock = "proc" if timer == "process" else "wall"
        self.active, self.start, self.total = False, None, 0.0
        self.hooks = []
        for model in models:
            for layer in model.model.decoder.layers:
                self.hooks.append(layer.self_attn.register_forward_pre_hook(self._enter))
                self.hooks.append(layer.self_attn.register_forward_hook(self._leave))

    def _enter(self, module, inputs):
        if self.active:
            self.start = clock_pair()

    def _leave(self, module, inputs, output):
        if self.active:
            self.total += elapsed(self.start)[self.clock]

    def remove(self):
        for hook in self.hooks:
            hook.remove()


def time_variants(args, setup):
    """Interleaved timed samples of every variant (after one warm-up each): step times, user/system CPU seconds,
    and the time inside the self-attention modules per step."""
    attention = AttentionClock(args.timer, (setup.v3, setup.models["v3_mha"], setup.models["bart"]))
    cpu = {name: [0.0, 0.0] for name in VARIANTS}
    attention_times = {name: [] for name in VARIANTS}

    def sample(variant, record=True):
        key = setup.select(variant)
        times = []
        before = os.times()
        attention.active = record
        for s in range(args.decode_steps):
            attention.total = 0.0
            start = clock_pair()
            setup.step(key, setup.tokens[s])
            times.append(elapsed(start))
            if record:
                attention_times[variant].append(attention.total)
        attention.active = False
        after = os.times()
        if record:
            cpu[variant][0] += after.user - before.user
            cpu[variant][1] += after.system - before.system
        setup.rewind(key)
        return times

    for name in VARIANTS:  # warm-up
        sample(name, record=False)
    times = interleave({name: (lambda name=name: sample(name)) for name in VARIANTS}, 0, args.decode_repeats)
    attention.remove()
    return times, cpu, {n: statistics.median(t) for n, t in attention_times.items()}


def profile_variants(setup):
    """Top ops of a decode step of every variant (3 steps profiled, per-step means)."""
    ops = {}
    for name in VARIANTS:
        key = setup.select(name)

        def three_steps():
            for s in range(3):
                setup.step(key, setup.tokens[s])

        ops[name] = [(k, calls / 3, ms / 3, pct) for k, calls, ms, pct in top_ops(three_steps)]
        setup.rewind(key)
    set_absorb(setup.v3, "auto")
    return ops


def report_setup(args, report, setup, check):
    """The configuration lines: sizes, fairness, prefix, parameter counts, the absorbed-vs-expanded check."""
    v3, v3_mha, bart = setup.v3, setup.models["v3_mha"], setup.models["bart"]
    report(
        f"hidden {args.hidden_size}, {args.num_heads} heads, {args.decoder_layers} decoder layers, vocab "
        f"{args.vocab_size}; MLA kv_lora_rank {args.kv_lora_rank}, q_lora_rank {args.q_lora_rank}, qk_nope "
        f"{args.qk_nope_head_dim}, qk_rope {args.qk_rope_head_dim}, v {args.v_head_dim}; MHA head_dim "
        f"{args.hidden_size // args.num_heads}, RoPE; fp32, sdpa, {args.threads} thread(s), {args.timer} time"
    )
    report(
        f"fairness: all models cross-attend to the same {args.memory_len}-token memory (SLAM v3's encoder output for a "
        "prompt), its K/V projected once at prefill and cached; the two SLAM decoders share every weight but the "
        "self-attention; one step = model forward of 1 new token per sequence with the cache (DynamicCache append, "
        "cross-attention, MLP, lm_head included), cache cropped back to the prefix after each sample"
    )
    report(
        f"prefix: {args.context} tokens prefilled for {args.prefill_batch} sequence(s), caches repeated to batch "
        f"{args.batch_size} (decode cost depends on shapes, not values; --prefill-batch {args.batch_size} prefills "
        "every row)"
    )
    attn_params = {
        "MLA": count_parameters(v3.model.decoder.layers[0].self_attn),
        "MHA": count_parameters(v3_mha.model.decoder.layers[0].self_attn),
    }
    decoder_params = {
        key: count_parameters(model.model.decoder) + count_parameters(model.lm_head)
        for key, model in (("v3", v3), ("v3_mha", v3_mha), ("bart", bart))
    }
    report(
        f"self-attention params per layer: MLA {attn_params['MLA']:,}, MHA {attn_params['MHA']:,}; decoder + lm_head "
        f"params: SLAM v3 {decoder_params['v3']:,}, same with MHA {decoder_params['v3_mha']:,}, Bart "
        f"{decoder_params['bart']:,} (Bart: biases, learned positions, GELU FFN sized to the GeGLU's parameters)"
    )
    report(f"untimed prefill of all three models ({args.setup_threads} threads): {setup.prefill_s:.1f} s wall")
    report(
        f"absorbed vs expanded logits, same cache: max |diff| {check['max_diff']:.2e} (max |logit| "
        f"{check['scale']:.2e}) <= {EQUAL_TOL:g}: {'OK' if check['equal'] else 'FAIL'}; absorb='auto' absorbs at 1 "
        f"query: {check['auto_absorbs']}"
    )
    return attn_params, decoder_params


def report_table(report, median, fastest, cpu, attention_median, steps):
    report(
        f"{'variant':<32}{'ms/step':>9}{'min':>9}{'vs MHA':>8}{'vs Bart':>9}{'self-attn ms':>14}{'vs MHA':>8}"
        f"{'user/sys %':>12}  (medians over {steps} steps)"
    )
    for name in VARIANTS:
        user, system = cpu[name]
        split = f"{100 * user / max(user + system, 1e-9):.0f}/{100 * system / max(user + system, 1e-9):.0f}"
        mha_attention = attention_median["MHA, same decoder, prealloc" if "prealloc" in name else BASE]
        report(
            f"{name:<32}{median[name] * 1e3:>9.2f}{fastest[name] * 1e3:>9.2f}{median[name] / median[BASE]:>8.3f}"
            f"{median[name] / median['Bart MHA']:>9.3f}{attention_median[name] * 1e3:>14.2f}"
            f"{attention_median[name] / mha_attention:>8.3f}{split:>12}"
        )
    report(
        "self-attn ms = time inside the decoder self-attention modules (all layers, cache append included; forward "
        "hooks); its 'vs MHA' compares like caches (prealloc with prealloc)"
    )


@torch.no_grad()
def section_decode(args, report, models):
    report("\n" + "=" * 100)
    report(
        f"2. Decode step at {args.context} tokens of decoder context, batch {args.batch_size} "
        f"({args.decode_steps} steps per sample, {args.decode_repeats} samples + 1 warm-up per variant)"
    )
    report("=" * 100)
    setup = DecodeSetup(args, models)
    check = check_absorption(setup)
    times, cpu, attention_median = time_variants(args, setup)
    clock = "proc" if args.timer == "process" else "wall"
    median = {n: statistics.median(t[clock] for t in ts) for n, ts in times.items()}
    fastest = {n: min(t[clock] for t in ts) for n, ts in times.items()}
    ops = profile_variants(setup)

    attn_params, decoder_params = report_setup(args, report, setup, check)
    report_table(report, median, fastest, cpu, attention_median, len(times[BASE]))
    ratio = median["MLA absorbed (auto)"] / median[BASE]
    ok = ratio <= DECODE_TARGET and check["equal"]
    prealloc_ratio = median["MLA absorbed, prealloc cache"] / median["MHA, same decoder, prealloc"]
    prealloc_ok = prealloc_ratio <= DECODE_TARGET and check["equal"]
    report(f"absorbed / expanded: {median['MLA absorbed (auto)'] / median['MLA expanded (absorb=False)']:.3f}")
    report(
        f"target: absorbed / MHA = {ratio:.3f} <= {DECODE_TARGET:.2f}: {'PASS' if ok else 'MISS'} (transformers' "
        f"DynamicCache, what generate uses); with both caches preallocated (no append copy) {prealloc_ratio:.3f}: "
        f"{'PASS' if prealloc_ok else 'MISS'}"
    )
    report("top ops of a decode step (self CPU time per step, mean of 3 profiled steps):")
    for name in VARIANTS:
        report(f"  {name}: {format_ops(ops[name])}")
    prefill_s = setup.prefill_s
    del setup
    gc.collect()
    return {
        "median_s": median,
        "min_s": fastest,
        "samples": {n: [t[clock] for t in ts] for n, ts in times.items()},
        "user_system_s": cpu,
        "self_attention_median_s": attention_median,
        "top_ops": ops,
        "max_abs_diff_absorbed_vs_expanded": check["max_diff"],
        "max_abs_logit": check["scale"],
        "auto_absorbs_at_one_query": check["auto_absorbs"],
        "ratio": ratio,
        "pass": ok,
        "ratio_preallocated": prealloc_ratio,
        "pass_preallocated": prealloc_ok,
        "attention_params_per_layer": attn_params,
        "decoder_params": decoder_params,
        "prefill_wall_s": prefill_s,
    }
