"""The model zoo of `slam-hf bench`: every SLAM model and real transformers baselines, built from config.

One common shape (hidden size, heads, FFN width, layers, vocabulary, longest sequence, experts) is mapped onto
each architecture by `build_model`; `BENCH_MODELS[name]["notes"]` says how, and `COMMON_NOTES` states the rules
shared by every model. Nothing is downloaded: every model is initialised from its config with a fixed seed.

The functions the benchmark loop needs treat every model alike:

    model = build_model("mixtral", shape, vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, seed=0)
    loss = model(**lm_batch("mixtral", model, input_ids)).loss          # training loss (incl. balancing terms)
    logits, targets = next_token_logits_and_targets("mixtral", model, input_ids)   # held-out CE / accuracy
    cache_bytes(model, "mixtral", input_ids)                             # measured cache bytes per token

Parameters used per token are counted in `slam_hf.bench.parameters`, measurement primitives (timing, peak memory,
cache tensor bytes) live in `slam_hf.bench.measure`.

SLAM v3 is an image+text encoder-decoder; on text it is benchmarked as prefix -> continuation (the encoder
reads the first half of every row, the decoder predicts the second half): `BENCH_MODELS[...]["objective"]`.

Not part of the Hub remote code: this module may import anything from transformers and slam_hf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .measure import cache_nbytes

ROPE_THETA = 10000.0
SHAPE_REQUIRED = (
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "num_hidden_layers",
    "max_position_embeddings",
)
SHAPE_DEFAULTS = {"num_experts": 8, "num_experts_per_tok": 2}
OBJECTIVES = ("causal_lm", "prefix_to_continuation")
# slam_loop: core iterations (the smallest loop), so that its unique layers, and parameters, match Llama's.
LOOP_ITERATIONS = 2

COMMON_NOTES = (
    "Every model gets the same hidden size, attention heads, FFN width (`intermediate_size`, the inner width of a "
    "SwiGLU MLP: gate, up and down projections), depth, vocabulary and longest sequence; multi-head attention "
    "(key/value heads = heads) wherever a model has softmax attention; RoPE with theta 1e4 wherever a model uses "
    "RoPE; RMSNorm, pre-norm, no biases in attention/MLP projections, dropout 0 everywhere, initializer range 0.02, "
    "float32. Input embeddings and the LM head are never tied (every architecture here allows both; the baselines' "
    "published checkpoints are untied, and tying in some models but not others would change the parameter counts by a "
    "whole vocab x hidden matrix). MoE models have `num_experts` routed experts, each a SwiGLU MLP of width "
    "`intermediate_size`, with top-`num_experts_per_tok` routing; what each adds (shared experts, dense layers, "
    "balancing losses) is in its notes. SLAM models use the same layer recipe as Llama (RMSNorm, SwiGLU, RoPE, no "
    "biases) instead of the published post-LayerNorm + GELU, so only the SLAM-specific structure differs. Active "
    "parameters = parameters a token's prediction actually uses: routed experts count top_k / num_experts, "
    "position-routed SLAM blocks count by the share of positions that use them, parameters that text-only input never "
    "reaches or whose output it zeroes (SLAM v3's vision tower, image and cross-modal paths, fusion cross-modal "
    "attention) count 0, weights a token reuses (the latent loop's shared core, run once per iteration) count once, "
    "although its compute grows with every reuse; embeddings and the LM head count fully. KV-cache bytes are "
    "measured from the cache tensors of a real forward pass (float32)."
)

BENCH_MODELS: dict[str, dict] = {
    "slam_v1": {
        "label": "SLAM v1 (overlapping encoder-fusion windows)",
        "class_name": "SlamV1ForCausalLM",
        "family": "slam",
        "objective": "causal_lm",
        "min_layers": 4,
        "notes": (
            "Depth L = 2 + 2 x ef_cycles: one full-attention layer, ef_cycles encoder-fusion cycles of two blocks (A, "
            "B, own weights per cycle), one full-attention layer; L must be even and >= 4 (L = 6 -> 2 cycles). EF "
            "windows of w = max_position_embeddings / 2 tokens overlapping by w / 4 (64 / 16 at 128 tokens: windows A "
            "0-63, B 48-111, A 96-127, so 25 % of positions are covered twice and take the mean of both blocks); the "
            "published geometry is 60 % / 20 % of the length, we use half the length so every EF block sees at most "
            "half the context, which is where v1's saving comes from. Pre-norm: the published post-norm stays on the "
            "unigram plateau at small scale (README, Known limitations). Causal masks inside windows. Active "
            "parameters: an EF block counts by the share of positions 0 .. max_position_embeddings-1 whose windows "
            "use it (1.25 of the 2 blocks per cycle at 128 tokens). Cache: every EF block caches K/V of every token, "
            "like a full layer."
        ),
    },
    "slam_v2": {
        "label": "SLAM v2 (cyclic segment fusion + attention experts)",
        "class_name": "SlamV2ForCausalLM",
        "family": "slam",
        "objective": "causal_lm",
        "min_layers": 3,
        "notes": (
            "Depth L = 1 + ef_cycles + 1: one full-attention layer, ef_cycles fusion cycles, one "
            "mixture-of-attention-experts (MoA) layer; L >= 3 (L = 6 -> 4 cycles, so every segment meets all four "
            "blocks). Four blocks shared by all cycles over fixed segments of max_position_embeddings / 4 tokens (32 "
            "at 128), each attending inside its segment, inputs re-injected every cycle. MoA layer: num_experts "
            "attention experts (own q_proj/o_proj, heads / num_experts_per_tok query heads each, so a token's routed "
            "attention is as wide as a dense layer), top-num_experts_per_tok routing, one shared k_proj/v_proj with "
            "heads / num_experts_per_tok heads (so its KV cache is that much smaller than a full layer's), followed "
            "by a dense SwiGLU MLP; no expert MLPs. Balancing loss coefficient 0.01 (SLAM v2's default) is part of "
            "the training loss; held-out loss is the plain CE. Pre-norm (published post-norm stalls at small scale). "
            "Active parameters: MoA q/o experts count top_k / num_experts; the four Level-2 blocks count "
            "min(ef_cycles, 4) / 4 (each cycle sends a token through one block)."
        ),
    },
    "slam_v3": {
        "label": "SLAM v3 (parallel-path encoder + MLA decoder, text-only)",
        "class_name": "SlamV3ForConditionalGeneration",
        "family": "slam",
        "objective": "prefix_to_continuation",
        "min_layers": 2,
        "notes": (
            "An image+text encoder-decoder used text-only as prefix -> continuation: the encoder reads the first half "
            "of each row, the decoder predicts the second half behind <s> (bos). Only the continuation is scored, so "
            "every scored token has at least half a row of context; the causal models' default loss scores positions "
            "1..L-1 (use span='continuation' of next_token_logits_and_targets for a like-for-like number). Depth: "
            "encoder_layers = L // 2 and decoder_layers = L - L // 2 (6 -> 3 + 3), but each encoder layer is four "
            "parallel path layers (text, image, shared, cross-modal), followed by a fusion node (4H -> H concat "
            "projection + one attention layer + MLP), and each decoder layer has MLA self-attention, cross-attention "
            "and an MLP, so v3 holds far more weights than an L-layer decoder (see total parameters). MLA dims as for "
            "DeepSeek-V3: kv_lora_rank = 4 x head_dim, qk_rope_head_dim = head_dim / 2, qk_nope_head_dim = v_head_dim "
            "= head_dim, direct q_proj (no q_lora_rank). Cross-attention and encoder attention are MHA (v3's default "
            "is heads / 4 KV heads). A minimal vision tower (1 layer, width 8, patch 4, linear projector; 5,664 "
            "parameters at hidden 512) exists because the architecture requires one; it never runs on text, counts in "
            "total parameters and not in active ones. On text-only input the image and cross-modal paths are skipped, "
            "and the fusion node's cross-modal attention is computed but its output zeroed (FLOPs spent, no effect), "
            "so those weights and the image/cross-modal half of the concat projection are not active either "
            "(verified: exactly these get no gradient). The input embedding table is shared by encoder and decoder; "
            "the LM head is separate. Cache: the decoder's MLA latent (kv_lora_rank + qk_rope_head_dim per token and "
            "layer) grows with generated tokens; the cross-attention K/V over the encoder memory depend on the prompt "
            "length, not the generated length, and are counted in the fixed part."
        ),
    },
    "slam_loop": {
        "label": "SLAM latent loop (prelude + shared core looped twice + coda)",
        "class_name": "SlamLoopForCausalLM",
        "family": "slam",
        "objective": "causal_lm",
        "min_layers": 3,
        "notes": (
            "L unique layers, so the weights match Llama's: 1 prelude layer, a core of L - 2 layers, 1 coda layer "
            "(L = 6 -> 1 + 4 + 1). The core runs loop_max_iterations = 2 times, the smallest loop, with the prelude "
            "output added back before each iteration (loop_injection 'add'), so a token passes 1 + 2 (L - 2) + 1 = "
            "2L - 2 layers: 10 at L = 6, 6 at L = 4. Compute per token is therefore (2L - 2) / L x Llama's layer "
            "compute (1.67x at L = 6, 1.5x at L = 4) for the same parameters: this row compares at equal parameters, "
            "not equal compute, and the throughput, latency and generation columns carry the extra iterations. "
            "Trained at a fixed depth of 2 (loop_iteration_sampling 'fixed', gradients through both iterations) so "
            "every step costs the same and evaluation runs the depth that was trained (the loop's default draws the "
            "depth per step). The confidence head is not trained (loop_confidence_loss_weight 0; its input is "
            "detached, so training it would not change the language model) and no exit threshold is set, so every "
            "token runs both iterations in every measurement: the per-token early exit is the loop's inference "
            "feature, measured by the exit calibration of `slam-hf train` (slam_hf.training.loop), not here. "
            "Active parameters: the core's weights count once (iterating reuses them), the confidence head (hidden "
            "+ 1 weights and its RMSNorm) counts 0 because no exit runs it. Cache: loop_cache 'per_iteration', one "
            "set of core cache layers per iteration, so 2L - 2 layers of K/V per token (1.67x Llama's at L = 6; "
            "'shared' would keep L, every iteration then attending to earlier tokens' last-iteration K/V). The "
            "loop's own defaults (GQA with 2 KV heads, GeGLU) give way to the common rules: MHA, SwiGLU."
        ),
    },
    "llama": {
        "label": "Llama (standard transformer)",
        "class_name": "LlamaForCausalLM",
        "family": "baseline",
        "objective": "causal_lm",
        "min_layers": 1,
        "notes": (
            "The reference: L decoder layers of MHA + SwiGLU MLP (intermediate_size), RMSNorm pre-norm, RoPE theta "
            "1e4, untied head. Every parameter is active."
        ),
    },
    "mixtral": {
        "label": "Mixtral (sparse MoE transformer)",
        "class_name": "MixtralForCausalLM",
        "family": "baseline",
        "objective": "causal_lm",
        "min_layers": 1,
        "notes": (
            "Llama with every MLP replaced by a sparse MoE: num_experts SwiGLU experts of width intermediate_size, "
            "softmax router, top-num_experts_per_tok with renormalised weights, no shared expert, no dense layers. "
            "MHA (Mixtral's own default is 8 KV heads), RoPE theta 1e4 (its default is 1e6), no sliding window. The "
            "load-balancing loss (transformers' default coefficient 0.001) is part of the training loss: lm_batch "
            "passes output_router_logits=True; the config keeps it off so generate() does not compute it. Held-out "
            "loss is the plain CE."
        ),
    },
    "deepseek_v3": {
        "label": "DeepSeek-V3 (MLA + MoE with a shared expert)",
        "class_name": "DeepseekV3ForCausalLM",
        "family": "baseline",
        "objective": "causal_lm",
        "min_layers": 2,
        "notes": (
            "Multi-head latent attention with head_dim = hidden / heads: kv_lora_rank = 4 x head_dim (published: 512 "
            "= 4 x its 128 nope dims), qk_nope_head_dim = v_head_dim = head_dim, qk_rope_head_dim = head_dim / 2 "
            "(published 64 = 128 / 2), direct q_proj (q_lora_rank None; the published query bottleneck saves nothing "
            "at this width); query/key heads are therefore 1.5 x head_dim wide. First layer dense "
            "(first_k_dense_replace=1; published: 3 of 61) with a SwiGLU of width intermediate_size; every other "
            "layer is MoE: 1 shared expert + num_experts routed experts, all of width intermediate_size, sigmoid "
            "router, top-num_experts_per_tok with normalised weights, routed_scaling_factor 1.0 (published 2.5, tuned "
            "for 256 fine-grained experts), no group-limited routing (n_group = topk_group = 1; groups are a "
            "multi-device dispatch constraint). A token therefore runs 1 + top_k experts per MoE layer (Mixtral: "
            "top_k). No balancing: transformers implements neither DeepSeek's bias-update balancing "
            "(e_score_correction_bias stays 0) nor its sequence-wise aux loss. Cache, by transformers version: 5.23 "
            "caches the compressed latent (kv_lora_rank + qk_rope_head_dim per token and layer, 0.14 x MHA here); "
            "5.10.1 caches the expanded per-head keys (nope + rope dims) and values, 1.25 x MHA. cache_bytes measures "
            "whichever the installed version does; the report should name the version."
        ),
    },
    "jamba": {
        "label": "Jamba (Mamba/attention hybrid + MoE)",
        "class_name": "JambaForCausalLM",
        "family": "baseline",
        "objective": "causal_lm",
        "min_layers": 2,
        "notes": (
            "Mamba layers with one attention layer per min(8, L) layers (published 1 in 8: attn_layer_period = min(8, "
            "L), offset = period // 2; at L = 6 layer 3 is attention, the other five are Mamba); attention layers "
            "have no positional encoding (as published: Mamba carries order). Mamba: d_state 16, d_conv 4, expand 2, "
            "dt_rank ceil(hidden / 16). MoE on every other layer as published (expert_layer_period 2, offset 1: "
            "layers 1, 3, 5 at L = 6) with num_experts SwiGLU experts of width intermediate_size, "
            "top-num_experts_per_tok, no shared expert; the other layers have a dense SwiGLU of the same width. "
            "Balancing loss (transformers' default coefficient 0.001) in the training loss, requested by lm_batch as "
            "for Mixtral. Without the mamba-ssm/causal-conv1d kernels (CPU) transformers runs the slow PyTorch scan. "
            "Cache: attention K/V grow per token (one layer in six); Mamba conv and SSM states are fixed-size."
        ),
    },
    "hunyuan_dense": {
        "label": "HunYuan dense (transformer with QK-norm)",
        "class_name": "HunYuanDenseV1ForCausalLM",
        "family": "baseline",
        "objective": "causal_lm",
        "min_layers": 1,
        "notes": (
            "Llama-like decoder (MHA, SwiGLU of width intermediate_size, RMSNorm pre-norm, RoPE theta 1e4) plus "
            "RMSNorm on per-head queries and keys (QK-norm). head_dim is passed explicitly (= hidden / heads) because "
            "transformers' HunYuan configs leave it None and the attention reads it as given. Every parameter is "
            "active."
        ),
    },
    "hunyuan_moe": {
        "label": "HunYuan MoE (shared + routed experts, QK-norm)",
        "class_name": "HunYuanMoEV1ForCausalLM",
        "family": "baseline",
        "objective": "causal_lm",
        "min_layers": 1,
        "notes": (
            "HunYuan dense with every MLP replaced by 1 always-on shared SwiGLU MLP + num_experts routed SwiGLU "
            "experts, all of width intermediate_size, softmax router in float32, top-num_experts_per_tok with "
            "renormalised weights, so a token runs 1 + top_k experts per layer (as DeepSeek-V3's MoE layers). No "
            "balancing loss: transformers' HunYuan MoE has none. QK-norm; head_dim passed explicitly."
        ),
    },
}
MODEL_NAMES = tuple(BENCH_MODELS)


# --------------------------------------------------------------------------------------------------------------
# inputs


def _check_name(name) -> dict:
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; choose one of: {', '.join(MODEL_NAMES)}.")
    return BENCH_MODELS[name]


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def normalize_shape(shape) -> dict:
    """The common shape with defaults filled in, checked: a missing, unknown or invalid key raises a ValueError
    naming it."""
    if not isinstance(shape, Mapping):
        raise ValueError(f"`shape` must be a mapping of {', '.join(SHAPE_REQUIRED)}; got {type(shape).__name__}.")
    known = (*SHAPE_REQUIRED, *SHAPE_DEFAULTS)
    unknown = [key for key in shape if key not in known]
    if unknown:
        raise ValueError(f"unknown shape key(s) {', '.join(map(repr, unknown))}; the shape takes {', '.join(known)}.")
    missing = [key for key in SHAPE_REQUIRED if key not in shape]
    if missing:
        raise ValueError(f"shape is missing {', '.join(map(repr, missing))} (needed: {', '.join(SHAPE_REQUIRED)}).")
    out = {**SHAPE_DEFAULTS, **shape}
    for key in known:
        if not _positive_int(out[key]):
            raise ValueError(f"shape[{key!r}] must be a positive integer, got {out[key]!r}.")
    if out["hidden_size"] % out["num_attention_heads"]:
        raise ValueError(
            f"shape['hidden_size'] ({out['hidden_size']}) must be divisible by shape['num_attention_heads'] "
            f"({out['num_attention_heads']})."
        )
    if (out["hidden_size"] // out["num_attention_heads"]) % 2:
        raise ValueError(
            f"hidden_size / num_attention_heads = {out['hidden_size'] // out['num_attention_heads']} must be even "
            "(RoPE rotates pairs); change shape['hidden_size'] or shape['num_attention_heads']."
        )
    if out["num_experts"] < 2:
        raise ValueError(f"shape['num_experts'] must be >= 2 (a mixture needs two experts), got {out['num_experts']}.")
    if out["num_experts_per_tok"] > out["num_experts"]:
        raise ValueError(
            f"shape['num_experts_per_tok'] ({out['num_experts_per_tok']}) cannot exceed shape['num_experts'] "
            f"({out['num_experts']})."
        )
    return out


def _check_layers(name, layers):
    spec = BENCH_MODELS[name]
    if layers < spec["min_layers"]:
        raise ValueError(
            f"{name} needs num_hidden_layers >= {spec['min_layers']}, got {layers} "
            f"({_MIN_LAYERS_WHY[name]}); the smallest shape every model accepts has 4 layers."
        )
    if name == "slam_v1" and layers % 2:
        raise ValueError(
            f"slam_v1 needs an even num_hidden_layers (2 full-attention layers + 2 blocks per EF cycle), got {layers}."
        )


_MIN_LAYERS_WHY = {
    "slam_v1": "2 full-attention layers + 2 blocks per encoder-fusion cycle, at least one cycle",
    "slam_v2": "1 full-attention layer + at least one fusion cycle + 1 attention-experts layer",
    "slam_v3": "at least one encoder layer and one decoder layer",
    "slam_loop": "1 prelude layer + at least one core layer + 1 coda layer",
    "deepseek_v3": "a dense first layer and at least one MoE layer",
    "jamba": "at least one Mamba layer and one attention layer",
    "llama": "",
    "mixtral": "",
    "hunyuan_dense": "",
    "hunyuan_moe": "",
}


def mla_dims(head_dim: int) -> dict:
    """MLA sizes for SLAM v3 and DeepSeek-V3, relative to the MHA head width (DeepSeek-V3's published ratios)."""
    rope = max(2, (head_dim // 2) // 2 * 2)  # even, half the head
    return {
        "kv_lora_rank": 4 * head_dim,
        "qk_rope_head_dim": rope,
        "qk_nope_head_dim": head_dim,
        "v_head_dim": head_dim,
    }


def slam_v1_geometry(max_position_embeddings: int) -> tuple[int, int]:
    """(ef_segment_length, ef_segment_overlap): windows of half the longest sequence overlapping by a quarter."""
    window = max(2, max_position_embeddings // 2)
    return window, window // 4


def jamba_layout(layers: int) -> dict:
    period = min(8, layers)
    return {
        "attn_layer_period": period,
        "attn_layer_offset": period // 2,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
    }


# --------------------------------------------------------------------------------------------------------------
# building


def build_config(name, shape, vocab_size, *, pad_token_id=0, bos_token_id=1, eos_token_id=2):
    """The transformers / slam_hf config `build_model` instantiates (see the module notes for every choice)."""
    _check_name(name)
    s = normalize_shape(shape)
    if not _positive_int(vocab_size):
        raise ValueError(f"`vocab_size` must be a positive integer, got {vocab_size!r}.")
    for key, value in (("pad_token_id", pad_token_id), ("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size):
            raise ValueError(f"`{key}` must be a token id in [0, vocab_size={vocab_size}) or None, got {value!r}.")
    _check_layers(name, s["num_hidden_layers"])
    ids = {"pad_token_id": pad_token_id, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    common = {
        "vocab_size": vocab_size,
        "hidden_size": s["hidden_size"],
        "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_attention_heads"],
        "intermediate_size": s["intermediate_size"],
        "max_position_embeddings": s["max_position_embeddings"],
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        **ids,
    }

    if name.startswith("slam_"):
        return _slam_config(name, common, s)
    return _baseline_config(name, common, s)


def _slam_config(name, common: dict, s: dict):
    import slam_hf

    heads, layers, top_k = s["num_attention_heads"], s["num_hidden_layers"], s["num_experts_per_tok"]
    positions, bos_token_id = s["max_position_embeddings"], common["bos_token_id"]
    slam = {
        **common,
        "mlp_type": "swiglu",
        "norm_type": "rmsnorm",
        "norm_position": "pre",
        "position_embedding_type": "rope",
        "rope_theta": ROPE_THETA,
        "hidden_dropout": 0.0,
        "attention_bias": False,
        "mlp_bias": False,
    }
    if name == "slam_v1":
        window, overlap = slam_v1_geometry(positions)
        return slam_hf.SlamV1Config(
            **slam, ef_cycles=(layers - 2) // 2, ef_segment_length=window, ef_segment_overlap=overlap
        )
    if name == "slam_v2":
        if heads % top_k:
            raise ValueError(
                f"slam_v2 gives each attention expert num_attention_heads / num_experts_per_tok query heads; "
                f"{heads} heads are not divisible by num_experts_per_tok={top_k}."
            )
        return slam_hf.SlamV2Config(
            **slam,
            ef_cycles=layers - 2,
            ef_num_blocks=4,
            ef_segment_length=max(1, math.ceil(positions / 4)),
            moa_num_experts=s["num_experts"],
            moa_top_k=top_k,
            router_aux_loss_coef=0.01,
        )
    if name == "slam_loop":
        return slam_hf.SlamLoopConfig(
            **slam,
            prelude_layers=1,
            core_layers=layers - 2,
            coda_layers=1,
            loop_max_iterations=LOOP_ITERATIONS,
            loop_injection="add",
            loop_iteration_sampling="fixed",
            loop_backprop_iterations=LOOP_ITERATIONS,
            loop_confidence_loss_weight=0.0,
            loop_exit_criterion="none",
            loop_exit_threshold=None,
            loop_cache="per_iteration",
        )
    if bos_token_id is None:
        raise ValueError("slam_v3 starts the decoder with `bos_token_id`; pass one.")
    vision = slam_hf.SlamV3VisionConfig(
        patch_size=4,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=16,
        projector_type="linear",
        mlp_type="swiglu",
        norm_type="rmsnorm",
        norm_position="pre",
    )
    # image_token_id keeps v3's default 5: the SLAM tokenizer (train_bpe_tokenizer) reserves <image> as id 5,
    # a special token that text never produces, so text-only rows never contain a placeholder.
    return slam_hf.SlamV3Config(
        **slam,
        encoder_layers=layers // 2,
        decoder_layers=layers - layers // 2,
        fusion_num_latents=0,
        q_lora_rank=None,
        **mla_dims(s["hidden_size"] // heads),
        vision_config=vision,
        decoder_start_token_id=bos_token_id,
    )


def _baseline_config(name, common: dict, s: dict):
    import transformers

    layers, experts, top_k = s["num_hidden_layers"], s["num_experts"], s["num_experts_per_tok"]
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    common["num_hidden_layers"] = layers  # SLAM configs derive their own from the cycles / decoder layers
    rope = {"rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA}}
    if name == "llama":
        return transformers.LlamaConfig(**common, **rope, hidden_act="silu", attention_bias=False, mlp_bias=False)
    if name == "mixtral":
        return transformers.MixtralConfig(
            **common,
            **rope,
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            sliding_window=None,
            router_jitter_noise=0.0,
            router_aux_loss_coef=0.001,
        )
    if name == "deepseek_v3":
        mla = mla_dims(head_dim)
        return transformers.DeepseekV3Config(
            **common,
            **rope,
            **mla,
            head_dim=mla["qk_rope_head_dim"],
            q_lora_rank=None,
            moe_intermediate_size=s["intermediate_size"],
            n_shared_experts=1,
            n_routed_experts=experts,
            num_experts_per_tok=top_k,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
            norm_topk_prob=True,
            attention_bias=False,
        )
    if name == "jamba":
        return transformers.JambaConfig(
            **common,
            **jamba_layout(layers),
            num_experts=experts,
            num_experts_per_tok=top_k,
            router_aux_loss_coef=0.001,
            mamba_d_state=16,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_dt_rank="auto",
        )
    if name == "hunyuan_dense":
        return transformers.HunYuanDenseV1Config(**common, **rope, head_dim=head_dim, attention_bias=False)
    if name == "hunyuan_moe":
        return transformers.HunYuanMoEV1Config(
            **common, **rope, head_dim=head_dim, attention_bias=False, num_experts=experts, moe_topk=top_k
        )
    raise AssertionError(name)  # every name of BENCH_MODELS is handled above


def _model_class(name):
    class_name = BENCH_MODELS[name]["class_name"]
    if BENCH_MODELS[name]["family"] == "slam":
        import slam_hf

        return getattr(slam_hf, class_name)
    import transformers

    return getattr(transformers, class_name)


def build_model(name, shape, vocab_size, *, pad_token_id, bos_token_id, eos_token_id, seed) -> torch.nn.Module:
    """A freshly initialised benchmark model (float32, train mode) on the current default device.

    `shape`: hidden_size, num_attention_heads, intermediate_size, num_hidden_layers, max_position_embeddings,
    num_experts (default 8), num_experts_per_tok (default 2). Initialisation depends on `seed` alone and leaves the
    caller's random state untouched. Build under `with torch.device("meta"):` to count parameters without memory.
    Raises ValueError for an unknown name, a bad shape key, or a depth the architecture cannot take (with the minimum).
    """
    config = build_config(
        name, shape, vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id
    )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(name)(config)
    model.train()
    return model


# --------------------------------------------------------------------------------------------------------------
# the LM objective


def _split(input_ids):
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"`input_ids` must be (batch, length >= 2), got shape {tuple(input_ids.shape)}.")
    return input_ids.shape[1] // 2


def lm_batch(name, model, input_ids) -> dict:
    """Keyword arguments such that `model(**lm_batch(name, model, input_ids)).loss` is the training loss.

    Causal models: `input_ids` and `labels=input_ids` (the model shifts), plus `output_router_logits=True` for
    Mixtral and Jamba so that their balancing loss is part of the loss, as SLAM v2's always is (DeepSeek-V3 and
    HunYuan MoE have none in transformers). SLAM v3: `input_ids` = the first half of each row (encoder), `labels` =
    the second half, and `decoder_input_ids` = the labels shifted right behind <s> (what the model would derive from
    the labels itself; given explicitly so that the batch without `labels` is still a complete forward call).
    For a plain forward (latency) use `forward_inputs`, which leaves out labels and the balancing loss."""
    batch = forward_inputs(name, model, input_ids)
    if BENCH_MODELS[name]["objective"] == "prefix_to_continuation":
        batch["labels"] = input_ids[:, _split(input_ids) :].contiguous()
    else:
        batch["labels"] = input_ids
    if name in _ROUTER_LOSS_BY_REQUEST:
        batch["output_router_logits"] = True
    return batch


# transformers adds these models' balancing loss only when asked (`output_router_logits`). It is asked for in the
# training batch rather than in the config: with the config flag on, `generate` on transformers 5.10.1 computes the
# loss against the growing attention mask and fails (Mixtral: "size of tensor a (4) must match ... (0)").
_ROUTER_LOSS_BY_REQUEST = ("mixtral", "jamba")


def forward_inputs(name, model, input_ids) -> dict:
    """Keyword arguments of a plain forward over the rows (no labels, no balancing loss): `input_ids` for causal
    models; for SLAM v3 the first half as `input_ids` and `decoder_input_ids` = <s> + the second half but its last
    token (the decoder side of the continuation task). For latency measurements; add `use_cache` as needed."""
    spec = _check_name(name)
    half = _split(input_ids)
    if spec["objective"] == "prefix_to_continuation":
        decoder_input_ids = _decoder_inputs(model, input_ids[:, half:])
        return {"input_ids": input_ids[:, :half].contiguous(), "decoder_input_ids": decoder_input_ids}
    return {"input_ids": input_ids}


def _decoder_inputs(model, continuation):
    start = model.config.decoder_start_token_id
    return torch.cat([continuation.new_full((continuation.shape[0], 1), start), continuation[:, :-1]], dim=1)


def next_token_logits_and_targets(name, model, input_ids, *, span="all"):
    """(logits (N, V), targets (N,)) of every scored next-token prediction, for held-out loss / perplexity / top-1.

    Causal models score positions 1..L-1 (span="all"), or only the second half, positions L//2..L-1, with
    span="continuation" (the same tokens SLAM v3 scores, each with at least half a row of context). SLAM v3 always
    scores the continuation: the encoder reads positions 0..L//2-1, the decoder predicts L//2..L-1 behind <s>.
    The cross-entropy of the result equals the model's LM loss (without any MoE balancing term)."""
    spec = _check_name(name)
    if span not in ("all", "continuation"):
        raise ValueError(f"`span` must be 'all' or 'continuation', got {span!r}.")
    half = _split(input_ids)
    if spec["objective"] == "prefix_to_continuation":
        logits = model(**forward_inputs(name, model, input_ids), use_cache=False).logits
        targets = input_ids[:, half:]
    else:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]
        targets = input_ids[:, 1:]
        if span == "continuation":
            logits, targets = logits[:, half - 1 :], targets[:, half - 1 :]
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def lm_loss(name, model, input_ids, *, span="all") -> torch.Tensor:
    """Mean next-token cross-entropy (no balancing terms) of `next_token_logits_and_targets`."""
    logits, targets = next_token_logits_and_targets(name, model, input_ids, span=span)
    return F.cross_entropy(logits.float(), targets)


# --------------------------------------------------------------------------------------------------------------
# cache bytes


def cache_bytes(model, name, input_ids) -> dict:
    """Cache bytes per sequence, MEASURED from the cache a forward pass returns (use_cache=True) at two lengths.

    For prefixes of L1 = n // 2 and L2 = n tokens (n = input length; for SLAM v3 n = the continuation length, the
    encoder reading the first half of the row at both lengths): per_token = (bytes(L2) - bytes(L1)) / (L2 - L1),
    fixed = bytes(L1) - per_token * L1, both divided by the batch size. `fixed` holds what does not grow with the
    tokens processed: Jamba's Mamba conv/SSM states, SLAM v3's cross-attention K/V over the encoder memory (which
    grow with the prompt, not the generated length). Returns {"per_token", "fixed", "lengths", "bytes"}."""
    from ..slam_compat import output_cache  # `cache` or `past_key_values`, whichever the running release uses

    spec = _check_name(name)
    half = _split(input_ids)
    batch = input_ids.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if spec["objective"] == "prefix_to_continuation":
                encoder_ids = input_ids[:, :half]
                decoder_ids = _decoder_inputs(model, input_ids[:, half:])

                def run(length):
                    return model(input_ids=encoder_ids, decoder_input_ids=decoder_ids[:, :length], use_cache=True)

                n = decoder_ids.shape[1]
            else:

                def run(length):
                    return model(input_ids=input_ids[:, :length], use_cache=True)

                n = input_ids.shape[1]
            if n < 2:
                raise ValueError(f"cache_bytes needs at least 2 tokens to measure growth, got {n}.")
            lengths = (n // 2, n)
            measured = []
            for length in lengths:
                cache = output_cache(run(length))
                if cache is None:
                    raise RuntimeError(f"{name} returned no cache with use_cache=True.")
                measured.append(cache_nbytes(cache))
                del cache
    finally:
        model.train(was_training)
    (l1, l2), (b1, b2) = lengths, measured
    per_token = (b2 - b1) / (l2 - l1) / batch
    fixed = b1 / batch - per_token * l1
    return {"per_token": per_token, "fixed": fixed, "lengths": list(lengths), "bytes": [b1 / batch, b2 / batch]}


__all__ = [
    "BENCH_MODELS",
    "COMMON_NOTES",
    "MODEL_NAMES",
    "build_config",
    "build_model",
    "cache_bytes",
    "lm_batch",
    "lm_loss",
    "next_token_logits_and_targets",
    "normalize_shape",
]
