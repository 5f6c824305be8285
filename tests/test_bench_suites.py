"""slam_hf.bench.suites: the deterministic pieces of the benchmark scripts' measurements (parameter matching, the
analytic cost model and its geometry, cache bytes, the report text from fixed numbers). Fast: models are built on
the meta device or at toy sizes."""

import math
from types import SimpleNamespace

import pytest
import torch

from slam_hf.bench.suites.cost_model import cost_model, v1_geometry, v2_geometry
from slam_hf.bench.suites.mla import bench_mla
from slam_hf.bench.suites.report_text import ratios_over_llama, report
from slam_hf.bench.suites.slam_vs_llama import describe_sizes, params_at
from slam_hf.bench.suites.slam_vs_llama_options import parse_args, prepare
from slam_hf.bench.suites.v3_decode import PreallocatedLayer, crop
from slam_hf.bench.suites.v3_paths import grid_for, paths_flops
from slam_hf.bench.suites.v3_summary import summary
from slam_hf.slam_compat import DynamicCache

V1_SCRIPT_DEFAULTS = ["--models", "v1", "llama", "--seq-lens", "512", "2048", "--param-tolerance", "0.05"]


def test_parameter_matching_reproduces_the_recorded_counts():
    # benchmarks/README.md: v2 7,542,016 (intermediate 768); Llama (6 layers) and v1 both 7,544,064 (840)
    args = prepare(parse_args([]))
    assert args.match_params_to == "v2" and args.llama_layers == 6
    assert args.sizes == {"v2": 768, "v1": 840, "llama": 840}
    assert {n: params_at(n, args, args.sizes[n]) for n in args.sizes} == {
        "v2": 7_542_016,
        "v1": 7_544_064,
        "llama": 7_544_064,
    }
    # bench_v1_vs_llama.py: SLAM v1 is the reference, Llama 2 + 2 * ef_cycles layers, identical counts (7,212,288)
    v1 = prepare(parse_args(V1_SCRIPT_DEFAULTS))
    assert v1.match_params_to == "v1" and v1.llama_layers == 6 and v1.sizes == {"v1": 768, "llama": 768}
    assert params_at("v1", v1, 768) == params_at("llama", v1, 768) == 7_212_288


def test_geometry():
    assert v1_geometry(512, 288, 32) == {"stride": 256, "windows": 2, "window_tokens": 288, "slots": 576}
    assert v1_geometry(200, 288, 32)["window_tokens"] == 200  # a window longer than the sequence
    # two segments leave two of the four slots empty: no batched computation
    assert v2_geometry(512, 256, 4) == {
        "segments": 2,
        "segment_tokens": 256,
        "computed_segments": 2,
        "slots": 512,
        "batched": False,
    }
    # five segments fill one group of four and one slot of a second group, which is computed in full
    assert v2_geometry(1280, 256, 4)["computed_segments"] == 8 and v2_geometry(1280, 256, 4)["batched"]


def test_cost_model_predicts_the_recorded_speedups():
    args = prepare(parse_args([]))
    predicted = {seq: cost_model(args, seq) for seq in (512, 2048, 8192)}
    # benchmarks/README.md: "The cost model predicts 1.614x at 2048 and 2.060x at 8192"
    assert round(predicted[2048]["v2"]["predicted_speedup"], 3) == 1.614
    assert round(predicted[8192]["v2"]["predicted_speedup"], 3) == 2.060
    assert round(predicted[2048]["v1"]["predicted_speedup"], 3) == 1.423
    assert predicted[2048]["llama"]["predicted_speedup"] == 1.0
    assert (
        predicted[2048]["v2"]["macs_per_token"] == 6_622_208
        and predicted[2048]["llama"]["macs_per_token"] == 10_688_000
    )
    for costs in predicted.values():
        for name in args.cost_models:
            assert math.isclose(sum(costs[name]["fractions"].values()), 1.0)
    assert predicted[512]["geometry"]["v1"]["coverage"] == 1.125
    assert predicted[2048]["geometry"]["v2"] == {
        "segments": 8,
        "segment_tokens": 256,
        "computed_segments": 8,
        "slots": 2048,
        "batched": True,
        "coverage": 1.0,
    }


def _stats(tokens_per_s, min_s):
    return {"tokens_per_s": tokens_per_s, "median_s": 1.0, "min_s": min_s, "max_s": min_s * 1.1}


