"""The benchmark model zoo (slam_hf/bench/models.py): every model builds, trains, is scored and measured alike."""

import pytest
import torch
import torch.nn.functional as F

from slam_hf.bench.models import (
    BENCH_MODELS,
    MODEL_NAMES,
    build_config,
    build_model,
    cache_bytes,
    forward_inputs,
    lm_batch,
    lm_loss,
    next_token_logits_and_targets,
)
from slam_hf.bench.parameters import active_parameters, parameter_usage

torch.set_num_threads(1)

SMOKE = dict(
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    num_hidden_layers=4,
    max_position_embeddings=32,
    num_experts=4,
    num_experts_per_tok=2,
)
PUBLISHED = dict(
    hidden_size=512,
    num_attention_heads=16,
    intermediate_size=2048,
    num_hidden_layers=6,
    max_position_embeddings=128,
    num_experts=8,
    num_experts_per_tok=2,
)
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
VOCAB = 500
MOE = ("mixtral", "deepseek_v3", "jamba", "hunyuan_moe", "slam_v2")
# MoE models whose training loss adds a balancing term: loss = CE + coef * aux_loss
AUX_COEF = {"mixtral": "router_aux_loss_coef", "jamba": "router_aux_loss_coef", "slam_v2": "router_aux_loss_coef"}


def smoke(name, **shape):
    return build_model(name, {**SMOKE, **shape}, VOCAB, seed=0, **IDS)


