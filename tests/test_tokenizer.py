import importlib.util
import json
import os

import pytest
from transformers import AutoTokenizer

from slam_hf.data import DEFAULT_TOKENIZER_DIR, load_default_tokenizer, read_works

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "train_tokenizer.py")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER_DIR)


def test_loads_and_size(tok):
    assert len(tok) == 8192
    assert load_default_tokenizer().get_vocab() == tok.get_vocab()


def test_special_token_ids(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token, tok.mask_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<mask>",
    )
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert tok.convert_tokens_to_ids("<image>") == 5
    assert tok.image_token == "<image>" and tok.image_token_id == 5
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3, 4, 5]
    # special tokens are never split, even inside running text
    assert tok("<image>")["input_ids"] == [5]
    assert "<image>" in tok.tokenize("a<image>b")


def test_no_bos_eos_inserted(tok):
    ids = tok("To be, or not to be")["input_ids"]
    assert ids == tok("To be, or not to be", add_special_tokens=False)["input_ids"]
    assert not set(ids) & {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize(
    "text",
    [
        "",
        " leading space and trailing  ",
        "tabs\tand\r\nwindows\rnewlines\n\n\n",
        "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f600 \u200b zero-width, \u00a0nbsp",
        "a . b , c ! d ? 'tis don't",
        "literal <s> and </s> and <image> tokens",
    ],
)
def test_round_trip_odd_text(tok, text):
    assert tok.decode(tok(text)["input_ids"]) == text


def test_round_trip_real_text_and_no_unk(tok):
    text = read_works()["hamlet"][:20000]
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert len(text) / len(ids) > 3  # trained on this domain, so compression is good


def test_shipped_files_match_training_script(tmp_path):
    spec = importlib.util.spec_from_file_location("train_tokenizer", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--output-dir", str(tmp_path)])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(DEFAULT_TOKENIZER_DIR, name), "rb") as shipped:
            assert shipped.read() == (tmp_path / name).read_bytes(), name
    model = json.loads((tmp_path / "tokenizer.json").read_text())["model"]
    assert len(model["vocab"]) == 8192
