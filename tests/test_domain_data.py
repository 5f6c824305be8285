"""slam_hf.data.domains: fixed, leak-free splits of the verse, code and arithmetic domains and the mixed domains.

Checks that can fail: no held-out work, file or operand pair reaches training; every evaluation pair is the verbatim
text of its held-out source; prompt + continuation tokenize as the text does whole; builds repeat exactly; bad sizes
and names raise ValueError naming the argument.
"""

import re

import pytest

from slam_hf.data import VALIDATION_WORKS, play_lines, read_works
from slam_hf.data.domains import (
    DOMAINS,
    MIXED_DOMAINS,
    arithmetic_corpus,
    code_corpus,
    code_split,
    doctest_arithmetic_pairs,
    mixed_domain_pairs,
    operand_pairs,
    other_corpus,
    stdlib_files,
    stdlib_root,
    verse_corpus,
)
from slam_hf.processing_slam import train_bpe_tokenizer

EQUATION = re.compile(r"^(\d+) \+ (\d+) = (\d+)$")


@pytest.fixture(scope="module")
def corpora():
    return {"verse": verse_corpus(300, 60), "code": code_corpus(300, 60), "arithmetic": arithmetic_corpus(300, 60)}


def test_builds_are_deterministic(corpora):
    again = {"verse": verse_corpus(300, 60), "code": code_corpus(300, 60), "arithmetic": arithmetic_corpus(300, 60)}
    for name in DOMAINS:
        assert again[name].documents == corpora[name].documents, name
        assert again[name].pairs == corpora[name].pairs, name
    assert arithmetic_corpus(50, 10, seed=1).pairs != arithmetic_corpus(50, 10, seed=0).pairs  # the seed matters
    assert code_split("json/decoder.py") == code_split("json/decoder.py")
    # training pairs (for experts) are sized apart from the held-out ones, which stay the same
    for build in (verse_corpus, code_corpus, arithmetic_corpus):
        sized = build(50, 60, num_train_pairs=90)
        assert len(sized.pairs["train"]) == 90 and sized.pairs["held_out"] == build(50, 60).pairs["held_out"]


def test_every_domain_has_pairs_and_documents(corpora):
    for name, corpus in corpora.items():
        for split in ("train", "held_out"):
            assert len(corpus.pairs[split]) == 60, (name, split)
            assert corpus.documents[split], (name, split)
        # a prompt ends in a non-space character and its continuation starts with whitespace
        for prompt, continuation in corpus.pairs["train"] + corpus.pairs["held_out"]:
            assert prompt and not prompt[-1].isspace(), (name, prompt)
            assert continuation[:1].isspace() and continuation.strip(), (name, continuation)


def test_verse_held_out_comes_from_the_validation_works_only(corpora):
    verse = corpora["verse"]
    assert set(verse.sources["held_out"]) == set(VALIDATION_WORKS)
    assert not set(verse.sources["train"]) & set(VALIDATION_WORKS)
    works = read_works()
    held_out_lines = {line for work in VALIDATION_WORKS for line in play_lines(works[work])}
    train_text = "\n".join("\n".join(play_lines(works[work])) for work in verse.sources["train"])
    for prompt, continuation in verse.pairs["held_out"]:
        previous, line = (prompt + continuation).split("\n")
        assert previous in held_out_lines and line in held_out_lines  # verbatim lines of held-out works
    for document in verse.documents["train"]:
        assert document in train_text  # consecutive lines of one training work


def test_code_split_is_by_file_and_disjoint(corpora):
    code = corpora["code"]
    train, held_out = set(code.sources["train"]), set(code.sources["held_out"])
    assert train and held_out and not train & held_out
    assert all(code_split(path) == "train" for path in train)
    assert all(code_split(path) == "held_out" for path in held_out)
    files = stdlib_files()
    assert not any(part in ("test", "tests", "site-packages") for path in files for part in path.split("/"))
    held_out_share = sum(code_split(path) == "held_out" for path in files) / len(files)
    assert 0.08 < held_out_share < 0.25, held_out_share  # ~15 % by construction

    def source(path):
        return (stdlib_root() / path).read_text(encoding="utf-8", errors="replace")

    held_out_sources = [source(path) for path in held_out]
    train_sources = [source(path) for path in train]
    for prompt, continuation in code.pairs["held_out"]:
        lines = (prompt + continuation).split("\n")
        # each line is a verbatim (right-stripped) line of some held-out file
        assert any(all(line in text for line in lines) for text in held_out_sources), prompt
    for document in code.documents["train"][:50]:
        assert any(all(line in text for line in document.split("\n")) for text in train_sources)


