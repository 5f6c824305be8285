import pytest
from datasets import Dataset

from slam_hf import data


@pytest.fixture(scope="module")
def corpus():
    return data.load_shakespeare_corpus()


@pytest.fixture(scope="module")
def genre():
    return data.load_genre_dataset()


def test_all_42_modern_spelling_works_found():
    works = data.read_works()
    assert len(works) == data.NUM_WORKS == 42
    assert not any(w.endswith("_f") for w in works)
    assert all(text.endswith("\n") and "\r" not in text for text in works.values())


def test_corpus_split_is_by_whole_work(corpus):
    train, val = set(corpus["train"]["work"]), set(corpus["validation"]["work"])
    assert val == set(data.VALIDATION_WORKS)
    assert not train & val
    assert len(train | val) == 42
    assert list(corpus["train"].column_names) == ["work", "text"]


def test_validation_share_of_characters(corpus):
    n_train = sum(map(len, corpus["train"]["text"]))
    n_val = sum(map(len, corpus["validation"]["text"]))
    assert 0.08 < n_val / (n_train + n_val) < 0.16


def test_validation_mixes_genres():
    genres = {data.FOLIO_GENRES[w] for w in data.VALIDATION_WORKS}
    assert genres == set(data.GENRE_LABELS)


def test_gutenberg_boilerplate_is_stripped():
    raw = "junk\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\nTo be  \r\n*** END OF IT ***\r\nlicence"
    assert data.clean_text(raw) == "To be\n"


class _CharTokenizer:
    """Tiny stand-in so chunking is checked independently of the BPE model."""

    eos_token_id = 0

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_chunking_exact_blocks_and_eos_between_works():
    ds = Dataset.from_dict({"work": ["a", "b"], "text": ["abcde", "fgh"]})
    out = data.group_texts_for_causal_lm(ds, _CharTokenizer(), block_size=4)
    # stream: a b c d e <eos> f g h <eos> -> 10 tokens, 2 full blocks
    assert list(out["input_ids"]) == [[97, 98, 99, 100], [101, 0, 102, 103]]
    assert list(out["labels"]) == list(out["input_ids"])
    assert out.column_names == ["input_ids", "labels"]


def test_chunking_real_tokenizer(corpus):
    tok = data.load_default_tokenizer()
    out = data.group_texts_for_causal_lm(corpus["validation"], tok, block_size=128)
    n_tokens = sum(len(tok(t, add_special_tokens=False, verbose=False)["input_ids"]) + 1
                   for t in corpus["validation"]["text"])
    assert len(out) == n_tokens // 128
    assert all(len(row) == 128 for row in out["input_ids"])
    assert list(out["labels"]) == list(out["input_ids"])


def test_genre_splits(genre):
    assert set(genre) == {"train", "validation", "test"}
    seen = []
    for split in genre.values():
        assert split.column_names == ["text", "label", "work"]
        assert set(split["label"]) == {0, 1, 2}
        works = set(split["work"])
        assert works <= set(data.FOLIO_GENRES)
        assert all(data.label2id[data.FOLIO_GENRES[w]] == y
                   for w, y in zip(split["work"], split["label"]))
        seen.append(works)
    tr, va, te = seen
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 36
    assert va | te == set(data.VALIDATION_WORKS)


def test_genre_excludes_non_folio_works(genre):
    all_works = set().union(*(set(s["work"]) for s in genre.values()))
    for w in ("sonnets", "pericles", "rape_of_lucrece", "lovers_complaint",
              "phoenix_and_the_turtle", "passionate_pilgrim"):
        assert w not in all_works


def test_genre_passages_and_majority_rate(genre):
    for split in genre.values():
        assert data.majority_class_rate(split) < 0.6
    for split in genre.values():
        for text in split["text"]:
            lines = text.split("\n")
            assert len(lines) == 12 and all(lines)
            # cast lists, headings and stage directions are removed
            assert not any(line.startswith(("[", "ACT ", "SCENE ")) for line in lines)


def test_genre_labels_constants():
    assert data.GENRE_LABELS == ("comedy", "tragedy", "history")
    assert data.id2label == {0: "comedy", 1: "tragedy", 2: "history"}
    assert {k: data.label2id[v] for k, v in data.id2label.items()} == {0: 0, 1: 1, 2: 2}


def test_genre_with_tokenizer_is_deterministic():
    tok = data.load_default_tokenizer()
    a = data.load_genre_dataset(tok, passage_lines=20, max_length=64)
    b = data.load_genre_dataset(tok, passage_lines=20, max_length=64)
    assert list(a["validation"]["input_ids"]) == list(b["validation"]["input_ids"])
    assert max(map(len, a["validation"]["input_ids"])) <= 64
    assert len(a["validation"][0]["text"].split("\n")) == 20
