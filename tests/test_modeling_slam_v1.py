"""SLAM v1: the shared suite, plus the encoder-fusion (EF) cycle against a naive per-window reference,
the window geometry, arbitrary lengths and the O(L * w) cost."""

import pytest
import torch
from slam_common import ATOL, SlamModelTesterMixin, described, expected_inv_freq, single_threaded_torch
from slam_tester import SlamV1ModelTester
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from slam_hf.slam_blocks import SlamLayer
from slam_hf.slam_windows import plan_windows


class TestSlamV1Model(SlamModelTesterMixin):  # pytest collects `Test*` classes only
    model_tester_class = SlamV1ModelTester


single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


# ------------------------------------------------------------------------ naive EF reference ----
def reference_window_starts(length, window_length, stride, is_causal):
    """DESIGN §3 geometry, written out: window i covers [i * stride, i * stride + w) clipped to the sequence.

    A causal model keeps every window that starts inside the sequence. A bidirectional one drops a window
    whose predecessor already reaches the end (it would lie entirely inside it).
    """
    starts = []
    for start in range(0, length, stride):
        previous_end = start - stride + window_length
        if not is_causal and starts and previous_end >= length:
            break
        starts.append(start)
    return starts


def reference_rope(length, head_dim, theta):
    frequencies = torch.arange(length, dtype=torch.float32)[:, None] * expected_inv_freq(head_dim, theta)
    angles = torch.cat([frequencies, frequencies], dim=-1)[None]
    return angles.cos(), angles.sin()


def reference_ef_cycle(cycle, hidden_states, position_embeddings, config, is_causal):
    """For each window, run its block as an ordinary full-attention layer on the window slice with an
    explicit mask; a token covered by two windows takes the mean of the two outputs."""
    batch, length, _ = hidden_states.shape
    total = torch.zeros_like(hidden_states)
    count = torch.zeros(batch, length, 1)
    starts = reference_window_starts(length, config.ef_segment_length, config.ef_stride, is_causal)
    for window, start in enumerate(starts):
        end = min(start + config.ef_segment_length, length)
        size = end - start
        mask = torch.ones(size, size, dtype=torch.bool)
        if is_causal:
            mask = mask.tril()
        block = cycle.blocks[window % 2]  # windows alternate A, B, A, ...
        window_embeddings = None
        if position_embeddings is not None:
            window_embeddings = tuple(part[:, start:end] for part in position_embeddings)
        output = SlamLayer.forward(
            block,
            hidden_states[:, start:end],
            window_embeddings,
            attention_mask=mask.expand(batch, 1, size, size),
        )
        total[:, start:end] += output
        count[:, start:end] += 1
    assert (count > 0).all(), "the reference geometry must cover every token"
    return total / count


def capture_cycle_io(model, input_ids, cycle_index=0):
    """Run the model and return (input hidden states, output) of its first EF cycle."""
    cycle = [layer for layer in model.base_model.layers if hasattr(layer, "blocks")][cycle_index]
    captured = {}

    def hook(module, args, kwargs, output):
        captured["input"], captured["output"] = args[0], output
        captured["position_embeddings"] = args[1] if len(args) > 1 else kwargs.get("position_embeddings")

    handle = cycle.register_forward_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids)
    finally:
        handle.remove()
    return cycle, captured


@pytest.fixture(scope="module")
def tester():
    return SlamV1ModelTester()


@pytest.mark.parametrize("head", ["causal", "bidirectional"])
# 5: shorter than a window (causal models still start a 1-token window at 4); 14: the bidirectional model
# drops the window at 12, which lies inside [8, 14); 15: a partial last window [12, 15) in both.
@pytest.mark.parametrize("length", [5, 14, 15])
@pytest.mark.parametrize(
    "overrides",
    [{}, dict(norm_position="pre", mlp_type="swiglu", norm_type="rmsnorm")],
    ids=["published", "pre-norm-swiglu"],
)
def test_ef_cycle_matches_naive_window_loop(tester, head, length, overrides):
    config = tester.get_config(**overrides)
    model_class = tester.causal_lm_class if head == "causal" else tester.masked_lm_class
    model = model_class(config).eval()
    input_ids = tester.input_ids(seq_length=length)
    with torch.no_grad():
        cycle, captured = capture_cycle_io(model, input_ids)
        position_embeddings = reference_rope(length, config.head_dim, config.rope_theta)
        cos = captured["position_embeddings"][0]  # (batch, length, head_dim); the reference has batch 1
        torch.testing.assert_close(
            cos, position_embeddings[0].expand_as(cos), rtol=0, atol=1e-6, msg=described("RoPE cos")
        )
        expected = reference_ef_cycle(cycle, captured["input"], position_embeddings, config, head == "causal")
    torch.testing.assert_close(
        captured["output"],
        expected,
        rtol=0,
        atol=ATOL,
        msg=described(f"EF cycle ({head}, L={length}) vs naive window loop"),
    )


