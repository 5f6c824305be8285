"""Window geometry for encoder-fusion blocks: which tokens each window holds, as gather indices.

Windows are fixed in *logical* positions (the count of real tokens before a token, read from the
attention mask), so left padding never shifts a window and a growing sequence never re-segments
earlier tokens: the KV cache stays valid. Window i covers logical positions [i * stride, i * stride + w).

A plan is built once per forward and shared by every EF cycle (they all have the same geometry).
It turns windowed attention into ordinary batched attention over (batch * windows) short sequences,
so compute and memory grow as O(L * w) instead of O(L^2).
"""

from dataclasses import dataclass

import torch


@dataclass
class WindowPlan:
    batch_index: torch.Tensor  # (B, 1, 1): row of every gathered element
    query_slots: torch.Tensor  # (B, n, q_len): index into the new tokens, clamped
    query_valid: torch.Tensor  # (B, n, q_len) bool: a real new token inside this window
    key_index: torch.Tensor  # (B, n, k_len): index into past + new tokens, clamped
    mask: torch.Tensor | None  # (B * n, 1, q_len, k_len) bool, True = attend; None = plain causal
    implementation: str  # attention kernel for the windows
    valid_rows: torch.Tensor  # (R,): flat (B * n * q_len) slots that hold a real token
    valid_tokens: torch.Tensor  # (R,): flat (B * new tokens) index of that token
    coverage: torch.Tensor  # (B, new tokens, 1) float: how many of this plan's windows hold each token

    @property
    def num_windows(self) -> int:
        return self.query_slots.shape[1]

    def scatter_sum(self, rows: torch.Tensor, shape) -> torch.Tensor:
        """(R, D) outputs of the real window slots -> (B, L, D) per-token sums over windows."""
        batch, length = shape
        out = rows.new_zeros(batch * length, rows.shape[-1]).index_add_(0, self.valid_tokens, rows)
        return out.view(batch, length, -1)


def padding_offsets(attention_mask: torch.Tensor | None, batch_size: int, total_length: int, device):
    """Leading padding and real-token count per row. Real tokens must form one contiguous span."""
    if attention_mask is None:
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return zeros, zeros + total_length
    real = attention_mask.bool()
    return (real.long().cumsum(-1) == 0).sum(-1), real.sum(-1)


def plan_windows(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    past_length: int,
    new_length: int,
    window_length: int,
    stride: int,
    is_causal: bool,
    implementation: str,
    device,
    num_blocks: int = 2,
    block_offset: int = 0,
) -> list[WindowPlan]:
    """One plan per block; window i is processed by block (i + block_offset) % num_blocks.

    Causal models keep every window that starts before the end (a token's windows depend on its own
    position only). Bidirectional models drop a trailing window that lies inside the previous one, which
    reproduces the published geometry (A = first 60 %, B = last 60 %) at L = 100, w = 60, overlap = 20.
    """
    total = past_length + new_length
    offsets, real = padding_offsets(attention_mask, batch_size, total, device)

    # Logical range [lo, hi] of the real new tokens of every row; windows must intersect it.
    lo = (past_length - offsets).clamp(min=0)
    hi = torch.minimum(total - offsets, real) - 1
    rows = hi >= lo
    if rows.any():
        first = torch.div(lo[rows] - window_length + stride, stride, rounding_mode="floor").clamp(min=0)
        last = hi[rows] // stride
        if not is_causal:  # the first window reaching the end is the last one that exists
            reaching_end = torch.div(real[rows] - window_length + stride - 1, stride, rounding_mode="floor")
            last = torch.minimum(last, reaching_end.clamp(min=0))
        first_window, last_window = int(first.min()), int(last.max())
    else:  # nothing but padding: one window keeps shapes valid, every query is masked out
        first_window = last_window = 0
    windows = torch.arange(first_window, last_window + 1, device=device)

    query_length = min(window_length, new_length)
    key_length = min(window_length, total)
    plain_causal = (
        is_causal and past_length == 0 and implementation != "eager" and bool((real == total).all())
    )
    batch_index = torch.arange(batch_size, device=device)[:, None, None]
    positions_q = torch.arange(query_length, device=device)
    positions_k = torch.arange(key_length, device=device)
    plans = []
    for block in range(num_blocks):
        ids = windows[(windows + block_offset) % num_blocks == block]
        starts = ids * stride  # (n,)
        exists = torch.ones(batch_size, ids.numel(), dtype=torch.bool, device=device)
        if not is_causal:
            exists = (ids == 0) | ((ids - 1) * stride + window_length < real[:, None])

        first_query = torch.maximum(starts[None, :], (past_length - offsets)[:, None])  # (B, n)
        query_logical = first_query[..., None] + positions_q  # (B, n, q_len)
        query_slots = query_logical + offsets[:, None, None] - past_length
        query_valid = (
            (query_slots < new_length)
            & (query_logical < (starts + window_length)[None, :, None])
            & (query_logical < real[:, None, None])
            & exists[..., None]
        )
        key_logical = (starts[:, None] + positions_k)[None]  # (1, n, k_len)
        key_index = key_logical + offsets[:, None, None]
        key_valid = (key_logical < real[:, None, None]) & (key_index < total)

        mask = None
        if not plain_causal:
            allowed = key_valid[:, :, None, :]
            if is_causal:
                allowed = allowed & (key_logical[:, :, None, :] <= query_logical[..., None])
            # Queries that are not real tokens attend everywhere: finite garbage that is discarded,
            # instead of an all-masked row that would put NaN into the backward pass.
            allowed = allowed | ~query_valid[..., None]
            mask = allowed.flatten(0, 1)[:, None]
        query_slots = query_slots.clamp(0, new_length - 1)
        valid_rows = query_valid.flatten().nonzero().squeeze(1)
        valid_tokens = (batch_index * new_length + query_slots).flatten()[valid_rows]
        coverage = torch.bincount(valid_tokens, minlength=batch_size * new_length).view(batch_size, new_length, 1)
        plans.append(
            WindowPlan(
                batch_index=batch_index,
                query_slots=query_slots,
                query_valid=query_valid,
                key_index=key_index.clamp(0, total - 1),
                mask=mask,
                implementation=implementation,
                valid_rows=valid_rows,
                valid_tokens=valid_tokens,
                coverage=coverage.float(),
            )
        )
    return plans


__all__ = ["WindowPlan", "padding_offsets", "plan_windows"]
