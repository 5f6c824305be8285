"""The SLAM v3 encoder at a benchmark shape: its config, a mixed text + image prompt, the masks the four paths take,
their forward FLOPs, and a prototype that skips the rows a path gives no key (benchmark-only)."""

import torch

from slam_hf import SlamV3Config
from slam_hf.configuration_slam import ENCODER_PATHS
from slam_hf.slam_fusion import SlamParallelPaths, path_masks

from .v3_models import tiny_vision


def encoder_config(hidden, layers):
    heads = max(2, hidden // 64) if hidden >= 256 else hidden // 32
    config = SlamV3Config(
        vocab_size=1024,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        encoder_layers=layers,
        decoder_layers=1,
        kv_lora_rank=32,
        qk_rope_head_dim=16,
        vision_config=tiny_vision(),
        attn_implementation="sdpa",
    )
    return config


def grid_for(n):
    rows = int(n**0.5)
    while n % rows:
        rows -= 1
    return rows, n // rows


def encoder_inputs(config, length, batch, seed):
    """A prompt of text, one image (a quarter of the tokens) and text; odd rows padded at the end."""
    g = torch.Generator().manual_seed(seed)
    n_image = length // 4
    grid = grid_for(n_image)
    patch = config.vision_config.patch_size
    ids = torch.randint(10, config.vocab_size, (batch, length), generator=g)
    start = length // 8
    ids[:, start : start + n_image] = config.image_token_id
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1::2, length - length // 16 :] = 0
    pixels = torch.randn(batch, 3, grid[0] * patch, grid[1] * patch, generator=g)
    hidden = torch.randn(batch, length, config.hidden_size, generator=g)
    is_image = ids == config.image_token_id
    return ids, mask, pixels, hidden, is_image, mask.bool()


def paths_inputs(encoder, hidden, is_image, real):
    position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)
    position_embeddings = encoder.rotary_emb(position_ids, hidden.dtype)
    allowed, has_key = path_masks(is_image, real)
    return position_embeddings, allowed, has_key


def compact_paths_forward(paths, states, position_embeddings, allowed, has_key, is_image):
    """What skipping dead rows would give (benchmark-only prototype, sequential): the text path runs on the text
    tokens only, the image path on the image/aux tokens only (a query there only ever attends to keys of its own
    modality, so the other rows, zeroed at the end, never influence it), and a path that gives no token a key
    (image / cross-modal paths of text-only input) is skipped. Needs the same token count per row per modality."""
    batch, length, hidden = states.shape
    out = states.new_zeros(len(ENCODER_PATHS), batch, length, hidden)
    cos, sin = position_embeddings
    for p, name in enumerate(ENCODER_PATHS):
        if not bool(has_key[p].any()):
            continue
        layers = paths.paths[name]
        select = {"text": ~is_image, "image": is_image}.get(name)
        if select is None or bool(select.all()):
            out[p] = SlamParallelPaths._sequential_path(layers, states, position_embeddings, allowed[p])
            continue
        count = int(select[0].sum())
        index = select.nonzero()[:, 1].view(batch, count)

        def gather(t):
            return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))

        sub = allowed[p].gather(1, index[..., None].expand(-1, -1, length))
        sub = sub.gather(2, index[:, None, :].expand(-1, count, -1))  # (B, count, count)
        rows = SlamParallelPaths._sequential_path(layers, gather(states), (gather(cos), gather(sin)), sub)
        out[p].scatter_(1, index[..., None].expand(-1, -1, hidden), rows)
    return out * has_key[..., None].to(out.dtype)


def paths_flops(config, batch, length):
    """Forward FLOPs of the four paths (matmuls and attention; norms and activations left out)."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = config.head_dim
    tokens = batch * length
    projections = 2 * tokens * hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim)
    mlp = 2 * tokens * 3 * hidden * config.intermediate_size
    attention = 2 * 2 * batch * heads * length * length * head_dim
    return 4 * config.encoder_layers * (projections + mlp + attention)
