"""SLAM v2: the shared suite, plus the cyclic segment fusion (routing proven with hooks, against a naive
per-segment loop, one batched computation per cycle), the mixture of attention experts against a naive
per-token loop, its router outputs and balancing loss, adapters, disk offload and the cache layout."""

import pytest
import torch
from slam_common import (
    ATOL,
    SlamModelTesterMixin,
    described,
    expected_inv_freq,
    output_cache,
    single_threaded_torch,
)
from slam_tester import SlamV2ModelTester
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from slam_hf.slam_blocks import SlamLayer
from slam_hf.slam_windows import plan_segments


class TestSlamV2Model(SlamModelTesterMixin):  # pytest collects `Test*` classes only
    model_tester_class = SlamV2ModelTester


single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)

NUM_BLOCKS = 4  # DESIGN §4: four shared blocks, four segments per rotation
PRE_NORM = dict(norm_position="pre", mlp_type="swiglu", norm_type="rmsnorm")


@pytest.fixture(scope="module")
def tester():
    return SlamV2ModelTester()


# ------------------------------------------------------------------------- shared helpers ----
def reference_rope(positions, head_dim, theta):
    """(cos, sin) of shape (len(positions), head_dim), written out: angle = position * theta^(-2i/d)."""
    angles = torch.as_tensor(positions, dtype=torch.float32)[:, None] * expected_inv_freq(head_dim, theta)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(vectors, cos, sin):
    """RoPE on (..., tokens, head_dim): pairs (i, i + d/2) rotate by the angle of frequency i."""
    first, second = vectors.chunk(2, dim=-1)
    return vectors * cos + torch.cat([-second, first], dim=-1) * sin


def real_spans(attention_mask, batch, length):
    """Per row: (index of the first real token, number of real tokens)."""
    if attention_mask is None:
        return [(0, length)] * batch
    spans = []
    for row in attention_mask.bool():
        real = row.nonzero().flatten()
        spans.append((int(real[0]), real.numel()))
    return spans


class FusionRecorder:
    """Forward pre-hook and hook on the fusion module: per cycle, its inputs, plan and output."""

    def __init__(self, fusion):
        self.cycles = []
        self.current = None
        self.handles = [
            fusion.register_forward_pre_hook(self.before, with_kwargs=True),
            fusion.register_forward_hook(self.after, with_kwargs=True),
        ]

    def before(self, module, args, kwargs):
        hidden_states, original_inputs, position_embeddings = args
        self.current = kwargs["cycle"]
        self.cycles.append(
            dict(
                cycle=kwargs["cycle"],
                hidden_states=hidden_states,
                original_inputs=original_inputs,
                position_embeddings=position_embeddings,
                plan=kwargs["segment_plan"],
            )
        )

    def after(self, module, args, kwargs, output):
        self.cycles[-1]["output"] = output

    def remove(self):
        for handle in self.handles:
            handle.remove()


def run_recorded(model, **inputs):
    recorder = FusionRecorder(model.base_model.fusion)
    try:
        with torch.no_grad():
            outputs = model(**inputs)
    finally:
        recorder.remove()
    return outputs, recorder


# ------------------------------------------------------------- 1. routing, proven by hooks ----
class BlockRecorder:
    """Hooks on q_proj (input) and mlp_norm (output) of every fusion block, tagged with the current cycle.

    A hooked sub-module is not stackable, so the fusion calls it as a module once per (cycle, slot).
    Under post-norm, q_proj's input is the block input h_s + x_s and mlp_norm's output the block output.
    """

    def __init__(self, fusion, cycle_source):
        self.calls = []  # (cycle, block, "in" | "out", rows)
        self.handles = []
        for index, block in enumerate(fusion.blocks):
            self.handles.append(block.self_attn.q_proj.register_forward_hook(self.hook(index, "in", cycle_source)))
            self.handles.append(block.mlp_norm.register_forward_hook(self.hook(index, "out", cycle_source)))

    def hook(self, block, kind, cycle_source):
        def record(module, args, output):
            rows = args[0] if kind == "in" else output
            self.calls.append((cycle_source.current, block, kind, rows.detach().clone()))

        return record

    def get(self, cycle, block, kind):
        found = [rows for c, b, k, rows in self.calls if (c, b, k) == (cycle, block, kind)]
        assert len(found) == 1, f"block {block} called {len(found)} times in cycle {cycle} ({kind})"
        return found[0]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def record_blocks(model, **inputs):
    fusion = model.base_model.fusion
    recorder = FusionRecorder(fusion)
    blocks = BlockRecorder(fusion, recorder)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        blocks.remove()
        recorder.remove()
    return recorder, blocks


