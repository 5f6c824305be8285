"""SLAM v3 vision tower and auxiliary-input projector (DESIGN §5): ViT patches with 2D RoPE.

    pixel_values (B, C, H, W)
      -> SlamPatchEmbedding     non-overlapping p x p patches, row-major: (B, H/p * W/p, hidden)
      -> num_hidden_layers x SlamLayer (bidirectional, 2D RoPE over the patch grid)
      -> final norm -> projector to the text hidden size: (B, H/p * W/p, text_hidden_size)

    aux_values (B, n_aux, aux_dim) -> SlamAuxProjector -> (B, n_aux, text_hidden_size)

Patches are ordered row by row (patch (r, c) is token r * W/p + c), the order of `image_grid_hw` from
`SlamImageProcessor`, so one image gives `image_grid_hw[i].prod()` features. Any H and W that are multiples
of `patch_size` work (non-square grids included); the images of one batch share one size.

Config fields read by `SlamVisionTower(config, text_hidden_size=None)` (a future `SlamV3VisionConfig`
needs exactly these):

- patch embedding: `patch_size`, `num_channels`, `hidden_size`;
- blocks (through `SlamLayer` / `SlamAttention` / `SlamMLP` / `make_norm`): `num_hidden_layers`,
  `hidden_size`, `num_attention_heads`, `num_key_value_heads`, `head_dim` (a multiple of 4 for 2D RoPE),
  `intermediate_size`, `mlp_type`, `norm_type`, `norm_position`, `norm_eps`, `attention_bias`, `mlp_bias`,
  `attention_dropout`, `hidden_dropout`, `_attn_implementation` (set by the owning `PreTrainedModel`);
- positions: `position_embedding_type` ("rope" -> 2D RoPE, "none" -> no positions; "learned" is refused:
  a learned table would pin the grid size), `rope_theta`;
- projector: `projector_type` ("linear" or "mlp": Linear -> GELU -> Linear), `text_hidden_size` (only
  when the constructor is not given `text_hidden_size`).

`SlamAuxProjector(aux_dim, text_hidden_size)` takes plain ints (the fields live on the v3 config).

`patch_proj` and `aux_proj` are plain `nn.Linear` (data entry points, like `embed_tokens`); the blocks and
the projector are built through `make_linear` from the vision config, which has no ternary fields, so the vision
tower stays full precision when the text model is BitNet ternary. A patch is
flattened in (channel, row, column) order, the layout of a Conv2d kernel, so a pretrained ViT's
`patch_embed` Conv2d weight converts with `weight.reshape(hidden_size, -1)`.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .slam_blocks import SlamLayer
from .slam_compat import is_tracing
from .slam_layers import SlamRotaryEmbedding, make_linear, make_norm, rope_inverse_frequencies


def patch_grid_positions(grid_height: int, grid_width: int, device=None) -> torch.Tensor:
    """(row, column) of every patch of a grid in row-major order: (grid_height * grid_width, 2) int64."""
    rows = torch.arange(grid_height, device=device).repeat_interleave(grid_width)
    cols = torch.arange(grid_width, device=device).repeat(grid_height)
    return torch.stack((rows, cols), dim=-1)


class SlamRotaryEmbedding2D(SlamRotaryEmbedding):
    """2D RoPE over the patch grid: half of the rotary frequencies encode the row, half the column.

    `apply_rotary_pos_emb` rotates dimension i together with dimension i + head_dim / 2, so a head has
    head_dim / 2 rotation pairs. Pairs 0 .. head_dim/4 - 1 turn with the patch row, pairs head_dim/4 ..
    head_dim/2 - 1 with the column, each axis at the 1D frequencies of a head_dim / 2 rotary:
    inv_freq[k] = rope_theta ** (-2k / (head_dim / 2)), k < head_dim / 4. The angle of pair j is therefore
    row * inv_freq[j] (j < head_dim/4) or col * inv_freq[j - head_dim/4], and q.k after rotation depends
    only on the (row, column) offset of the two patches.

    A subclass of `SlamRotaryEmbedding`, so `SlamPreTrainedModel._init_weights` rebuilds the non-persistent
    `inv_freq` (head_dim / 4 values, shared by both axes) through `reset_inv_freq()` after `from_pretrained`.
    """

    def __init__(self, head_dim: int, theta: float):
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head_dim divisible by 4 (two axes x rotation pairs), got {head_dim}.")
        super().__init__(head_dim, theta)
        self.register_buffer("inv_freq", self.reset_inv_freq(), persistent=False)

    def reset_inv_freq(self):
        return rope_inverse_frequencies(self.head_dim // 2, self.theta, device=self.inv_freq.device)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, L, 2) (row, column) -> cos, sin: (B, L, head_dim), computed in float32
        inv_freq = self.inv_freq.float()
        row_freqs = position_ids[..., 0, None].float() * inv_freq
        col_freqs = position_ids[..., 1, None].float() * inv_freq
        half = torch.cat((row_freqs, col_freqs), dim=-1)  # one angle per rotation pair
        emb = torch.cat((half, half), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class SlamPatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, hidden): each non-overlapping p x p patch through one `patch_proj`.

    Args:
        config: reads `patch_size`, `num_channels`, `hidden_size`.
    """

    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.patch_proj = nn.Linear(self.num_channels * self.patch_size**2, config.hidden_size)

    def grid_size(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """Validate `pixel_values` and return its patch grid (H / p, W / p)."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if not pixel_values.dtype.is_floating_point:
            raise TypeError(
                f"`pixel_values` must be a float tensor of normalised pixels, got dtype {pixel_values.dtype}; run the "
                "images through SlamImageProcessor (it rescales and normalises them)."
            )
        if pixel_values.dim() != 4:
            raise ValueError(
                f"`pixel_values` must have shape (batch, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"`pixel_values` has {channels} channels, but the vision tower expects "
                f"num_channels={self.num_channels}."
            )
        p = self.patch_size
        if height < p or width < p or height % p or width % p:
            raise ValueError(
                f"`pixel_values` is {height} x {width} pixels; height and width must be positive multiples of "
                f"patch_size={p} (resize the images with SlamImageProcessor)."
            )
        return height // p, width // p

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid_h, grid_w = self.grid_size(pixel_values)
        batch, channels, p = pixel_values.shape[0], self.num_channels, self.patch_size
        # (B, C, gh, p, gw, p) -> (B, gh, gw, C, p, p) -> (B, gh * gw, C * p * p): row-major patches
        patches = pixel_values.reshape(batch, channels, grid_h, p, grid_w, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, grid_h * grid_w, channels * p * p)
        return self.patch_proj(patches.to(self.patch_proj.weight.dtype))


class SlamVisionProjector(nn.Module):
    """Vision hidden size -> text hidden size: `linear_1` alone ("linear") or linear_1 -> GELU -> linear_2 ("mlp")."""

    def __init__(self, config, text_hidden_size: int):
        super().__init__()
        if config.projector_type not in ("linear", "mlp"):
            raise ValueError(f"projector_type must be 'linear' or 'mlp', got {config.projector_type!r}.")
        self.linear_1 = make_linear(config, config.hidden_size, text_hidden_size, True, "linear_1")
        self.linear_2 = None
        if config.projector_type == "mlp":
            self.linear_2 = make_linear(config, text_hidden_size, text_hidden_size, True, "linear_2")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(hidden_states)
        if self.linear_2 is not None:
            hidden_states = self.linear_2(F.gelu(hidden_states))
        return hidden_states


class SlamVisionTower(nn.Module):
    """ViT encoder with 2D RoPE: pixel_values (B, C, H, W) -> image features (B, H/p * W/p, text_hidden_size).

    The blocks are `SlamLayer`s with bidirectional attention (no mask: every patch of an image is real), so
    pre/post norm, MLP type, GQA and the attention backend follow the config exactly as in the text model.
    A final norm (from `norm_type`) precedes the projector in both norm positions.

    Args:
        config: the vision config; see the module docstring for the fields read.
        text_hidden_size (`int`, optional): the projector's output size; defaults to `config.text_hidden_size`.
    """

    def __init__(self, config, text_hidden_size: int | None = None):
        super().__init__()
        self.config = config
        if config.position_embedding_type not in ("rope", "none"):
            raise ValueError(
                "The vision tower supports position_embedding_type 'rope' (2D RoPE over the patch grid) or 'none', "
                f"got {config.position_embedding_type!r}."
            )
        if text_hidden_size is None:
            text_hidden_size = config.text_hidden_size
        self.patch_embed = SlamPatchEmbedding(config)
        self.rotary_emb = None
        if config.position_embedding_type == "rope":
            self.rotary_emb = SlamRotaryEmbedding2D(config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(
            [SlamLayer(config, layer_idx, is_causal=False) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = make_norm(config)
        self.projector = SlamVisionProjector(config, text_hidden_size)

    def forward(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values (B, C, H, W) -> (B, H/p * W/p, text_hidden_size). `image_grid_hw` (B, 2), when given,
        is checked against the grid of `pixel_values`."""
        grid_h, grid_w = self.patch_embed.grid_size(pixel_values)
        if image_grid_hw is not None and (
            not isinstance(image_grid_hw, torch.Tensor) or image_grid_hw.dtype.is_floating_point
        ):
            raise TypeError("`image_grid_hw` must be an integer tensor (batch, 2), as SlamImageProcessor returns it.")
        if image_grid_hw is not None and not is_tracing():  # a check of values: eager only (see validate_inputs)
            expected = torch.tensor([grid_h, grid_w], device=image_grid_hw.device)
            if image_grid_hw.shape != (pixel_values.shape[0], 2) or not bool((image_grid_hw == expected).all()):
                raise ValueError(
                    f"`image_grid_hw` {image_grid_hw.tolist()} does not match the {grid_h} x {grid_w} patch grid of "
                    f"`pixel_values` {tuple(pixel_values.shape)}."
                )
        hidden_states = self.patch_embed(pixel_values)
        position_embeddings = None
        if self.rotary_emb is not None:
            positions = patch_grid_positions(grid_h, grid_w, device=hidden_states.device)[None]  # (1, L, 2)
            position_embeddings = self.rotary_emb(positions, hidden_states.dtype)  # broadcast over the batch
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings)
        return self.projector(self.norm(hidden_states))


