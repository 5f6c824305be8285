"""SLAM v3 encoder core (DESIGN §5): four parallel attention paths over the joint sequence and the fusion node.

    joint (B, L, H) ──► paths: text | image | shared | cross_modal   (encoder_layers each, one batched computation)
                        (4, B, L, H), a path's output is zero for the tokens it gives no key
                  ──► fusion node: mean of the paths that saw the token + concat_proj(cat of the 4 paths)
                                   -> one cross-modal attention layer -> (B, L, H)

The paths differ only in weights and attention masks, so layer i of all four runs as slot-wise batched
matmuls (`StackedLayers`: weights stacked along a path axis) and one attention call over (4 * B) sequences.
`batch_paths = False` runs the paths one after another through their own modules (the reference, and the
baseline of the benchmark); adapters, quantised layers or hooks fall back to per-path module calls.
"""

from functools import partial

import torch
from torch import nn

from .configuration_slam import ENCODER_PATHS
from .slam_attention import run_attention
from .slam_blocks import SlamLayer
from .slam_compat import GradientCheckpointingLayer, call_checkpointed, is_tracing
from .slam_grouped import ModuleLayers, StackedLayers, finish_grouped
from .slam_layers import apply_rotary_pos_emb, make_linear


def path_masks(is_image: torch.Tensor, real: torch.Tensor):
    """Attention rules of the four paths over the joint sequence.

    is_image (B, L) bool: True for image / aux tokens; real (B, L) bool: not padding.
    Returns allowed (4, B, L, L) bool (query row, key column) and has_key (4, B, L) bool.

    A query with no allowed key (image tokens in the text path, every token of the cross-modal path when the
    input has one modality) attends to itself only, which keeps every softmax finite in forward and backward;
    the caller zeroes that query's output, so the path contributes nothing for it.
    """
    query_image, key_image = is_image[:, :, None], is_image[:, None, :]
    same = query_image == key_image
    rules = torch.stack([same & ~query_image, same & query_image, torch.ones_like(same), ~same])
    allowed = rules & real[None, :, None, :] & real[None, :, :, None]
    has_key = allowed.any(-1)
    eye = torch.eye(is_image.shape[1], dtype=torch.bool, device=is_image.device)
    return allowed | (~has_key[..., None] & eye), has_key