def test_rotation_proven_by_hooks_published_example(tester):
    """Four full segments, batch 1: slot j holds segment j. Identify, from the data each block receives,
    which segment it processed in every cycle, and check the published example of cycle 2."""
    config = tester.get_config()  # published post-norm defaults, segments of 4 tokens
    assert config.norm_position == "post" and config.ef_cycles == 4
    model = tester.causal_lm_class(config).eval()
    size = config.ef_segment_length
    input_ids = tester.input_ids(batch_size=1, seq_length=NUM_BLOCKS * size)
    recorder, blocks = record_blocks(model, input_ids=input_ids)

    with torch.no_grad():
        x = model.get_input_embeddings()(input_ids)[0]  # the original embedded input (RoPE: no positions added)
    segment = [slice(s * size, (s + 1) * size) for s in range(NUM_BLOCKS)]
    assert len(blocks.calls) == 2 * NUM_BLOCKS * config.ef_cycles  # once per (cycle, block) and hook
    assert [entry["cycle"] for entry in recorder.cycles] == list(range(config.ef_cycles))

    routing = {}
    for entry in recorder.cycles:
        c, h = entry["cycle"], entry["hidden_states"][0]
        assert torch.equal(entry["original_inputs"][0], x), "the fusion must add the embedding output x"
        candidates = [h[segment[s]] + x[segment[s]] for s in range(NUM_BLOCKS)]
        for b in range(NUM_BLOCKS):
            received = blocks.get(c, b, "in")
            distances = [(received - candidate).abs().max().item() for candidate in candidates]
            s = min(range(NUM_BLOCKS), key=distances.__getitem__)
            assert distances[s] <= 1e-6 and sorted(distances)[1] > 1e-2, distances  # one clear match
            routing[c, b] = s
            # The block's output is the cycle's output on that segment.
            torch.testing.assert_close(
                blocks.get(c, b, "out"),
                entry["output"][0, segment[s]],
                rtol=0,
                atol=ATOL,
                msg=described(f"cycle {c} block {b} output"),
            )
    expected = {(c, (s + c) % NUM_BLOCKS): s for c in range(config.ef_cycles) for s in range(NUM_BLOCKS)}
    assert routing == expected

    # Published example: in cycle 2 (c = 1) block A gets block D's cycle-1 output for segment D plus the
    # original input of segment D.
    A, D = 0, 3
    assert routing[1, A] == D and routing[0, D] == D
    torch.testing.assert_close(
        blocks.get(1, A, "in"),
        blocks.get(0, D, "out") + x[segment[D]],
        rtol=0,
        atol=1e-6,
        msg=described("cycle 2, block A"),
    )