def image_placeholder_mask(embed_tokens, image_token_id, input_ids, inputs_embeds):
    """(B, L) bool: where the `<image>` placeholders are. The one place that locates them: from `input_ids` when
    given, else (as transformers' image-text models do) where `inputs_embeds` equal the embedding of
    `image_token_id` in every hidden dim."""
    if input_ids is not None:
        return input_ids == image_token_id
    image_token = torch.tensor(image_token_id, device=inputs_embeds.device)
    return (inputs_embeds == embed_tokens(image_token).to(inputs_embeds.dtype)).all(-1)


def place_image_features(
    vision_tower, embed_tokens, image_token_id, input_ids, inputs_embeds, pixel_values, image_grid_hw
):
    """`inputs_embeds` (B, L, hidden) with the vision tower's patch features at the `<image>` placeholders (row-major,
    one placeholder per patch, images in order), and the placeholder mask (B, L). Placeholders without images, a
    count that does not match the patches, or `image_grid_hw` without `pixel_values` raise a ValueError naming the
    fix. Used by SLAM v3's encoder and the latent-loop image-text model."""
    is_image = image_placeholder_mask(embed_tokens, image_token_id, input_ids, inputs_embeds)
    # Counting placeholders reads values: eager only (see validate_inputs); a traced graph is fed matching inputs.
    checks = not is_tracing()
    placeholders = int(is_image.sum()) if checks else None
    found = "`input_ids` hold {} image placeholder tokens"  # the placeholders, as the error messages name them
    if input_ids is None:
        found = "`inputs_embeds` hold {} embeddings of the image placeholder token"
    if pixel_values is None and image_grid_hw is not None:
        raise ValueError("`image_grid_hw` was given without `pixel_values`; pass both (SlamProcessor gives both).")
    if (
        pixel_values is not None
        and checks
        and vision_tower.patch_embed.grid_size(pixel_values)
        and not len(pixel_values)
    ):
        pixel_values = None  # 0 images (validated): nothing to encode, and placeholders must be 0 as without images
    if pixel_values is None:
        if checks and placeholders:
            raise ValueError(
                f"{found.format(placeholders)} (id {image_token_id}) but no `pixel_values` were given; "
                "pass the images (SlamProcessor returns both)."
            )
        return inputs_embeds, is_image
    features = vision_tower(pixel_values, image_grid_hw)  # (N, patches, hidden)
    if checks and placeholders != features.shape[0] * features.shape[1]:
        raise ValueError(
            f"{found.format(placeholders)}, but `pixel_values` give {features.shape[0]} image(s) x "
            f"{features.shape[1]} patches = {features.shape[0] * features.shape[1]} features; expand each "
            "`<image>` with SlamProcessor so that every patch has one placeholder."
        )
    mask = is_image[..., None].expand_as(inputs_embeds)
    inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
    return inputs_embeds, is_image


