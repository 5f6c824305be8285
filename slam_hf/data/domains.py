"""Offline domain corpora for Transformer² experts: Shakespeare verse, Python source, arithmetic, and mixed domains.

Every domain is built from data already on the machine (no network), deterministically, with a fixed split whose
held-out part can never reach training:

* **verse**: dialogue lines of the Shakespeare works (`slam_hf.data.read_works` / `play_lines`). Held out: the
  whole works `slam_hf.data.VALIDATION_WORKS` (neighbouring lines of one play are near-duplicates, so a split by
  line would leak).
* **code**: the running interpreter's Python standard-library source (`sysconfig.get_paths()["stdlib"]`, `*.py`,
  without tests, site-packages, idlelib, turtledemo, lib2to3, encodings tables and pydoc_data). Held out: whole
  files, chosen by a hash of the file's path relative to the stdlib root, so the split does not depend on the
  order the file system lists files in. The corpus is the stdlib *of the interpreter that runs this*: another
  Python version (even another 3.11 patch release) can change a few files and so the numbers; the file list is
  recorded in `DomainCorpus.sources`.
* **arithmetic**: templated sums "37 + 48 = 85" of two numbers in [0, 99]. Held out: a seeded 15 % of the
  *unordered* operand pairs, so neither "37 + 48" nor "48 + 37" of a held-out pair is ever trained on.
* **other**: English prose from the stdlib's `pydoc_data.topics` (the language reference's help texts, indented
  grammar and code examples removed), split by topic. No expert covers it; a dispatcher should send it to the base
  weights. It is used for classification only, never for language-model training.

Each domain yields training *documents* (a few consecutive lines, for language-model pretraining) and *pairs*
(prompt, continuation) with text = prompt + continuation taken verbatim from the source: training pairs (to train a
task expert) and held-out pairs (to evaluate). Sizes are caps, spread evenly over works, files or operand pairs.
Prompts end in a non-space character and continuations start with a space or newline: a byte-level BPE's
pre-tokenizer always splits there, so tokenizing prompt and continuation separately gives the same tokens as
tokenizing the text whole.

Two **mixed domains** combine two of the three for the few-shot mixture; neither is ever used to train the base
model or an expert:

* `verse_in_code`: Python code that quotes verse, `    print("Now is the winter of` → ` our discontent")`,
  with lines from the held-out works (the verse expert knows the words, the code expert the quoting);
* `doctest_arithmetic`: a doctest sum, `>>> 37 + 48` → `\\n85`, with held-out operand pairs (the arithmetic
  expert knows the sums, the code expert the `>>>` format).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from .shakespeare import VALIDATION_WORKS, play_lines, read_works

DOMAINS = ("verse", "code", "arithmetic")
OTHER_DOMAIN = "other"
MIXED_DOMAINS = ("verse_in_code", "doctest_arithmetic")
SPLITS = ("train", "held_out")

# stdlib folders that are not ordinary library code: test suites, third-party packages, GUI demos, generated
# codec tables and help texts (the "other" domain's source); also the build's "config-<version>-<platform>" folder.
EXCLUDED_STDLIB_PARTS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "idlelib",
        "turtledemo",
        "lib2to3",
        "encodings",
        "pydoc_data",
        "__pycache__",
        "ensurepip",
    }
)
HELD_OUT_SHARE = 0.15  # of code files, of arithmetic operand pairs and of "other" topics
MAX_LINE_CHARS = 100  # longer source lines (tables, long strings) make poor prompts
LINES_PER_DOCUMENT = 8
CODE_PROMPT_LINES = 3
ARITHMETIC_MAX_OPERAND = 99


@dataclass
class DomainCorpus:
    """One domain's split: training documents and evaluation pairs for each split, and where they came from."""

    name: str
    documents: dict[str, list[str]]  # split -> texts for language-model training (held_out: for evaluation only)
    pairs: dict[str, list[tuple[str, str]]]  # split -> (prompt, continuation)
    sources: dict[str, list[str]] = field(default_factory=dict)  # split -> works, files, operand pairs or topics


def _stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _check_sizes(**sizes):
    for name, value in sizes.items():
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{name}={value!r} must be an integer >= 1.")


def _blocks(lines: list[str], size: int) -> list[str]:
    return ["\n".join(lines[start : start + size]) for start in range(0, len(lines) - size + 1, size)]