def test_arithmetic_held_out_operand_pairs_never_trained(corpora):
    pairs = operand_pairs()
    train, held_out = set(pairs["train"]), set(pairs["held_out"])
    assert not train & held_out and len(train | held_out) == 100 * 100
    assert all((b, a) in held_out for a, b in held_out)  # mirrors share the split
    arithmetic = corpora["arithmetic"]
    for document in arithmetic.documents["train"]:
        for line in document.split("\n"):
            a, b, c = map(int, EQUATION.match(line).groups())
            assert a + b == c and (a, b) in train
    for split, allowed in (("train", train), ("held_out", held_out)):
        for prompt, continuation in arithmetic.pairs[split]:
            a, b, c = map(int, EQUATION.match(prompt + continuation).groups())
            assert a + b == c and (a, b) in allowed


def test_other_prose_split_by_topic():
    other = other_corpus(40)
    assert not set(other.sources["train"]) & set(other.sources["held_out"])
    for split in ("train", "held_out"):
        assert other.pairs[split]
        for prompt, continuation in other.pairs[split]:
            assert continuation == "" and len(prompt) >= 40 and "::=" not in prompt and prompt[0].isupper()


def test_mixed_domains_use_held_out_material_only(corpora):
    verse = corpora["verse"]
    held_out_halves = {prompt.split("\n")[-1] for prompt, _ in verse.pairs["held_out"]}
    quoted = mixed_domain_pairs("verse_in_code", 20, verse=verse)
    assert len(quoted) == 20
    for prompt, continuation in quoted:
        assert prompt.startswith('    print("') and continuation.endswith('")') and continuation.startswith(" ")
        words = prompt[len('    print("') :]
        assert any(half.endswith(words) for half in held_out_halves), words
    held_out = set(operand_pairs()["held_out"])
    doctests = doctest_arithmetic_pairs(30)
    assert doctests == mixed_domain_pairs("doctest_arithmetic", 30)
    for prompt, continuation in doctests:
        a, b = map(int, re.match(r"^>>> (\d+) \+ (\d+)$", prompt).groups())
        assert (a, b) in held_out and continuation == f"\n{a + b}"


def test_prompt_and_continuation_tokenize_like_the_whole_text(corpora):
    texts = [doc for corpus in corpora.values() for doc in corpus.documents["train"][:100]]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=600)
    pairs = [pair for corpus in corpora.values() for pair in corpus.pairs["held_out"][:30]]
    pairs += mixed_domain_pairs("verse_in_code", 10, verse=corpora["verse"]) + doctest_arithmetic_pairs(10)
    for prompt, continuation in pairs:
        whole = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
        apart = (
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
            + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        )
        assert whole == apart, (prompt, continuation)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"num_documents=0 must be an integer >= 1"):
        verse_corpus(0, 5)
    with pytest.raises(ValueError, match=r"num_pairs=-1 must be an integer >= 1"):
        code_corpus(5, -1)
    with pytest.raises(ValueError, match=r"num_pairs=2.5 must be an integer >= 1"):
        arithmetic_corpus(5, 2.5)
    with pytest.raises(
        ValueError,
        match=r"mixed domain name='poetry' is unknown: use one of "
        r"\('verse_in_code', 'doctest_arithmetic'\)",
    ):
        mixed_domain_pairs("poetry", 5)
    with pytest.raises(ValueError, match=r"count=0 must be an integer >= 1"):
        mixed_domain_pairs(MIXED_DOMAINS[0], 0)