def rows(batch=2, length=32, seed=0):
    # ids >= 6 keep clear of the special tokens (SLAM v3 reads id 5 as an image placeholder)
    return torch.randint(6, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def expert_params(name, config):
    """Routed-expert parameters, computed from the config (not from parameter names)."""
    h, i = config.hidden_size, config.intermediate_size
    if name == "slam_v2":  # attention experts: q_proj (H -> eh * d) and o_proj (eh * d -> H)
        return config.moa_num_experts * 2 * h * config.moa_expert_heads * config.head_dim
    layers = config.num_hidden_layers
    if name == "deepseek_v3":
        layers -= config.first_k_dense_replace
        i = config.moe_intermediate_size
    if name == "jamba":
        layers = sum(n > 1 for n in config.layers_num_experts)
    return layers * config.num_local_experts * 3 * h * i


def top_k_of(config):
    return config.moe_topk if hasattr(config, "moe_topk") else config.num_experts_per_tok


def test_registry():
    assert MODEL_NAMES == (
        "slam_v1",
        "slam_v2",
        "slam_v3",
        "slam_loop",
        "llama",
        "mixtral",
        "deepseek_v3",
        "jamba",
        "hunyuan_dense",
        "hunyuan_moe",
    )
    for name, spec in BENCH_MODELS.items():
        assert spec["family"] == ("slam" if name.startswith("slam_") else "baseline")
        assert spec["objective"] == ("prefix_to_continuation" if name == "slam_v3" else "causal_lm")
        assert spec["label"] and len(spec["notes"]) > 80


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trains_and_scores(name):
    model = smoke(name)
    assert type(model).__name__ == BENCH_MODELS[name]["class_name"]
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight  # never tied
    x = rows()
    logits, targets = next_token_logits_and_targets(name, model, x)
    scored = 16 if name == "slam_v3" else 31
    assert logits.shape == (2 * scored, VOCAB) and targets.shape == (2 * scored,)
    out = model(**lm_batch(name, model, x))
    ce = F.cross_entropy(logits, targets)
    expected = ce
    if name in AUX_COEF:
        assert out.aux_loss is not None
        expected = ce + getattr(model.config, AUX_COEF[name]) * out.aux_loss
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lm_loss(name, model, x), ce)
    # the continuation span scores the same tokens for every model
    _, cont = next_token_logits_and_targets(name, model, x, span="continuation")
    assert torch.equal(cont, x[:, 16:].reshape(-1))

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(**lm_batch(name, model, x)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_generate(name):
    model = smoke(name).eval()
    x = rows(batch=1)
    with torch.no_grad():
        logits = model(**forward_inputs(name, model, x), use_cache=False).logits
        assert logits.shape == (1, 16 if name == "slam_v3" else 32, VOCAB)
        if name == "slam_v3":  # the explicit decoder inputs are the ones the model derives from the labels
            batch = lm_batch(name, model, x)
            del batch["decoder_input_ids"]
            torch.testing.assert_close(model(**batch).loss, model(**lm_batch(name, model, x)).loss)
        # greedy generation with a cache (transformers 5.10.1 fails here if router losses are on in the config)
        out = model.generate(input_ids=x[:, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] == (1 + 4 if name == "slam_v3" else 8 + 4)


def test_structure_follows_shape():
    configs = {name: build_config(name, PUBLISHED, 10000, **IDS) for name in MODEL_NAMES}
    for name, config in configs.items():
        assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (512, 16, 2048), name
        assert config.vocab_size == 10000 and config.tie_word_embeddings is False, name
    for name in ("slam_v1", "slam_v2", "llama", "mixtral", "deepseek_v3", "jamba", "hunyuan_dense", "hunyuan_moe"):
        assert configs[name].num_hidden_layers == 6, name
    loop = configs["slam_loop"]  # 6 unique layers, the core of 4 run twice: 10 layers (and cache layers) per token
    assert (loop.prelude_layers, loop.core_layers, loop.coda_layers, loop.loop_max_iterations) == (1, 4, 1, 2)
    assert loop.num_hidden_layers == len(loop.layer_schedule) == 10
    assert (loop.num_key_value_heads, loop.mlp_type, loop.rope_theta) == (16, "swiglu", 1e4)
    assert (loop.loop_iteration_sampling, loop.loop_confidence_loss_weight, loop.loop_exit_criterion) == (
        "fixed",
        0.0,
        "none",
    )
    assert configs["slam_v1"].ef_cycles == 2 and configs["slam_v1"].ef_segment_length == 64
    assert configs["slam_v1"].ef_segment_overlap == 16
    assert configs["slam_v2"].ef_cycles == 4 and configs["slam_v2"].ef_segment_length == 32
    v3 = configs["slam_v3"]
    assert (v3.encoder_layers, v3.decoder_layers, v3.kv_lora_rank, v3.qk_rope_head_dim) == (3, 3, 128, 16)
    assert configs["jamba"].layers_block_type == ["mamba"] * 3 + ["attention"] + ["mamba"] * 2
    assert configs["jamba"].layers_num_experts == [1, 8, 1, 8, 1, 8]


def test_published_shape_parameters():
    """Meta-device builds at the published shape; Llama's count checked against the formula."""
    counts = {}
    for name in MODEL_NAMES:
        with torch.device("meta"):
            model = build_model(name, PUBLISHED, 10000, seed=0, **IDS)
        counts[name] = (model.num_parameters(), active_parameters(name, model))
    v, h, i, layers = 10000, 512, 2048, 6
    assert counts["llama"][0] == 2 * v * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h
    assert counts["slam_v1"][0] == counts["llama"][0]  # same six layers' weights, EF windows cost nothing
    # the loop's six unique layers are Llama's; its unused confidence head (norm + hidden -> 1) is not active
    assert counts["slam_loop"] == (counts["llama"][0] + 2 * h + 1, counts["llama"][0])
    print({name: f"{total:,} / {active:,}" for name, (total, active) in counts.items()})


@pytest.mark.parametrize("name", ("llama", "hunyuan_dense", *MOE))
def test_active_parameters(name):
    model = smoke(name)
    total, active = model.num_parameters(), active_parameters(name, model)
    if name in ("llama", "hunyuan_dense"):
        assert active == total
        return
    config = model.config
    if name == "slam_v2":
        experts, top_k = config.moa_num_experts, config.moa_top_k
    else:
        experts, top_k = config.num_local_experts, top_k_of(config)
    routed = expert_params(name, config)
    expected = total - routed * (1 - top_k / experts)
    if name == "slam_v2":  # 2 cycles over 4 shared blocks: each token passes 2 of them
        block = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.fusion.blocks.0."))
        expected -= 4 * block * (1 - 2 / 4)
    assert active < total and active == round(expected)


def test_slam_loop_counts_its_core_once_and_its_idle_exit_head_not_at_all():
    """The shared core's weights count once however many iterations reuse them; the confidence head counts only when
    the confidence exit runs it; training with the bench's settings gives the head no gradient."""
    model = smoke("slam_loop")
    usage = parameter_usage("slam_loop", model)
    head = {n for n in usage if n.startswith(("model.confidence_head.", "model.confidence_norm."))}
    assert head and all(usage[n][1] == 0.0 for n in head)
    assert all(share == 1.0 for n, (_, share) in usage.items() if n not in head)
    assert active_parameters("slam_loop", model) == model.num_parameters() - sum(usage[n][0] for n in head)
    model(**lm_batch("slam_loop", model, rows())).loss.backward()
    for pname, param in model.named_parameters():
        assert (param.grad is None) == (pname in head), pname
    model.config.loop_exit_criterion, model.config.loop_exit_threshold = "confidence", 0.9
    assert active_parameters("slam_loop", model) == model.num_parameters()


def test_slam_v1_shares_and_v3_unused_parameters():
    # SLAM v1 at 128 tokens, windows 64 / 16: A covers 0-63 and 96-127 (75 %), B 48-111 (50 %)
    with torch.device("meta"):
        v1 = build_model("slam_v1", PUBLISHED, 10000, seed=0, **IDS)
    shares = {n.split(".blocks.")[1][0]: s for n, (_, s) in parameter_usage("slam_v1", v1).items() if ".blocks." in n}
    assert shares == {"0": 0.75, "1": 0.5}
    # SLAM v3 on text: exactly the weights counted inactive get no gradient
    model = smoke("slam_v3")
    model(**lm_batch("slam_v3", model, rows())).loss.backward()
    usage = parameter_usage("slam_v3", model)
    for pname, param in model.named_parameters():
        grad = torch.zeros_like(param) if param.grad is None else param.grad
        if pname.endswith("concat_proj.weight"):  # input columns: text, image, shared, cross-modal paths
            blocks = grad.view(grad.shape[0], 4, -1).abs().sum(dim=(0, 2))
            assert blocks[0] > 0 and blocks[2] > 0 and blocks[1] == 0 and blocks[3] == 0
            assert usage[pname][1] == 0.5
        else:
            assert (usage[pname][1] == 0.0) == bool((grad == 0).all()), pname


def test_cache_bytes():
    x = rows(batch=2, length=32)
    for name in ("llama", "slam_v1", "mixtral", "hunyuan_dense"):
        model = smoke(name)
        c = model.config
        assert cache_bytes(model, name, x) == {
            "per_token": 2 * 4 * c.num_attention_heads * 8 * 4,
            "fixed": 0,
            "lengths": [16, 32],
            "bytes": [16 * 1024, 32 * 1024],
        }
    jamba = smoke("jamba")
    c = jamba.config
    measured = cache_bytes(jamba, "jamba", x)
    inner = c.mamba_expand * c.hidden_size
    assert measured["per_token"] == 1 * 2 * 4 * 8 * 4  # one attention layer of four
    # three Mamba layers' conv + SSM states; not the 0-dim int64 position counter each one holds in transformers
    # 5.25 (3 x 8 bytes per batch of 2 = the 12 bytes once measured here): bookkeeping, not state
    assert measured["fixed"] == 3 * inner * (c.mamba_d_conv + c.mamba_d_state) * 4 > 0

    deepseek = smoke("deepseek_v3")
    c = deepseek.config
    from transformers.models.deepseek_v3 import modeling_deepseek_v3

    if hasattr(modeling_deepseek_v3.DeepseekV3Attention, "expand_kv"):  # newer transformers: the latent is cached
        per_layer = c.kv_lora_rank + c.qk_rope_head_dim
    else:  # transformers 5.10: expanded per-head keys (nope + rope) and values
        per_layer = c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim)
    assert cache_bytes(deepseek, "deepseek_v3", x)["per_token"] == 4 * per_layer * 4

    v3 = smoke("slam_v3")
    c = v3.config
    measured = cache_bytes(v3, "slam_v3", x)
    assert measured["per_token"] == c.decoder_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    # cross-attention K/V over the 16-token encoder memory: fixed, not per generated token
    assert measured["fixed"] == c.decoder_layers * 2 * c.num_key_value_heads * c.head_dim * 16 * 4

    v2 = smoke("slam_v2")  # 3 full-width cache layers + the MoA layer's shared K/V (heads / top_k)
    assert cache_bytes(v2, "slam_v2", x)["per_token"] == 3 * 2 * 4 * 8 * 4 + 2 * 2 * 8 * 4

    loop = smoke("slam_loop")  # per-iteration core cache: prelude + 2 iterations x 2 core layers + coda = 6 layers
    assert cache_bytes(loop, "slam_loop", x) == {
        "per_token": 6 * 2 * 4 * 8 * 4,
        "fixed": 0,
        "lengths": [16, 32],
        "bytes": [6 * 16 * 256, 6 * 32 * 256],
    }


def test_seed_is_the_only_randomness():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = smoke("mixtral")
    assert torch.equal(torch.rand(3), before)  # the caller's random state is untouched
    b = smoke("mixtral")
    c = build_model("mixtral", SMOKE, VOCAB, seed=1, **IDS)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_minimum_depth():
    for name in ("slam_v3", "deepseek_v3", "jamba", "llama"):
        model = smoke(name, num_hidden_layers=2)
        assert model(**lm_batch(name, model, rows(length=8))).loss.isfinite()
    with pytest.raises(ValueError, match=r"slam_v1 needs num_hidden_layers >= 4"):
        smoke("slam_v1", num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"slam_v2 needs num_hidden_layers >= 3"):
        smoke("slam_v2", num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"slam_v1 needs an even"):
        smoke("slam_v1", num_hidden_layers=5)
    loop = smoke("slam_loop", num_hidden_layers=3)  # the smallest loop: a core of one layer
    assert loop.config.core_layers == 1 and loop(**lm_batch("slam_loop", loop, rows(length=8))).loss.isfinite()
    with pytest.raises(ValueError, match=r"slam_loop needs num_hidden_layers >= 3, got 2 \(1 prelude layer"):
        smoke("slam_loop", num_hidden_layers=2)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown benchmark model 'gpt2'.*slam_v1, slam_v2.*hunyuan_moe"):
        smoke("gpt2")
    shape = dict(SMOKE)
    del shape["intermediate_size"]
    with pytest.raises(ValueError, match="intermediate_size"):
        build_model("llama", shape, VOCAB, seed=0, **IDS)
    for key, value in (("hidden_size", 0), ("num_experts", 2.5), ("num_attention_heads", True)):
        with pytest.raises(ValueError, match=key):
            smoke("llama", **{key: value})
    with pytest.raises(ValueError, match="hidden_sizes"):
        smoke("llama", hidden_sizes=32)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        smoke("mixtral", num_experts_per_tok=8)
    with pytest.raises(ValueError, match="unknown benchmark model"):
        lm_batch("bart", None, rows())