def evenly_spread(items: list, count: int) -> list:
    """`count` items evenly spaced over `items` (all of them if there are fewer), in their order."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def _split_line(line: str) -> tuple[str, str] | None:
    """(first half of the words, " " + the rest), or None for lines too short to leave something on each side."""
    words = line.split(" ")
    if len(words) < 4 or any(not word for word in words):
        return None
    cut = len(words) // 2
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


# ------------------------------------------------------------------------------------------------ verse ----
@functools.lru_cache(maxsize=1)
def _work_lines() -> dict[str, tuple[str, ...]]:
    return {work: tuple(play_lines(text)) for work, text in read_works().items()}


def _pair_counts(num_pairs, num_train_pairs) -> dict[str, int]:
    num_train_pairs = num_pairs if num_train_pairs is None else num_train_pairs
    _check_sizes(num_pairs=num_pairs, num_train_pairs=num_train_pairs)
    return {"train": num_train_pairs, "held_out": num_pairs}


def verse_corpus(num_documents: int, num_pairs: int, num_train_pairs: int | None = None) -> DomainCorpus:
    """Shakespeare dialogue: training documents of consecutive lines from the training works; pairs (previous
    line + first half of a line → the rest of it), held-out ones from `VALIDATION_WORKS` only. `num_pairs` is the
    number of held-out pairs, `num_train_pairs` (default: the same) that of training pairs."""
    _check_sizes(num_documents=num_documents)
    counts = _pair_counts(num_pairs, num_train_pairs)
    works = _work_lines()
    sources = {
        "train": [w for w in works if w not in VALIDATION_WORKS],
        "held_out": [w for w in works if w in VALIDATION_WORKS],
    }
    documents, pairs = {}, {}
    for split, names in sources.items():
        blocks, split_pairs = [], []
        for work in names:
            lines = [line for line in works[work] if len(line) <= MAX_LINE_CHARS]
            blocks += _blocks(lines, LINES_PER_DOCUMENT)
            for previous, line in zip(lines, lines[1:]):
                halves = _split_line(line)
                if halves:
                    split_pairs.append((previous + "\n" + halves[0], halves[1]))
        documents[split] = evenly_spread(blocks, num_documents)
        pairs[split] = evenly_spread(split_pairs, counts[split])
    return DomainCorpus("verse", documents, pairs, sources)


# ------------------------------------------------------------------------------------------------- code ----
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[str, ...]:
    """Relative paths of the stdlib's library modules, sorted."""
    root = stdlib_root()
    return tuple(
        sorted(
            path.relative_to(root).as_posix()
            for path in root.rglob("*.py")
            if not EXCLUDED_STDLIB_PARTS.intersection(path.relative_to(root).parts)
            and not path.relative_to(root).parts[0].startswith("config-")
        )
    )


def code_split(relative_path: str) -> str:
    """'held_out' or 'train' for a stdlib file, fixed by its relative path."""
    return "held_out" if _stable_fraction("code:" + relative_path) < HELD_OUT_SHARE else "train"


def _source_lines(relative_path: str) -> list[str]:
    text = (stdlib_root() / relative_path).read_text(encoding="utf-8", errors="replace")
    return [line.rstrip() for line in text.split("\n") if line.strip() and len(line.rstrip()) <= MAX_LINE_CHARS]


