"""Window geometry for encoder-fusion blocks: which tokens each window holds, as gather indices.

Windows are fixed in *logical* positions (the count of real tokens before a token, read from the
attention mask), so left padding never shifts a window and a growing sequence never re-segments
earlier tokens: the KV cache stays valid. Window i covers logical positions [i * stride, i * stride + w).

A plan is built once per forward and shared by every EF cycle (they all have the same geometry).
It turns windowed attention into ordinary batched attention over (batch * windows) short sequences,
so compute and memory grow as O(L * w) instead of O(L^2).

Under torch.compile / torch.export (`is_tracing()`) shapes may not depend on tensor values, so the plans take a
shape-static form with the same math: the window (segment) range covers every window that can start before the
end, windows are as long as `window_length`, every slot is kept, and the slots that hold no real token are
masked (their outputs are dropped or zeroed) instead of removed. Eager mode keeps the compact plans.
"""

from dataclasses import dataclass, field

import torch

from .slam_compat import is_tracing


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
    row_valid: torch.Tensor | None = None  # (R,) bool when the rows include slots of no real token (tracing)

    @property
    def num_windows(self) -> int:
        return self.query_slots.shape[1]

    def scatter_sum(self, rows: torch.Tensor, shape) -> torch.Tensor:
        """(R, D) outputs of the real window slots -> (B, L, D) per-token sums over windows."""
        batch, length = shape
        if self.row_valid is not None:  # traced plans keep every slot: drop the ones holding no real token
            rows = torch.where(self.row_valid[:, None], rows, 0)
        out = rows.new_zeros(batch * length, rows.shape[-1]).index_add_(0, self.valid_tokens, rows)
        return out.view(batch, length, -1)


def padding_offsets(attention_mask: torch.Tensor | None, batch_size: int, total_length: int, device):
    """Leading padding and real-token count per row. Real tokens must form one contiguous span."""
    if attention_mask is None:
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return zeros, zeros + total_length
    real = attention_mask.bool()
    return (real.long().cumsum(-1) == 0).sum(-1), real.sum(-1)


def _locate_new_tokens(attention_mask, batch_size, past_length, new_length, device):
    """Per row: leading padding, real-token count, and the logical range [lo, hi] of the real new tokens."""
    total = past_length + new_length
    offsets, real = padding_offsets(attention_mask, batch_size, total, device)
    lo = (past_length - offsets).clamp(min=0)
    hi = torch.minimum(total - offsets, real) - 1
    return offsets, real, lo, hi


def _window_slots(ids, offsets, real, past_length, new_length, window_length, stride, is_causal, plain_causal):
    """Gather indices of the windows `ids` (n,), for every row.

    Returns query_slots (B, n, q_len) into the new tokens (clamped), query_valid (B, n, q_len),
    key_index (B, n, k_len) into past + new tokens (clamped), and the mask (B, n, q_len, k_len) bool
    (True = attend) or None when plain causal attention inside the window is exact.
    """
    device = ids.device
    total = past_length + new_length
    if is_tracing():  # min() with a symbolic length would guard on it: full-length windows, the rest masked
        query_length = key_length = window_length
    else:
        query_length = min(window_length, new_length)
        key_length = min(window_length, total)
    starts = ids * stride  # (n,)
    exists = torch.ones(offsets.shape[0], ids.numel(), dtype=torch.bool, device=device)
    if not is_causal and stride < window_length:  # a trailing window inside its predecessor does not exist
        exists = (ids == 0) | ((ids - 1) * stride + window_length < real[:, None])

    first_query = torch.maximum(starts[None, :], (past_length - offsets)[:, None])  # (B, n)
    query_logical = first_query[..., None] + torch.arange(query_length, device=device)  # (B, n, q_len)
    query_slots = query_logical + offsets[:, None, None] - past_length
    query_valid = (
        (query_slots < new_length)
        & (query_logical < (starts + window_length)[None, :, None])
        & (query_logical < real[:, None, None])
        & exists[..., None]
    )
    key_logical = (starts[:, None] + torch.arange(key_length, device=device))[None]  # (1, n, k_len)
    key_index = key_logical + offsets[:, None, None]
    key_valid = (key_logical < real[:, None, None]) & (key_index < total)

    mask = None
    if not plain_causal:
        allowed = key_valid[:, :, None, :]
        if is_causal:
            allowed = allowed & (key_logical[:, :, None, :] <= query_logical[..., None])
        # Queries that are not real tokens attend everywhere: finite garbage that is discarded,
        # instead of an all-masked row that would put NaN into the backward pass.
        mask = allowed | ~query_valid[..., None]
    return query_slots.clamp(0, new_length - 1), query_valid, key_index.clamp(0, total - 1), mask