def test_ef_reference_geometry_is_the_intended_one():
    """Pin the reference itself, so a wrong reference cannot make the comparison above pass."""
    assert reference_window_starts(15, 6, 4, is_causal=True) == [0, 4, 8, 12]
    assert reference_window_starts(15, 6, 4, is_causal=False) == [0, 4, 8, 12]
    assert reference_window_starts(14, 6, 4, is_causal=True) == [0, 4, 8, 12]
    assert reference_window_starts(14, 6, 4, is_causal=False) == [0, 4, 8]
    assert reference_window_starts(5, 6, 4, is_causal=False) == [0]
    assert reference_window_starts(100, 60, 40, is_causal=False) == [0, 40]
    assert reference_window_starts(100, 60, 40, is_causal=True) == [0, 40, 80]


# --------------------------------------------------------------------------------- geometry ----
def planned_windows(plans, row=0):
    """{block: [(first, end) of each window of that block holding tokens of `row`]} from plan_windows."""
    windows = {}
    for block, plan in enumerate(plans):
        for n in range(plan.num_windows):
            slots = plan.query_slots[row, n][plan.query_valid[row, n]]
            if slots.numel():
                first, end = int(slots.min()), int(slots.max()) + 1
                assert slots.tolist() == list(range(first, end)), "a window must be a contiguous span"
                windows.setdefault(block, []).append((first, end))
    return windows


def test_published_geometry_bidirectional():
    """w=60, overlap=20, L=100: block A sees the first 60 %, block B the last 60 %, nothing else."""
    plans = plan_windows(None, 1, 0, 100, 60, 40, False, "sdpa", "cpu")
    assert planned_windows(plans) == {0: [(0, 60)], 1: [(40, 100)]}
    # Keys of a window are exactly its tokens.
    plan_b = plans[1]
    assert plan_b.key_index[0, 0].tolist() == list(range(40, 100))


def test_published_geometry_has_no_empty_windows():
    """Bidirectional L=100: exactly one window per block, no all-padding window wasting compute."""
    plans = plan_windows(None, 1, 0, 100, 60, 40, False, "sdpa", "cpu")
    assert [plan.num_windows for plan in plans] == [1, 1]


def test_causality_is_recorded_in_the_config(tester, tmp_path):
    """Bidirectional heads save is_causal=False, so AutoModel on their checkpoint rebuilds the same trunk;
    the caller's config object is left untouched, and a causal LM refuses a bidirectional config."""
    from transformers import AutoModel

    config = tester.get_config()
    masked_lm = tester.masked_lm_class(config).eval()
    assert config.is_causal and not masked_lm.config.is_causal and not masked_lm.model.is_causal
    masked_lm.save_pretrained(tmp_path)
    trunk = AutoModel.from_pretrained(tmp_path).eval()
    assert not trunk.is_causal
    input_ids = tester.input_ids(seq_length=15)
    with torch.no_grad():
        assert torch.equal(trunk(input_ids).last_hidden_state, masked_lm.model(input_ids).last_hidden_state)
    with pytest.raises(ValueError, match="is_causal"):
        tester.causal_lm_class(masked_lm.config)


def test_published_geometry_causal():
    plans = plan_windows(None, 1, 0, 100, 60, 40, True, "sdpa", "cpu")
    assert planned_windows(plans) == {0: [(0, 60), (80, 100)], 1: [(40, 100)]}


def test_geometry_ignores_left_padding():
    """Windows are placed by counting real tokens: 3 pad tokens shift every window by 3 slots."""
    mask = torch.tensor([[0, 0, 0] + [1] * 100])
    padded = planned_windows(plan_windows(mask, 1, 0, 103, 60, 40, False, "sdpa", "cpu"))
    assert padded == {0: [(3, 63)], 1: [(43, 103)]}