@pytest.mark.parametrize("head", ["causal", "bidirectional"])
def test_rotation_proven_by_hooks_any_layout(tester, head):
    """Batch 2 with padding, eleven segments (three groups of slots, the last partly empty): in cycle c, block b
    handles slot (b - c) mod 4, i.e. every segment s with s mod 4 == (b - c) mod 4, whatever the row layout
    (rows gathered by token_index)."""
    config = tester.get_config()
    size = config.ef_segment_length
    model_class = tester.causal_lm_class if head == "causal" else tester.masked_lm_class
    model = model_class(config).eval()
    length = 10 * size + 1
    rows = [tester.input_ids(1, length)[0], tester.input_ids(1, length - 7)[0]]
    input_ids, attention_mask = (tester.left_padded_batch if head == "causal" else tester.right_padded_batch)(rows)
    recorder, blocks = record_blocks(model, input_ids=input_ids, attention_mask=attention_mask)

    plan = plan_segments(attention_mask, 2, 0, length, size, NUM_BLOCKS, head == "causal", "sdpa", "cpu")
    for entry in recorder.cycles:
        c = entry["cycle"]
        inputs = (entry["hidden_states"] + entry["original_inputs"]).flatten(0, 1)
        outputs = entry["output"].flatten(0, 1)
        for b in range(NUM_BLOCKS):
            slot = (b - c) % NUM_BLOCKS
            index, valid = plan.token_index[slot].flatten(), plan.query_valid[slot].flatten()
            what = f"{head}: cycle {c}, block {b}, slot {slot}"
            torch.testing.assert_close(
                blocks.get(c, b, "in")[valid], inputs[index][valid], rtol=0, atol=0, msg=described(what + " input")
            )
            torch.testing.assert_close(
                blocks.get(c, b, "out")[valid], outputs[index][valid], rtol=0, atol=0, msg=described(what + " output")
            )
            # Independently of the plan: the slot's real tokens are those of segments s = slot (mod 4).
            for row, (first, real) in enumerate(real_spans(attention_mask, 2, length)):
                tokens = sorted(int(i) - row * length for i in index[valid] if row * length <= i < (row + 1) * length)
                expected = [first + t for t in range(real) if (t // size) % NUM_BLOCKS == slot]
                assert tokens == expected, what


# ------------------------------------------------------- 2. batched path vs naive segment loop ----
def reference_fusion_cycle(fusion, cycle, hidden_states, original_inputs, config, is_causal, attention_mask=None):
    """DESIGN §4 written out: for each row and each segment s of its real tokens, run block (s + c) mod 4 as an
    ordinary layer on h_s + x_s with a causal or full mask inside the segment. Padding passes through."""
    batch, length, _ = hidden_states.shape
    size = config.ef_segment_length
    output = hidden_states.clone()
    for row, (first, real) in enumerate(real_spans(attention_mask, batch, length)):
        cos, sin = reference_rope(range(real), config.head_dim, config.rope_theta)
        for s, start in enumerate(range(0, real, size)):
            end = min(start + size, real)
            tokens = slice(first + start, first + end)
            mask = torch.ones(end - start, end - start, dtype=torch.bool)
            if is_causal:
                mask = mask.tril()
            block = fusion.blocks[(s + cycle) % NUM_BLOCKS]
            output[row, tokens] = SlamLayer.forward(
                block,
                (hidden_states[row, tokens] + original_inputs[row, tokens])[None],
                (cos[None, start:end], sin[None, start:end]),
                attention_mask=mask[None, None],
            )[0]
    return output


def check_cycles_against_reference(model, recorder, is_causal, attention_mask=None, what=""):
    config = model.config
    assert len(recorder.cycles) == config.ef_cycles
    for entry in recorder.cycles:
        with torch.no_grad():
            expected = reference_fusion_cycle(
                model.base_model.fusion,
                entry["cycle"],
                entry["hidden_states"],
                entry["original_inputs"],
                config,
                is_causal,
                attention_mask,
            )
        torch.testing.assert_close(
            entry["output"],
            expected,
            rtol=0,
            atol=ATOL,
            msg=described(f"cycle {entry['cycle']} {what} vs naive segment loop"),
        )


@pytest.mark.parametrize("head", ["causal", "bidirectional"])
# Segments of 4 tokens: 4 = one segment (one slot), 7 = two (per-slot path), 16 = four full segments,
# 15 = four with a partial last one, 21 = six (two groups, the second half empty), 32 = eight (two full groups).
@pytest.mark.parametrize("length", [4, 7, 15, 16, 21, 32])
@pytest.mark.parametrize("overrides", [{}, PRE_NORM], ids=["published", "pre-norm-swiglu"])
def test_fusion_cycle_matches_naive_segment_loop(tester, head, length, overrides):
    config = tester.get_config(**overrides)
    model_class = tester.causal_lm_class if head == "causal" else tester.masked_lm_class
    model = model_class(config).eval()
    input_ids = tester.input_ids(seq_length=length)
    outputs, recorder = run_recorded(model, input_ids=input_ids)
    cos, _ = reference_rope(range(length), config.head_dim, config.rope_theta)
    torch.testing.assert_close(
        recorder.cycles[0]["position_embeddings"][0][0], cos, rtol=0, atol=1e-6, msg=described("RoPE cos")
    )
    occupied = min(-(-length // config.ef_segment_length), NUM_BLOCKS)
    assert recorder.cycles[0]["plan"].active_slots == list(range(occupied))
    check_cycles_against_reference(model, recorder, head == "causal", what=f"({head}, L={length})")

    # The per-slot path (one block at a time) computes the same function as the batched one.
    model.base_model.fusion.batch_blocks = False
    with torch.no_grad():
        per_slot = model(input_ids=input_ids).logits
    torch.testing.assert_close(
        per_slot,
        outputs.logits,
        rtol=0,
        atol=ATOL,
        msg=described(f"batch_blocks=False vs batched ({head}, L={length})"),
    )


@pytest.mark.parametrize("head", ["causal", "bidirectional"])
def test_fusion_cycle_with_padding_matches_naive_segment_loop(tester, head):
    """Segments are counted from each row's first real token; padding passes through every cycle unchanged."""
    config = tester.get_config()
    model_class = tester.causal_lm_class if head == "causal" else tester.masked_lm_class
    model = model_class(config).eval()
    rows = [tester.input_ids(1, length)[0] for length in (22, 15, 6)]
    input_ids, attention_mask = (tester.left_padded_batch if head == "causal" else tester.right_padded_batch)(rows)
    _, recorder = run_recorded(model, input_ids=input_ids, attention_mask=attention_mask)
    check_cycles_against_reference(model, recorder, head == "causal", attention_mask, what=f"({head}, padded)")


# ------------------------------------------------------------ 3. no Python loop over segments ----
class OpCounter(TorchDispatchMode):
    """Counts every aten operation, and separately matmuls and attention kernels."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.matmuls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm", "matmul") or "attention" in name:
            self.matmuls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("is_causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_one_batched_computation_per_cycle(tester, is_causal, implementation):
    config = tester.get_config(is_causal=is_causal)
    model = tester.base_model_class(config).eval()
    size = config.ef_segment_length

    def count(num_segments):
        length = num_segments * size
        hidden_states, original_inputs = torch.randn(2, 1, length, config.hidden_size)
        position_embeddings = model.rotary_emb(torch.arange(length)[None], hidden_states.dtype)
        plan = plan_segments(None, 1, 0, length, size, NUM_BLOCKS, is_causal, implementation, "cpu")
        with torch.no_grad(), OpCounter() as counter:
            model.fusion(hidden_states, original_inputs, position_embeddings, cycle=1, segment_plan=plan)
        return counter.matmuls, counter.total

    full = [count(n) for n in (4, 12, 20)]
    assert full[0] == full[1] == full[2], f"ops grow with the number of segments: {full}"
    # The counter does see a loop: with fewer segments than blocks each occupied slot runs on its own.
    one, three = count(1), count(3)
    assert one[0] > 0 and three[0] == 3 * one[0] and three[1] > 2 * one[1], (one, three)
    # All four blocks together take as many matmul / attention calls as one block alone: one computation.
    assert full[0][0] == one[0], (one, full[0])


# -------------------------------------------------------------- 4. mixture of attention experts ----
def capture_moa(model, **inputs):
    """Run the model; returns (outputs, MoA attention input x, its output, its router logits)."""
    captured = {}

    def hook(module, args, output):
        captured["x"], captured["position_embeddings"] = args[0], args[1]
        captured["output"], captured["router_logits"] = output

    handle = model.base_model.moa_layer.self_attn.register_forward_hook(hook)
    try:
        outputs = model(**inputs)
    finally:
        handle.remove()
    return outputs, captured


def reference_moa(attention, x, config, is_causal, attention_mask=None):
    """Token by token: softmax router, top-k experts with renormalised gates; each chosen expert's heads
    attend over the shared (RoPE'd) K/V of the real tokens it may see; gate-weighted sum of o_proj outputs."""
    batch, length, _ = x.shape
    heads, kv_heads, head_dim = config.moa_expert_heads, config.moa_key_value_heads, config.head_dim
    output = torch.zeros_like(x)
    for row, (first, real) in enumerate(real_spans(attention_mask, batch, length)):
        cos, sin = reference_rope(range(real), head_dim, config.rope_theta)
        tokens = x[row, first : first + real]
        keys = rotate(attention.k_proj(tokens).view(real, kv_heads, head_dim).transpose(0, 1), cos, sin)
        values = attention.v_proj(tokens).view(real, kv_heads, head_dim).transpose(0, 1)
        for t in range(real):
            probabilities = torch.softmax(attention.router(tokens[t]).double(), dim=-1)
            chosen = probabilities.argsort(descending=True)[: config.moa_top_k].tolist()
            gates = probabilities[chosen] / probabilities[chosen].sum()
            visible = t + 1 if is_causal else real
            mixed = torch.zeros(config.hidden_size, dtype=torch.float64)
            for expert_index, gate in zip(chosen, gates):
                expert = attention.experts[expert_index]
                query = rotate(expert.q_proj(tokens[t]).view(heads, 1, head_dim), cos[t], sin[t])
                head_outputs = []
                for h in range(heads):
                    kv = h // (heads // kv_heads)
                    scores = (query[h] @ keys[kv, :visible].T) / head_dim**0.5
                    head_outputs.append(torch.softmax(scores, dim=-1) @ values[kv, :visible])
                mixed += gate * expert.o_proj(torch.cat(head_outputs, dim=-1)[0]).double()
            output[row, first + t] = mixed.float()
    return output


MOA_CASES = {
    "top2-of-4": dict(),  # 2 query heads per expert on 1 K/V head
    "top2-of-4-gqa": dict(moa_expert_heads=4),  # 4 query heads per expert on 2 K/V heads: head h uses h // 2
    "dense-top4": dict(moa_top_k=4, moa_expert_heads=2),  # the published dense softmax mixture
}


def decisive_router(model, scale=30.0):
    """Scale the tiny-init router up so routing is far from ties and the gates far from uniform."""
    with torch.no_grad():
        model.base_model.moa_layer.self_attn.router.weight.mul_(scale)
    return model


@pytest.mark.parametrize("case", list(MOA_CASES))
@pytest.mark.parametrize("head", ["causal", "bidirectional"])
def test_moa_matches_naive_per_token_loop(tester, case, head):
    config = tester.get_config(**MOA_CASES[case])
    model_class = tester.causal_lm_class if head == "causal" else tester.masked_lm_class
    model = decisive_router(model_class(config).eval())
    attention = model.base_model.moa_layer.self_attn
    assert attention.num_experts == 4 and attention.top_k == config.moa_top_k
    rows = [tester.input_ids(1, length)[0] for length in (13, 9)]
    input_ids, attention_mask = (tester.left_padded_batch if head == "causal" else tester.right_padded_batch)(rows)
    with torch.no_grad():
        _, captured = capture_moa(model, input_ids=input_ids, attention_mask=attention_mask)
        expected = reference_moa(attention, captured["x"], config, head == "causal", attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(
        captured["output"][real],
        expected[real],
        rtol=0,
        atol=ATOL,
        msg=described(f"MoA {case} ({head}) vs per-token loop"),
    )
    # The gates are far from uniform, so a wrong gate weighting could not pass.
    gates = torch.softmax(captured["router_logits"][real], dim=-1).topk(config.moa_top_k, dim=-1).values
    gates = gates / gates.sum(-1, keepdim=True)
    assert (gates - 1 / config.moa_top_k).abs().max() > 0.2


ALL_ROLES = ["base_model_class", "causal_lm_class", "masked_lm_class", "sequence_classification_class"]


@pytest.mark.parametrize("model_role", ALL_ROLES)
def test_router_logits_output(tester, model_role):
    model_class = getattr(tester, model_role)
    input_ids = tester.input_ids()
    batch, length = input_ids.shape
    model = model_class(tester.get_config()).eval()
    with torch.no_grad():
        outputs, captured = capture_moa(model, input_ids=input_ids)
        assert outputs.router_logits is None, "router logits are returned only on request"
        assert model(input_ids=input_ids, output_router_logits=False).router_logits is None
        requested = model(input_ids=input_ids, output_router_logits=True).router_logits
        expected = model.base_model.moa_layer.self_attn.router(captured["x"]).flatten(0, 1)
    assert isinstance(requested, tuple) and len(requested) == 1  # one per MoA layer
    assert requested[0].shape == (batch * length, 4)
    torch.testing.assert_close(requested[0], expected, rtol=0, atol=1e-6, msg=described("router logits vs router(x)"))

    by_config = model_class(tester.get_config(output_router_logits=True)).eval()
    by_config.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(by_config(input_ids=input_ids).router_logits[0], requested[0])
        assert by_config(input_ids=input_ids, output_router_logits=False).router_logits is None


def reference_aux_loss(router_logits, top_k, real=None):
    """Switch balancing loss, written out: E * sum_e f_e * P_e over real tokens, f_e = share of the routed
    (token, slot) pairs that go to expert e, P_e = mean router probability of expert e."""
    if real is not None:
        router_logits = router_logits[real.flatten()]
    tokens, experts = router_logits.shape
    probabilities = torch.softmax(router_logits.double(), dim=-1)
    routed = torch.zeros(experts, dtype=torch.float64)
    for token in range(tokens):
        for expert in probabilities[token].argsort(descending=True)[:top_k]:
            routed[expert] += 1
    share = routed / (tokens * top_k)
    return experts * (share * probabilities.mean(0)).sum()


@pytest.mark.parametrize("head", ["causal", "bidirectional"])
def test_aux_loss_is_the_switch_formula_over_real_tokens(tester, head):
    model_class = tester.causal_lm_class if head == "causal" else tester.masked_lm_class
    rows = [tester.input_ids(1, length)[0] for length in (15, 6, 11)]
    input_ids, attention_mask = (tester.left_padded_batch if head == "causal" else tester.right_padded_batch)(rows)
    for overrides in ({}, MOA_CASES["dense-top4"]):
        config = tester.get_config(**overrides)
        model = decisive_router(model_class(config).eval())
        with torch.no_grad():
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_router_logits=True)
        logits = outputs.router_logits[0]
        expected = reference_aux_loss(logits, config.moa_top_k, attention_mask.bool())
        torch.testing.assert_close(
            outputs.aux_loss,
            expected.float(),
            rtol=0,
            atol=1e-6,
            msg=described(f"aux loss ({head}, top-{config.moa_top_k})"),
        )
        if config.moa_top_k == config.moa_num_experts:
            torch.testing.assert_close(
                outputs.aux_loss, torch.tensor(1.0), rtol=0, atol=1e-6, msg=described("dense routing aux loss")
            )
        else:
            with_padding = reference_aux_loss(logits, config.moa_top_k)
            assert (with_padding - expected).abs() > 1e-3, "test data cannot tell whether padding is excluded"
        with torch.no_grad():  # without a mask every token counts (no pad ids: their zero embedding gives ties)
            unmasked = model(input_ids=tester.input_ids(batch_size=3), output_router_logits=True)
        torch.testing.assert_close(
            unmasked.aux_loss,
            reference_aux_loss(unmasked.router_logits[0], config.moa_top_k).float(),
            rtol=0,
            atol=1e-6,
        )


def reference_task_loss(tester, model_class, logits, labels, reduction="mean"):
    """Cross entropy over the labelled tokens (next-token for the causal LM), or over the sequence labels."""
    if model_class is tester.causal_lm_class:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100, reduction=reduction)


@pytest.mark.parametrize("model_role", ["causal_lm_class", "masked_lm_class", "sequence_classification_class"])
def test_loss_adds_the_weighted_aux_loss(tester, model_role):
    model_class = getattr(tester, model_role)
    coef = 0.3
    model = decisive_router(model_class(tester.get_config(router_aux_loss_coef=coef)).eval())
    plain = model_class(tester.get_config(router_aux_loss_coef=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    input_ids = tester.input_ids()
    labels = tester.labels_for(model_class, input_ids)
    with torch.no_grad():
        outputs = model(input_ids=input_ids, labels=labels)
        plain_outputs = plain(input_ids=input_ids, labels=labels)
    assert torch.equal(plain_outputs.aux_loss, outputs.aux_loss)  # reported even when not added
    task_loss = reference_task_loss(tester, model_class, outputs.logits, labels)
    torch.testing.assert_close(
        plain_outputs.loss, task_loss, rtol=0, atol=1e-6, msg=described("task loss of the coef-0 model")
    )
    torch.testing.assert_close(
        outputs.loss, plain_outputs.loss + coef * outputs.aux_loss, rtol=0, atol=1e-6, msg=described("loss")
    )


@pytest.mark.parametrize("model_role", ["causal_lm_class", "masked_lm_class"])
def test_aux_loss_weight_under_gradient_accumulation(tester, model_role):
    """With num_items_in_batch (labelled tokens of the whole accumulated batch), each micro-batch adds
    coef * aux * its labelled tokens / num_items_in_batch, so the weights of all micro-batches sum to coef."""
    model_class = getattr(tester, model_role)
    coef = 0.3
    model = decisive_router(model_class(tester.get_config(router_aux_loss_coef=coef)).eval())
    input_ids = tester.input_ids(batch_size=4)
    labels = tester.labels_for(model_class, input_ids)
    micro_batches = (slice(0, 1), slice(1, 4))  # unequal
    predicted = labels[:, 1:] if model_class is tester.causal_lm_class else labels
    labelled = [int((predicted[part] != -100).sum()) for part in micro_batches]
    num_items = sum(labelled)
    used_weights = []
    for part, count in zip(micro_batches, labelled):
        with torch.no_grad():
            outputs = model(input_ids=input_ids[part], labels=labels[part], num_items_in_batch=num_items)
        task_sum = reference_task_loss(tester, model_class, outputs.logits, labels[part], reduction="sum")
        expected = task_sum / num_items + coef * outputs.aux_loss * count / num_items
        torch.testing.assert_close(
            outputs.loss,
            expected,
            rtol=0,
            atol=1e-6,
            msg=described(f"micro-batch loss ({count} of {num_items} labelled)"),
        )
        used_weights.append(((outputs.loss - task_sum / num_items) / outputs.aux_loss).item())
    assert min(abs(weight - coef) for weight in used_weights) > 0.05, used_weights  # not simply coef each
    assert abs(sum(used_weights) - coef) < 1e-5, used_weights


def test_router_training_reduces_aux_loss(tester):
    """A repeated token sends every position to the same two experts (aux loss near 2, its top-2 maximum);
    training only the router against loss = LM loss + 10 * aux loss spreads the probability mass."""
    # At the default init std, where a repeated token gives every position the same hidden state.
    config = tester.get_config(router_aux_loss_coef=10.0, initializer_range=0.02)
    model = decisive_router(tester.causal_lm_class(config))
    model.train()
    router = model.base_model.moa_layer.self_attn.router
    for param in model.parameters():
        param.requires_grad_(param is router.weight)
    optimizer = torch.optim.Adam([router.weight], lr=0.01)
    input_ids = torch.full((4, 15), 7)
    labels = tester.labels_for(tester.causal_lm_class, input_ids)
    history = []
    for _ in range(12):
        outputs = model(input_ids=input_ids, labels=labels)
        history.append(round(outputs.aux_loss.item(), 4))
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
    assert history[0] > 1.9, history
    assert history[-1] < history[0] - 0.2, f"aux loss did not fall: {history}"


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_on_experts_and_blocks_matches_merged(tester):
    """LoRA on q_proj/o_proj wraps every expert and every fusion block; the wrapped projections are not plain
    nn.Linear, so the fusion calls them as modules (unstacked path) and the MoA calls each expert's. After
    training, the adapted model equals its merged copy, which runs the batched path on plain weights."""
    peft = pytest.importorskip("peft")
    config = tester.get_config()
    model = tester.causal_lm_class(config)
    input_ids = tester.input_ids()
    labels = tester.labels_for(tester.causal_lm_class, input_ids)
    with torch.no_grad():
        original = model.eval()(input_ids=input_ids).logits
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]))
    lora_names = {
        name.removeprefix("base_model.model.")
        for name, module in wrapped.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    expected = {f"model.moa_layer.self_attn.experts.{e}.{p}" for e in range(4) for p in ("q_proj", "o_proj")}
    expected |= {f"model.fusion.blocks.{b}.self_attn.{p}" for b in range(NUM_BLOCKS) for p in ("q_proj", "o_proj")}
    expected |= {"model.input_layer.self_attn.q_proj", "model.input_layer.self_attn.o_proj"}
    assert lora_names == expected

    wrapped.train()
    optimizer = torch.optim.Adam([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = wrapped(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, module in wrapped.named_modules():  # every adapter took part in the forward (non-zero gradient steps)
        if isinstance(module, peft.tuners.lora.LoraLayer):
            assert module.lora_B["default"].weight.abs().max() > 0, f"{name}: adapter never received a gradient"
    wrapped.eval()
    with torch.no_grad():
        adapted = wrapped(input_ids=input_ids).logits
        assert (adapted - original).abs().max() > 1e-3, "training did not change the adapted model"
        merged = wrapped.merge_and_unload()
        assert type(merged.model.fusion.blocks[0].self_attn.q_proj) is torch.nn.Linear
        torch.testing.assert_close(
            merged(input_ids=input_ids).logits,
            adapted,
            rtol=0,
            atol=ATOL,
            msg=described("LoRA model vs merge_and_unload()"),
        )


# ------------------------------------------------------------------------------ 5. disk offload ----
def check_offloaded_to_disk(model, reference, input_ids, what):
    """Every weight stays on disk (meta here) and accelerate loads it when its leaf module is called, so the
    fusion must call hooked modules itself instead of stacking their (meta) weights."""
    q_proj = model.model.fusion.blocks[0].self_attn.q_proj
    assert q_proj.weight.device.type == "meta" and hasattr(q_proj, "_hf_hook"), f"{what}: weights not offloaded"
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, reference, rtol=0, atol=1e-6, msg=described(what))


def test_whole_model_offloaded_to_disk(tester, tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model = tester.causal_lm_class(tester.get_config()).eval()
    input_ids = tester.input_ids()
    with torch.no_grad():
        reference = model(input_ids=input_ids).logits
    model.save_pretrained(tmp_path / "model")

    # accelerate's own API (every supported version): hooks on every leaf module, weights read from disk.
    offloaded = accelerate.disk_offload(
        tester.causal_lm_class.from_pretrained(tmp_path / "model").eval(), str(tmp_path / "direct"), "cpu"
    )
    check_offloaded_to_disk(offloaded, reference, input_ids, "accelerate.disk_offload")

    # from_pretrained with too little memory for anything: the device map sends the whole model to disk.
    offloaded = tester.causal_lm_class.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": 1}, offload_folder=str(tmp_path / "auto")
    )
    if not hasattr(offloaded, "hf_device_map"):
        # transformers#46749 / accelerate#4083: older releases leave a whole-disk device map undispatched.
        pytest.skip("this transformers release does not dispatch a model offloaded entirely to disk")
    assert offloaded.hf_device_map == {"": "disk"}
    check_offloaded_to_disk(offloaded, reference, input_ids, 'device_map="auto" on disk')


# ---------------------------------------------------------------------------------- 6. config ----
def test_default_segment_length_and_layer_count(tester):
    from slam_hf import SlamV2Config

    assert SlamV2Config().ef_segment_length == 2048 // 4
    assert SlamV2Config(max_position_embeddings=64).ef_segment_length == 16
    assert SlamV2Config(max_position_embeddings=64, ef_num_blocks=2).ef_segment_length == 32
    assert SlamV2Config(max_position_embeddings=64, ef_segment_length=5).ef_segment_length == 5
    for cycles in (1, 3, 4, 7):
        config = SlamV2Config(ef_cycles=cycles)
        assert config.num_hidden_layers == cycles + 2
        assert len(config.layer_schedule) == cycles + 2


def test_cache_holds_every_token_of_every_cycle(tester):
    config = tester.get_config(ef_cycles=3)
    model = tester.causal_lm_class(config).eval()
    length = 15
    input_ids = tester.input_ids(seq_length=length)
    outputs, recorder = run_recorded(model, input_ids=input_ids, use_cache=True)
    cache = output_cache(outputs)
    assert len(cache) == config.ef_cycles + 2 == config.num_hidden_layers
    for layer in range(config.num_hidden_layers):
        assert cache.get_seq_length(layer) == length, f"cache layer {layer}"

    # Cycle c's cache layer holds, for token t of segment s, block (s + c) mod 4's RoPE'd key of h_t + x_t.
    size, head_dim = config.ef_segment_length, config.head_dim
    cos, sin = reference_rope(range(length), head_dim, config.rope_theta)
    for entry in recorder.cycles:
        c = entry["cycle"]
        inputs = entry["hidden_states"] + entry["original_inputs"]  # post-norm: the keys see the raw input
        keys = cache.layers[1 + c].keys  # (B, kv_heads, L, D)
        with torch.no_grad():
            for s, start in enumerate(range(0, length, size)):
                tokens = slice(start, min(start + size, length))
                block = model.model.fusion.blocks[(s + c) % NUM_BLOCKS]
                k = block.self_attn.k_proj(inputs[:, tokens]).unflatten(-1, (-1, head_dim)).transpose(1, 2)
                torch.testing.assert_close(
                    keys[:, :, tokens],
                    rotate(k, cos[tokens], sin[tokens]),
                    rtol=0,
                    atol=ATOL,
                    msg=described(f"cycle {c} keys"),
                )