def _is_plain_causal(is_causal, past_length, real, total, implementation):
    """No past, no padding: every window's mask is the lower triangle, which sdpa applies by itself.

    Under tracing the padding cannot be read, and traced windows may overhang the end: always build the mask."""
    if is_tracing():
        return False
    return is_causal and past_length == 0 and implementation != "eager" and bool((real == total).all())


def _real_slots(query_valid, token_index, num_tokens):
    """The window slots that hold a real token: (rows, their flat token index, coverage per token, row mask).

    Eager: only those rows (nonzero), and row mask None. Traced: nonzero and bincount have data-dependent sizes,
    so every row is kept, the row mask marks the real ones and the coverage counts them only.
    """
    tokens = token_index.flatten()
    if is_tracing():
        row_valid = query_valid.flatten()
        coverage = torch.zeros(num_tokens, device=tokens.device).index_add_(0, tokens, row_valid.float())
        return torch.arange(tokens.numel(), device=tokens.device), tokens, coverage, row_valid
    valid_rows = query_valid.flatten().nonzero().squeeze(1)
    valid_tokens = tokens[valid_rows]
    return valid_rows, valid_tokens, torch.bincount(valid_tokens, minlength=num_tokens).float(), None


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
    offsets, real, lo, hi = _locate_new_tokens(attention_mask, batch_size, past_length, new_length, device)

    # Windows must intersect the range of real new tokens of some row.
    rows = hi >= lo
    tracing = is_tracing()
    if tracing:
        # The range from shapes alone: whole rounds of blocks over every start before the end, plus one spare
        # (empty) round, so that no length gives a block a single window: torch.export would otherwise guard on
        # that count being 1 or not (size-1 dims are special) and pin the range of a dynamic length.
        windows = torch.arange(((total - 1) // (stride * num_blocks) + 2) * num_blocks, device=device)
    elif rows.any():
        first = torch.div(lo[rows] - window_length + stride, stride, rounding_mode="floor").clamp(min=0)
        last = hi[rows] // stride
        if not is_causal:  # the first window reaching the end is the last one that exists
            reaching_end = torch.div(real[rows] - window_length + stride - 1, stride, rounding_mode="floor")
            last = torch.minimum(last, reaching_end.clamp(min=0))
        first_window, last_window = int(first.min()), int(last.max())
    else:  # nothing but padding: one window keeps shapes valid, every query is masked out
        first_window = last_window = 0
    if not tracing:
        windows = torch.arange(first_window, last_window + 1, device=device)

    plain_causal = _is_plain_causal(is_causal, past_length, real, total, implementation)
    batch_index = torch.arange(batch_size, device=device)[:, None, None]
    plans = []
    for block in range(num_blocks):
        if tracing:  # every block gets the same number of windows, a shape known from the length
            ids = windows[(block - block_offset) % num_blocks :: num_blocks]
        else:
            ids = windows[(windows + block_offset) % num_blocks == block]
        query_slots, query_valid, key_index, mask = _window_slots(
            ids, offsets, real, past_length, new_length, window_length, stride, is_causal, plain_causal
        )
        valid_rows, valid_tokens, coverage, row_valid = _real_slots(
            query_valid, batch_index * new_length + query_slots, batch_size * new_length
        )
        plans.append(
            WindowPlan(
                batch_index=batch_index,
                query_slots=query_slots,
                query_valid=query_valid,
                key_index=key_index,
                mask=None if mask is None else mask.flatten(0, 1)[:, None],
                implementation=implementation,
                valid_rows=valid_rows,
                valid_tokens=valid_tokens,
                coverage=coverage.view(batch_size, new_length, 1),
                row_valid=row_valid,
            )
        )
    return plans


@dataclass
class SegmentPlan:
    """Non-overlapping segments of `segment_length` tokens laid out as `num_slots` slots (SLAM v2).

    Segment k (logical positions [k * S, (k + 1) * S)) sits in slot k % num_slots of group k // num_slots,
    so a slot holds every num_slots-th segment and the slot layout is the same in every cycle: rotating
    the blocks only changes which block's weights a slot uses. Tensors are (slots, B, groups, tokens).
    """

    token_index: torch.Tensor  # (G, B, m, q_len): flat index b * new_length + t of each query slot, clamped
    query_valid: torch.Tensor  # (G, B, m, q_len) bool: a real new token sits in this slot
    key_index: torch.Tensor  # (G, B, m, k_len): flat index b * total + t of each key slot, clamped
    mask: torch.Tensor | None  # (G, B * m, 1, q_len, k_len) bool, True = attend; None = plain causal
    implementation: str
    active_slots: list[int]  # slots that hold at least one real token
    _real_rows: dict = field(default_factory=dict, repr=False)  # slot order -> (rows, their token index)

    @property
    def num_slots(self) -> int:
        return self.token_index.shape[0]

    def gather(self, states: torch.Tensor, slots, keys: bool = False) -> torch.Tensor:
        """(B, T, ...) per-token states -> (len(slots), B * m * tokens, ...) rows of those slots."""
        index = (self.key_index if keys else self.token_index)[slots]
        return states.flatten(0, 1)[index.flatten(1)]

    def scatter(self, rows: torch.Tensor, slots, into: torch.Tensor) -> torch.Tensor:
        """Write the rows of real tokens of `slots` back into a copy of the per-token tensor `into`."""
        if is_tracing():
            # nonzero() has a data-dependent size: write every slot, those of no real token into a spare row past
            # the end that is then dropped (each real token still sits in exactly one slot).
            spare = into.shape[0] * into.shape[1]
            tokens = torch.where(self.query_valid[slots].flatten(), self.token_index[slots].flatten(), spare)
            padded = torch.cat([into.flatten(0, 1), into.new_zeros(1, *into.shape[2:])])
            return padded.index_copy(0, tokens, rows.flatten(0, 1))[:spare].view_as(into)
        key = tuple(slots)
        if key not in self._real_rows:  # computed once per forward and slot order, not once per call
            valid = self.query_valid[slots].flatten().nonzero().squeeze(1)
            self._real_rows[key] = valid, self.token_index[slots].flatten()[valid]
        valid, tokens = self._real_rows[key]
        return into.flatten(0, 1).index_copy(0, tokens, rows.flatten(0, 1)[valid]).view_as(into)


def plan_segments(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    past_length: int,
    new_length: int,
    segment_length: int,
    num_slots: int,
    is_causal: bool,
    implementation: str,
    device,
) -> SegmentPlan:
    """The segments holding the real new tokens, in the slot layout of `SegmentPlan`."""
    total = past_length + new_length
    offsets, real, lo, hi = _locate_new_tokens(attention_mask, batch_size, past_length, new_length, device)
    rows = hi >= lo
    if is_tracing():  # from shapes alone: every group that starts before the end, and a spare one (see plan_windows)
        first_group, last_group = 0, (total - 1) // (segment_length * num_slots) + 1
    elif rows.any():
        first_group = int((lo[rows] // segment_length).min()) // num_slots
        last_group = int((hi[rows] // segment_length).max()) // num_slots
    else:  # nothing but padding: one group keeps shapes valid, every query is masked out
        first_group = last_group = 0
    groups = torch.arange(first_group, last_group + 1, device=device)
    ids = (groups[None, :] * num_slots + torch.arange(num_slots, device=device)[:, None]).flatten()  # (G * m,)

    plain_causal = _is_plain_causal(is_causal, past_length, real, total, implementation)
    query_slots, query_valid, key_index, mask = _window_slots(
        ids, offsets, real, past_length, new_length, segment_length, segment_length, is_causal, plain_causal
    )
    batch = torch.arange(batch_size, device=device)[:, None, None]

    def slot_major(tensor):  # (B, G * m, ...) -> (G, B, m, ...)
        return tensor.unflatten(1, (num_slots, -1)).transpose(0, 1)

    query_valid = slot_major(query_valid)
    # Traced, every slot runs (its rows masked where it holds no token): reading the occupancy needs the values.
    active_slots = list(range(num_slots))
    if not is_tracing():
        active_slots = query_valid.flatten(1).any(1).nonzero().flatten().tolist()
    if mask is not None:
        mask = slot_major(mask).flatten(1, 2)[:, :, None]
    return SegmentPlan(
        token_index=slot_major(batch * new_length + query_slots),
        query_valid=query_valid,
        key_index=slot_major(batch * total + key_index),
        mask=mask,
        implementation=implementation,
        active_slots=active_slots,
    )


__all__ = ["SegmentPlan", "WindowPlan", "padding_offsets", "plan_segments", "plan_windows"]