@pytest.mark.parametrize("length", [1, 64, 100, 128, 4097])
def test_any_sequence_length(tester, length):
    geometry = dict(ef_segment_length=60, ef_segment_overlap=20)  # the published default
    config = tester.get_config(**geometry, num_attention_heads=2, num_key_value_heads=1)
    input_ids = tester.input_ids(batch_size=1, seq_length=length)
    for model_class in (tester.causal_lm_class, tester.masked_lm_class):
        model = model_class(config).eval()
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
        assert logits.shape == (1, length, config.vocab_size)
        assert torch.isfinite(logits).all(), f"{model_class.__name__} at L={length}"
        if model_class is tester.causal_lm_class and length > 1:
            with torch.no_grad():  # a prefix gives the same logits as the start of the longer run
                prefix = model(input_ids=input_ids[:, : length // 2]).logits
            torch.testing.assert_close(
                prefix, logits[:, : length // 2], rtol=0, atol=ATOL, msg=described(f"causal prefix at L={length}")
            )


# ---------------------------------------------------------------------------- O(L * w) cost ----
class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.fixture(scope="module")
def eager_model(tester):
    """Eager attention, so attention matmuls show up in the FLOP counter (CPU sdpa kernels do not)."""
    config = tester.get_config(ef_segment_length=60, ef_segment_overlap=20)
    config._attn_implementation = "eager"
    return tester.causal_lm_class(config).eval()


def run_layers(model, length, is_causal):
    """FLOPs and largest tensor of one EF cycle and of one full-attention layer at `length` tokens."""
    config = model.config
    hidden_states = torch.randn(1, length, config.hidden_size)
    position_embeddings = model.base_model.rotary_emb(torch.arange(length)[None], hidden_states.dtype)
    plans = plan_windows(None, 1, 0, length, config.ef_segment_length, config.ef_stride, is_causal, "eager", "cpu")
    full_mask = torch.ones(length, length, dtype=torch.bool)
    full_mask = (full_mask.tril() if is_causal else full_mask)[None, None]
    full_layer, cycle = model.base_model.layers[0], model.base_model.layers[1]
    results = {}
    with torch.no_grad():
        for name, run in (
            ("cycle", lambda: cycle(hidden_states, position_embeddings, window_plans=plans)),
            ("full", lambda: full_layer(hidden_states, position_embeddings, attention_mask=full_mask)),
        ):
            with FlopCounterMode(display=False) as flops, LargestTensor() as largest:
                run()
            results[name] = (flops.get_total_flops(), largest.largest)
    return results, plans


@pytest.mark.parametrize("is_causal", [True, False], ids=["causal", "bidirectional"])
def test_ef_cycle_cost_is_linear_in_length(eager_model, is_causal):
    config = eager_model.config
    short, _ = run_layers(eager_model, 1024, is_causal)
    long, plans = run_layers(eager_model, 2048, is_causal)
    cycle_ratio = long["cycle"][0] / short["cycle"][0]
    full_ratio = long["full"][0] / short["full"][0]
    assert 1.8 < cycle_ratio < 2.2, f"EF cycle FLOPs grew x{cycle_ratio:.2f} when L doubled"
    assert full_ratio > 3.0, f"full attention FLOPs grew only x{full_ratio:.2f} (is the counter working?)"

    length, window, heads = 2048, config.ef_segment_length, config.num_attention_heads
    # The plan's masks and gather indices are (windows x w) sized, never (L x L).
    largest_in_plan = max(
        value.numel() for plan in plans for value in vars(plan).values() if isinstance(value, torch.Tensor)
    )
    assert largest_in_plan < 2 * length * window, largest_in_plan
    # So is every intermediate of the cycle (attention scores: heads x windows x w x w), unlike full attention.
    assert long["cycle"][1] < 2 * heads * length * window, long["cycle"][1]
    assert long["full"][1] >= heads * length * length


def test_attention_mask_with_holes_is_rejected(tester):
    """Windows are placed by counting real tokens, which needs one contiguous span per row."""
    model = tester.causal_lm_class(tester.get_config()).eval()
    input_ids = tester.input_ids(seq_length=12)
    holes = torch.ones_like(input_ids)
    holes[0, 5] = 0
    with pytest.raises(ValueError, match="attention_mask.*contiguous"):
        model(input_ids=input_ids, attention_mask=holes)
    left_and_right = torch.ones_like(input_ids)
    left_and_right[:, :2] = 0
    left_and_right[:, -3:] = 0
    model(input_ids=input_ids, attention_mask=left_and_right)  # padding on both ends is one span: fine