def code_corpus(num_documents: int, num_pairs: int, num_train_pairs: int | None = None) -> DomainCorpus:
    """Python stdlib source: documents of consecutive non-blank lines; pairs (3 lines → "\\n" + the next line)."""
    _check_sizes(num_documents=num_documents)
    counts = _pair_counts(num_pairs, num_train_pairs)
    files = stdlib_files()
    sources = {split: [f for f in files if code_split(f) == split] for split in SPLITS}
    documents, pairs = {}, {}
    for split, names in sources.items():
        # Spread the budget over files first, so large modules do not crowd out the rest.
        chosen = evenly_spread(names, max(1, min(len(names), num_documents)))
        per_file_documents = -(-num_documents // len(chosen))
        per_file_pairs = -(-counts[split] // len(chosen))
        blocks, split_pairs = [], []
        for name in chosen:
            lines = _source_lines(name)
            blocks += evenly_spread(_blocks(lines, LINES_PER_DOCUMENT), per_file_documents)
            window = CODE_PROMPT_LINES + 1
            candidates = [
                ("\n".join(lines[start : start + CODE_PROMPT_LINES]), "\n" + lines[start + CODE_PROMPT_LINES])
                for start in range(0, len(lines) - window + 1, window)
            ]
            split_pairs += evenly_spread(candidates, per_file_pairs)
        documents[split] = evenly_spread(blocks, num_documents)
        pairs[split] = evenly_spread(split_pairs, counts[split])
        sources[split] = chosen
    return DomainCorpus("code", documents, pairs, sources)


# ------------------------------------------------------------------------------------------- arithmetic ----
def operand_pairs(seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """{'train': [...], 'held_out': [...]} ordered operand pairs; a pair and its mirror share a split."""
    unordered = [(a, b) for a in range(ARITHMETIC_MAX_OPERAND + 1) for b in range(a, ARITHMETIC_MAX_OPERAND + 1)]
    random.Random(f"arithmetic-split-{seed}").shuffle(unordered)
    cut = round(len(unordered) * HELD_OUT_SHARE)
    split = {"held_out": unordered[:cut], "train": unordered[cut:]}
    return {name: sorted({p for a, b in pairs for p in ((a, b), (b, a))}) for name, pairs in split.items()}


def equation(a: int, b: int) -> tuple[str, str]:
    return f"{a} + {b} =", f" {a + b}"


def arithmetic_corpus(
    num_documents: int, num_pairs: int, seed: int = 0, num_train_pairs: int | None = None
) -> DomainCorpus:
    """Sums "a + b = c": documents of `LINES_PER_DOCUMENT` equations; pairs ("a + b =" → " c")."""
    _check_sizes(num_documents=num_documents)
    counts = _pair_counts(num_pairs, num_train_pairs)
    split_pairs = operand_pairs(seed)
    documents, pairs = {}, {}
    for split, operands in split_pairs.items():
        rng = random.Random(f"arithmetic-{split}-{seed}")
        documents[split] = [
            "\n".join("".join(equation(*rng.choice(operands))) for _ in range(LINES_PER_DOCUMENT))
            for _ in range(num_documents)
        ]
        pairs[split] = [equation(*operands) for operands in rng.sample(operands, min(counts[split], len(operands)))]
    sources = {split: [f"{a} + {b}" for a, b in operands] for split, operands in split_pairs.items()}
    return DomainCorpus("arithmetic", documents, pairs, sources)


# ------------------------------------------------------------------------------------------------ other ----
_PROSE_LINE = re.compile(r"^[A-Z][^\n]*$")


def other_corpus(num_pairs: int) -> DomainCorpus:
    """English prose from `pydoc_data.topics`: unindented paragraphs (no grammar or code), cut into pieces of one
    or two sentences; the pair's prompt is the whole piece (only dispatch uses it) and its continuation empty."""
    _check_sizes(num_pairs=num_pairs)
    from pydoc_data.topics import topics

    pairs, sources = {split: [] for split in SPLITS}, {split: [] for split in SPLITS}
    for topic in sorted(topics):
        split = "held_out" if _stable_fraction("other:" + topic) < HELD_OUT_SHARE else "train"
        sources[split].append(topic)
        for paragraph in topics[topic].split("\n\n"):
            lines = paragraph.split("\n")
            if not all(line and not line[0].isspace() for line in lines) or not _PROSE_LINE.match(lines[0]):
                continue
            text = " ".join(lines)
            if any(mark in text for mark in ("::=", "***", "===", ">>>")) or len(text) < 40:
                continue
            sentence_ends = [m.end() for m in re.finditer(r"[.:;] ", text)] + [len(text)]
            end = next((e for e in sentence_ends if e >= 40), len(text))
            pairs[split].append((text[: min(end, 200)].rstrip(), ""))
    return DomainCorpus(
        OTHER_DOMAIN,
        {split: [] for split in SPLITS},
        {split: evenly_spread(found, num_pairs) for split, found in pairs.items()},
        sources,
    )


# -------------------------------------------------------------------------------------------- mixed ----
def verse_in_code_pairs(verse: DomainCorpus, count: int) -> list[tuple[str, str]]:
    """`    print("<first half of a held-out verse line>` → `<rest>")`; speaker prefixes and quotes left out."""
    pairs = []
    for prompt, continuation in verse.pairs["held_out"]:
        line = prompt.split("\n")[-1] + continuation
        line = re.sub(r"^[A-Z][\w.]*\. ", "", line)  # "Macb. So foul..." -> "So foul..."
        halves = _split_line(line) if '"' not in line else None
        if halves:
            pairs.append((f'    print("{halves[0]}', f'{halves[1]}")'))
    return evenly_spread(pairs, count)


def doctest_arithmetic_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`>>> a + b` → `\\nc` for held-out operand pairs: the sum as a doctest shows it."""
    operands = operand_pairs(seed)["held_out"]
    chosen = random.Random(f"doctest-{seed}").sample(operands, min(count, len(operands)))
    return [(f">>> {a} + {b}", f"\n{a + b}") for a, b in chosen]


def mixed_domain_pairs(name: str, count: int, *, verse: DomainCorpus | None = None, seed: int = 0):
    """The held-out pairs of a mixed domain (`MIXED_DOMAINS`)."""
    _check_sizes(count=count)
    if name == "verse_in_code":
        return verse_in_code_pairs(verse if verse is not None else verse_corpus(1, 4 * count), count)
    if name == "doctest_arithmetic":
        return doctest_arithmetic_pairs(count, seed)
    raise ValueError(f"mixed domain name={name!r} is unknown: use one of {MIXED_DOMAINS}.")


def load_domains(
    num_documents: int, num_pairs: int, seed: int = 0, num_train_pairs: int | None = None
) -> dict[str, DomainCorpus]:
    """The three expert domains, each with `num_documents` training (and held-out) documents, `num_pairs`
    held-out pairs and `num_train_pairs` (default: the same) training pairs."""
    return {
        "verse": verse_corpus(num_documents, num_pairs, num_train_pairs),
        "code": code_corpus(num_documents, num_pairs, num_train_pairs),
        "arithmetic": arithmetic_corpus(num_documents, num_pairs, seed, num_train_pairs),
    }


__all__ = [
    "DOMAINS",
    "MIXED_DOMAINS",
    "OTHER_DOMAIN",
    "DomainCorpus",
    "arithmetic_corpus",
    "code_corpus",
    "code_split",
    "doctest_arithmetic_pairs",
    "equation",
    "evenly_spread",
    "load_domains",
    "mixed_domain_pairs",
    "operand_pairs",
    "other_corpus",
    "stdlib_files",
    "verse_corpus",
    "verse_in_code_pairs",
]