class SlamParallelPaths(nn.Module):
    """The four encoder paths: `paths[name][i]` is layer i of a path, an ordinary bidirectional `SlamLayer`."""

    def __init__(self, config):
        super().__init__()

        def path():
            return nn.ModuleList([SlamLayer(config, None, is_causal=False) for _ in range(config.encoder_layers)])

        self.paths = nn.ModuleDict({name: path() for name in ENCODER_PATHS})
        self.num_layers = config.encoder_layers
        self.pre_norm = config.norm_position == "pre"
        self.batch_paths = True

    def layer_group(self, index: int, paths) -> list[SlamLayer]:
        return [self.paths[ENCODER_PATHS[p]][index] for p in paths]

    def forward(self, hidden_states, position_embeddings, allowed, has_key, implementation="sdpa"):
        """hidden_states (B, L, H) -> (4, B, L, H); rows without keys in a path are zero.

        A path that gives no token of the batch a key (the image and cross-modal paths of a text-only batch) would
        return only zeros, so it is not run: same output, half the work for text-only input. Under torch.compile /
        torch.export that choice would read tensor values, so every path runs (the masking below zeroes the same rows).
        """
        active = list(range(len(ENCODER_PATHS)))
        if not is_tracing():
            active = [p for p in active if bool(has_key[p].any())]
        output = hidden_states.new_zeros(len(ENCODER_PATHS), *hidden_states.shape)
        if not active:  # nothing but padding in the batch: every path gives zeros
            return output
        allowed = allowed[active]
        if self.batch_paths:
            states = hidden_states.expand(len(active), *hidden_states.shape)
            for index in range(self.num_layers):
                group = self.layer_group(index, active)
                layers = StackedLayers.try_build(group) or ModuleLayers(group)
                run = partial(self._batched_layer, group[0], layers)
                args = (states, position_embeddings, allowed, implementation)
                if group[0].gradient_checkpointing and self.training:
                    # The batched run never calls the paths' SlamLayers, so their checkpointing flag (set by
                    # gradient_checkpointing_enable) is honoured here: layer i of the paths is one checkpoint.
                    states = call_checkpointed(group[0], run, *args)
                else:
                    states = run(*args)
        else:
            paths = [self.paths[ENCODER_PATHS[p]] for p in active]
            run = partial(self._sequential_path, hidden_states=hidden_states, position_embeddings=position_embeddings)
            states = torch.stack([run(path, allowed=path_allowed) for path, path_allowed in zip(paths, allowed)])
        states = states * has_key[active, ..., None].to(states.dtype)
        return output.index_copy(0, torch.tensor(active, device=output.device), states)

    @staticmethod
    def _sequential_path(layers, hidden_states, position_embeddings, allowed):
        for layer in layers:
            hidden_states = layer(hidden_states, position_embeddings, attention_mask=allowed[:, None])
        return hidden_states

    def _batched_layer(self, first, layers, states, position_embeddings, allowed, implementation):
        # states (G, B, L, H) -> (G, B, L, H): one SlamLayer per slot, all slots in the same calls
        paths, batch, length, hidden = states.shape
        attention = first.self_attn
        rows = states.reshape(paths, batch * length, hidden)
        normed = layers.norm("attn_norm", rows) if self.pre_norm else rows

        def heads(name):  # (G, B * L, heads * D) -> (G * B, heads, L, D)
            out = layers.linear(f"self_attn.{name}", normed)
            return out.view(paths * batch, length, -1, attention.head_dim).transpose(1, 2)

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        if position_embeddings is not None:
            cos, sin = (t.expand(batch, -1, -1).repeat(paths, 1, 1) for t in position_embeddings)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        output, _ = run_attention(attention, q, k, v, allowed.flatten(0, 1)[:, None], implementation, is_causal=False)
        output = layers.attention_output(output.reshape(paths, batch * length, -1))
        return finish_grouped(layers, rows, output, self.pre_norm, first.dropout).view(paths, batch, length, hidden)


class SlamFusionNode(GradientCheckpointingLayer):
    """Fuses the four path outputs (4, B, L, H) into one sequence (B, L, H).

    - residual aggregation: the mean over the paths that gave the token a key (the shared path always does),
      an identity route from every path to the output;
    - dense concatenation: `concat_proj` (4H -> H) over the four outputs side by side, a learned mix;
    - cross-modal attention: one `SlamLayer` whose queries see only the other modality's tokens; a token with no
      such key (text-only input) keeps its state and goes through the MLP only.
    """

    def __init__(self, config):
        super().__init__()
        self.concat_proj = make_linear(
            config, len(ENCODER_PATHS) * config.hidden_size, config.hidden_size, False, "concat_proj"
        )
        self.cross_modal = SlamLayer(config, None, is_causal=False)

    def forward(self, path_states, has_key, position_embeddings, cross_modal_allowed, implementation="sdpa"):
        paths, batch, length, hidden = path_states.shape
        seen_by = has_key.sum(0).clamp(min=1).to(path_states.dtype)[..., None]  # (B, L, 1)
        mean = path_states.sum(0) / seen_by
        concat = path_states.permute(1, 2, 0, 3).reshape(batch, length, paths * hidden)
        fused = mean + self.concat_proj(concat)

        layer = self.cross_modal
        attention_output, _ = layer.self_attn(
            layer.attention_input(fused),
            position_embeddings,
            cross_modal_allowed[:, None],
            implementation=implementation,
        )
        has_cross_key = has_key[ENCODER_PATHS.index("cross_modal")]
        return layer.finish(fused, attention_output * has_cross_key[..., None].to(attention_output.dtype))


__all__ = ["SlamFusionNode", "SlamParallelPaths", "path_masks"]