def test_report_text_from_fixed_numbers(capsys):
    args = prepare(parse_args(["--models", "v2", "llama", "--seq-lens", "2048"]))
    params = {"v2": 7_542_016, "llama": 7_544_064}
    costs = {2048: cost_model(args, 2048)}
    train = {2048: {"v2": _stats(1414.0, 0.50), "llama": _stats(867.0, 0.80)}}
    memory = {
        "2048": {
            "v2": {"step_delta_mib": 401.6, "peak_mib": 900.0},
            "llama": {"step_delta_mib": 477.0, "peak_mib": 1000.0},
        }
    }
    moa = {
        "experts": 8,
        "top_k": 2,
        "params": {"moa_attention": 591_872, "dense_attention": 262_144},
        "seq": {512: {"attention_ratio": 1.096, "layer_ratio": 1.05}},
    }
    rows, verdicts = report(args, params, costs, train, memory, None, moa, None)
    text = capsys.readouterr().out
    assert verdicts == {
        "v2_train_speed@2048 (>=1.50)": True,
        "v2_train_memory@2048 (<1.00)": True,
        "moa_vs_dense_attention@512 (<=1.30)": True,
    }
    assert [row[0] for row in rows] == [
        "train tok/s @2048",
        "step mem MiB train @2048",
        "  process peak MiB train @2048",
    ]
    assert "train tok/s @2048                   1414.0       867.0    1.631x  v2 >=1.50 PASS  v2 min-time 1.600" in text
    assert "params: v2 7,542,016,  llama 7,544,064 (+0.03 %)   (reference v2, tolerance ±3 %)" in text
    assert "sizes: " + describe_sizes(args) in text
    assert "  seq 2048   v2       6.62 M  " in text and "predicted speedup 1.614x" in text
    assert "  seq 512    attention MoA/dense 1.096x  <=1.30 PASS" in text
    assert "WARNING" not in text  # max/min 1.1 is a quiet machine
    ratios = ratios_over_llama(args, train, memory, None)
    assert ratios["v2"]["train_tokens_per_s@2048"] == pytest.approx(1414.0 / 867.0)
    assert ratios["v2"]["train_tokens_per_s_min_time@2048"] == pytest.approx(1.6)
    assert ratios["v2"]["step_memory@2048"] == pytest.approx(401.6 / 477.0)


def test_v3_summary_from_fixed_numbers():
    args = SimpleNamespace(context=1024, encoder_threads=[1, 2], timer="process")
    results = {
        "cache": {"ratio": 0.140625, "pass": True},
        "decode": {
            "ratio": 0.395,
            "pass": True,
            "ratio_preallocated": 1.085,
            "pass_preallocated": False,
            "median_s": {"MLA expanded (absorb=False)": 0.4, "MHA, same decoder": 0.1},
        },
        "encoder": {
            "load_1t": 1.0,
            "load_2t": 2.5,
            "1t/128x64x32": {
                "paths_forward": {"ratio": 0.9, "min_ratio": 0.95},
                "encoder_forward": {"ratio": 1.0, "min_ratio": 1.0},
            },
        },
    }
    lines = []
    summary(args, lines.append, results)
    body = [line.rstrip() for line in lines[3:]]
    assert body[0] == f"{'KV-cache B/token, SLAM v3 / MHA':<56}   0.141  <= 0.20  PASS"
    assert body[2].startswith("  same, both caches preallocated") and body[2].endswith("MISS")
    assert body[3] == f"{'  (reference) expanded MLA / MHA':<56}   4.000"
    assert body[4] == f"{'seq/batched paths fwd, 1t/128x64x32 (min 0.95)':<56}   0.900  >= 1.50  MISS"
    assert body[5] == f"{'seq/batched whole encoder fwd, 1t/128x64x32 (min 1.00)':<56}   1.000"
    # only the 2-thread rows are wall-clock times, so only their load is quoted
    assert len(body) == 7 and body[6].endswith("load average when they started: 2 threads: 2.50)")


def test_v3_paths_shapes():
    assert grid_for(16) == (4, 4) and grid_for(12) == (3, 4) and grid_for(7) == (1, 7)
    config = SimpleNamespace(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size=512,
        encoder_layers=2,
    )
    tokens = 2 * 64
    per_layer = 2 * tokens * 128 * (2 * 4 * 32 + 2 * 32) + 2 * tokens * 3 * 128 * 512 + 4 * 2 * 4 * 64 * 64 * 32
    assert paths_flops(config, 2, 64) == 4 * 2 * per_layer


def test_preallocated_cache_layer_appends_in_place_and_crops():
    keys, values = torch.randn(2, 1, 5, 8), torch.randn(2, 1, 5, 4)
    layer = PreallocatedLayer(keys, values, capacity=7)
    buffer = layer.key_buffer.data_ptr()
    new_k, new_v = torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 4)
    out_k, out_v = layer.update(new_k, new_v)
    assert out_k.shape == (2, 1, 7, 8) and out_v.shape == (2, 1, 7, 4)
    assert torch.equal(out_k[:, :, 5:], new_k) and torch.equal(out_k[:, :, :5], keys)
    assert layer.key_buffer.data_ptr() == buffer  # no reallocation
    with pytest.raises(RuntimeError, match="full"):
        layer.update(new_k, new_v)
    cache = DynamicCache()
    cache.layers = [layer]
    crop(cache, 5)
    assert layer.length == 5 and torch.equal(layer.keys, keys)


def test_mla_layer_cache_bytes_and_absorbed_equals_expanded():
    args = SimpleNamespace(
        batch_size=2,
        context=8,
        hidden_size=64,
        num_heads=4,
        kv_lora_rank=32,
        q_lora_rank=None,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        attn="sdpa",
        steps=2,
        repeats=1,
        device="cpu",
        dtype="float32",
        timer="wall",
        seed=0,
    )
    results = bench_mla(args)
    # one layer, fp32: MLA caches the latent (kv_lora_rank) + the shared RoPE key; MHA caches K and V
    assert results["bytes_per_token"] == {"MLA absorbed": 160.0, "MLA expanded": 160.0, "MHA": 512.0}
    assert results["params"]["MHA"] == 4 * 64 * 64
    assert results["max_diff"] < 1e-5
    assert set(results["times"]) == {"MLA absorbed", "MLA expanded", "MHA"}
