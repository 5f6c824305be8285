"""Parameters a token's prediction uses, per benchmark model: `parameter_usage` gives every parameter's share and
`active_parameters` their sum (the "active parameters" column of `slam-hf bench`). Not remote code.

    active_parameters("mixtral", model)    # routed experts count top_k / num_experts, everything else fully
"""

from __future__ import annotations

from .models import _check_name


def _experts_and_top_k(name, config):
    if name == "mixtral":
        return config.num_local_experts, config.num_experts_per_tok
    if name == "deepseek_v3":
        return config.n_routed_experts, config.num_experts_per_tok
    if name == "jamba":
        return config.num_experts, config.num_experts_per_tok
    if name == "hunyuan_moe":
        return config.num_experts, config.moe_topk
    if name == "slam_v2":
        return config.moa_num_experts, config.moa_top_k
    return None, None


def _v1_block_shares(config) -> tuple[float, float]:
    """Share of positions 0..max_position_embeddings-1 that pass through block A and block B of an EF cycle: window
    i covers [i * stride, i * stride + w), even windows are A, odd ones B; a causal model keeps every window that
    starts before the end."""
    length, window, stride = config.max_position_embeddings, config.ef_segment_length, config.ef_stride
    uses = [0, 0]
    for position in range(length):
        first = max(0, -(-(position - window + 1) // stride))  # first window whose end lies after `position`
        parities = {i % 2 for i in range(first, position // stride + 1)}
        for parity in parities:
            uses[parity] += 1
    return uses[0] / length, uses[1] / length


# What text-only input never reaches (or whose output it zeroes) in SLAM v3.
_V3_UNUSED_ON_TEXT = (
    "model.encoder.vision_tower.",
    "model.encoder.aux_projector.",
    "model.encoder.paths.paths.image.",
    "model.encoder.paths.paths.cross_modal.",
    "model.encoder.fusion.cross_modal.self_attn.",
    "model.encoder.fusion.cross_modal.attn_norm.",
)


# The latent loop's confidence head: run at inference only by the "confidence" exit.
_LOOP_EXIT_HEAD = ("model.confidence_head.", "model.confidence_norm.")


def _loop_confidence_exit(config) -> bool:
    return config.loop_exit_criterion == "confidence" and config.loop_exit_threshold is not None


def parameter_usage(name, model) -> dict[str, tuple[int, float]]:
    """{parameter name: (numel, share used per token)} - the basis of `active_parameters`.

    Shares: routed experts top_k / num_experts (fused 3D expert tensors `...experts.gate_up_proj` (E, 2I, H) and
    module experts `...experts.<i>....` alike); SLAM v1 EF blocks the share of positions whose windows use them;
    SLAM v2 Level-2 blocks min(ef_cycles, 4) / 4; SLAM v3 parameters that text-only input never reaches 0 (vision
    tower, image and cross-modal paths, the fusion node's cross-modal attention, the image and cross-modal input
    columns of the concat projection); the latent loop's confidence head 0 unless its exit criterion is
    "confidence" with a threshold (nothing else runs it), and its shared core 1, once, however many iterations
    reuse it (compute per token is higher than the count says: see BENCH_MODELS["slam_loop"]["notes"]); everything
    else, embeddings and LM head included, 1."""
    _check_name(name)
    config = model.config
    experts, top_k = _experts_and_top_k(name, config)
    usage = {}
    for pname, param in model.named_parameters():
        share = 1.0
        if experts is not None and ".experts." in pname:
            index = pname.split(".experts.", 1)[1].split(".", 1)[0]
            if index.isdigit():
                if int(index) >= experts:
                    raise RuntimeError(f"{name}: expert index {index} in {pname} >= num_experts {experts}")
            elif param.dim() != 3 or param.shape[0] != experts:
                raise RuntimeError(
                    f"{name}: {pname} {tuple(param.shape)} looks like routed-expert weights but is neither a "
                    f"per-expert module nor a fused ({experts}, ...) tensor; update parameter_usage."
                )
            share = top_k / experts
        elif name == "slam_v1" and ".blocks." in pname:
            block = int(pname.split(".blocks.", 1)[1].split(".", 1)[0])
            share = _v1_block_shares(config)[block]
        elif name == "slam_v2" and pname.startswith("model.fusion.blocks."):
            share = min(config.ef_cycles, config.ef_num_blocks) / config.ef_num_blocks
        elif name == "slam_loop" and pname.startswith(_LOOP_EXIT_HEAD) and not _loop_confidence_exit(config):
            share = 0.0
        elif name == "slam_v3":
            if pname.startswith(_V3_UNUSED_ON_TEXT):
                share = 0.0
            elif pname == "model.encoder.fusion.concat_proj.weight":
                from slam_hf.configuration_slam import ENCODER_PATHS

                share = sum(path in ("text", "shared") for path in ENCODER_PATHS) / len(ENCODER_PATHS)
        usage[pname] = (param.numel(), share)
    return usage


def active_parameters(name, model) -> int:
    """Parameters used per token: sum of numel x share over `parameter_usage` (rounded to an integer).

    Convention: input embeddings and the LM head count fully (as in "Mixtral 8x7B: 12.9B active"); routed experts
    count top_k / num_experts; shared experts, dense layers, routers and norms count fully; SLAM's position-routed
    blocks count by the share of positions that use them; weights text-only input never reaches count 0; weights a
    token reuses (the latent loop's core, once per iteration) count once. Equal to the total for dense models
    (llama, hunyuan_dense)."""
    return round(sum(numel * share for numel, share in parameter_usage(name, model).values()))


__all__ = ["active_parameters", "parameter_usage"]