def placeholder_grid_positions(is_image: torch.Tensor, grid_width: int, patches: int) -> torch.Tensor:
    """(row, column) in its image's patch grid of every `<image>` placeholder, (0, 0) elsewhere: (B, L, 2) long.

    The k-th placeholder of a row belongs to patch k mod `patches` of its image (images of one batch share one grid,
    row-major, `grid_width` patches per row)."""
    index = (is_image.long().cumsum(-1) - 1).clamp(min=0) % patches
    grid = torch.stack((index // grid_width, index % grid_width), dim=-1)
    return grid * is_image[..., None]


class SlamAuxProjector(nn.Module):
    """Structured / latent inputs into the joint sequence: aux_values (B, n_aux, aux_dim) -> (B, n_aux, hidden).

    Args:
        aux_dim (`int`): size of one auxiliary vector.
        text_hidden_size (`int`): the text model's hidden size.
    """

    def __init__(self, aux_dim: int, text_hidden_size: int):
        super().__init__()
        self.aux_dim = aux_dim
        self.aux_proj = nn.Linear(aux_dim, text_hidden_size)

    def forward(self, aux_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(aux_values, torch.Tensor) or not aux_values.dtype.is_floating_point:
            found = aux_values.dtype if isinstance(aux_values, torch.Tensor) else type(aux_values).__name__
            raise TypeError(f"`aux_values` must be a float tensor (batch, n_aux, aux_dim), got {found}.")
        if aux_values.dim() != 3 or aux_values.shape[-1] != self.aux_dim:
            raise ValueError(
                f"`aux_values` must have shape (batch, n_aux, aux_dim={self.aux_dim}), got {tuple(aux_values.shape)}."
            )
        return self.aux_proj(aux_values.to(self.aux_proj.weight.dtype))


__all__ = [
    "image_placeholder_mask",
    "place_image_features",
    "placeholder_grid_positions",
    "SlamAuxProjector",
    "SlamPatchEmbedding",
    "SlamRotaryEmbedding2D",
    "SlamVisionProjector",
    "SlamVisionTower",
    "patch_grid_positions",
]
