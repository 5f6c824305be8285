"""SlamProcessor: <image> expansion, flat and nested images, text-only calls, every ValueError, save/load, remote
code."""

import ast
import json
import textwrap

import numpy as np
import pytest
import torch
from hub_helpers import run_offline
from PIL import Image
from transformers import AutoProcessor

from slam_hf import processing_slam
from slam_hf.image_processing_slam import SlamImageProcessor
from slam_hf.processing_slam import SlamProcessor, train_bpe_tokenizer

IMAGE = "<image>"
IMAGE_ID = 5  # fixed by SPECIAL_TOKENS
TOKENS_PER_IMAGE = 8  # 28 x 56 pixels, patch 14 -> a 2 x 4 grid


def random_image(height=30, width=20, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tokenizer():
    words = ["alpha", "beta", "gamma", "delta", "photo", "of", "a", "digit", "the", "is"]
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, size=12)) + f" {i}" for i in range(400)]
    return train_bpe_tokenizer(corpus, vocab_size=300)


def make_processor(tokenizer, **kwargs):
    return SlamProcessor(SlamImageProcessor(size={"height": 28, "width": 56}, patch_size=14), tokenizer, **kwargs)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return make_processor(tokenizer)


def expected_ids(tokenizer, text):
    """Reference: expand every <image> by hand, then tokenize."""
    return tokenizer(text.replace(IMAGE, IMAGE * TOKENS_PER_IMAGE))["input_ids"]


# ---------------------------------------------------------------------------------------------- construction
def test_image_token_and_id(processor, tokenizer):
    assert processor.image_token == IMAGE and processor.image_token_id == IMAGE_ID
    assert tokenizer.convert_tokens_to_ids(IMAGE) == IMAGE_ID
    assert processor.model_input_names == ["pixel_values", "image_grid_hw", "input_ids", "attention_mask"]
    with pytest.raises(ValueError, match=r"image_token '<img>' is not a single token of this tokenizer"):
        make_processor(tokenizer, image_token="<img>")


# ---------------------------------------------------------------------------------------------- expansion
def test_one_image_expands_to_grid_prod_tokens(processor, tokenizer):
    image = random_image()
    out = processor(images=image, text="a photo of <image> is a digit", return_tensors="pt")
    assert set(out.keys()) == {"input_ids", "attention_mask", "pixel_values", "image_grid_hw"}
    assert out["image_grid_hw"].tolist() == [[2, 4]]
    assert out["pixel_values"].shape == (1, 3, 28, 56) and out["pixel_values"].dtype == torch.float32
    assert torch.equal(out["pixel_values"], processor.image_processor(image, return_tensors="pt")["pixel_values"])
    ids = out["input_ids"][0].tolist()
    assert ids == expected_ids(tokenizer, "a photo of <image> is a digit")
    assert ids.count(IMAGE_ID) == out["image_grid_hw"][0].prod().item() == TOKENS_PER_IMAGE
    # The 8 placeholders are contiguous, where <image> stood.
    first = ids.index(IMAGE_ID)
    assert ids[first : first + TOKENS_PER_IMAGE] == [IMAGE_ID] * TOKENS_PER_IMAGE
    assert processor.decode(ids) == "a photo of " + IMAGE * TOKENS_PER_IMAGE + " is a digit"
    assert out["attention_mask"].tolist() == [[1] * len(ids)]


def test_batch_of_two_rows_with_one_image_each(processor, tokenizer):
    texts = ["<image> alpha", "the digit is <image> beta gamma delta"]
    images = [random_image(seed=1), random_image(40, 40, seed=2)]
    out = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 28, 56)
    assert out["image_grid_hw"].tolist() == [[2, 4], [2, 4]]
    assert (out["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [8, 8]
    for row, text in enumerate(texts):
        ids = expected_ids(tokenizer, text)
        # Right padding: the row's ids, then <pad> (id 0) with attention 0.
        assert out["input_ids"][row, : len(ids)].tolist() == ids
        assert out["input_ids"][row, len(ids) :].eq(0).all()
        assert out["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (out["input_ids"].shape[1] - len(ids))
    decoded = processor.batch_decode(out["input_ids"], skip_special_tokens=True)
    assert decoded == [" alpha", "the digit is  beta gamma delta"]


def test_row_with_two_images_flat_and_nested_agree(processor, tokenizer):
    texts = ["alpha <image>", "<image> beta <image> gamma"]
    images = [random_image(seed=s) for s in range(3)]
    flat = processor(images=images, text=texts)
    nested = processor(images=[images[:1], images[1:]], text=texts)
    assert flat["input_ids"] == nested["input_ids"]
    assert np.array_equal(flat["pixel_values"], nested["pixel_values"]) and flat["pixel_values"].shape == (3, 3, 28, 56)
    assert [ids.count(IMAGE_ID) for ids in flat["input_ids"]] == [8, 16]
    assert flat["input_ids"] == [expected_ids(tokenizer, text) for text in texts]
    # Images are consumed in order: the second row's images are images 1 and 2.
    assert np.array_equal(flat["pixel_values"][1:], processor.image_processor(images[1:])["pixel_values"])


def test_nested_images_with_an_image_free_row(processor, tokenizer):
    out = processor(images=[[], [random_image()]], text=["alpha beta", "<image> gamma"])
    assert out["input_ids"] == [tokenizer("alpha beta")["input_ids"], expected_ids(tokenizer, "<image> gamma")]
    assert out["pixel_values"].shape == (1, 3, 28, 56)


def test_per_call_patch_size_changes_the_token_count(processor):
    out = processor(images=random_image(), text="<image>", patch_size=7)
    assert out["image_grid_hw"].tolist() == [[4, 8]]
    assert out["input_ids"] == [[IMAGE_ID] * 32]


def test_grayscale_array_image(processor):
    """A 2-D array (which transformers' make_flat_list_of_images rejects) counts as one image."""
    gray = np.random.default_rng(0).integers(0, 256, (30, 20), dtype=np.uint8)
    out = processor(images=gray, text="<image> alpha")
    assert out["input_ids"][0].count(IMAGE_ID) == 8 and out["pixel_values"].shape == (1, 3, 28, 56)


def test_text_only_and_images_only(processor, tokenizer):
    out = processor(text=["alpha beta", "gamma"], return_tensors="pt", padding=True)
    assert set(out.keys()) == {"input_ids", "attention_mask"}
    assert out["input_ids"][0].tolist() == tokenizer("alpha beta")["input_ids"]
    assert processor(text="alpha")["input_ids"] == [tokenizer("alpha")["input_ids"]]
    out = processor(images=random_image())
    assert set(out.keys()) == {"pixel_values", "image_grid_hw"}


def test_truncation_that_keeps_every_placeholder_is_fine(processor):
    out = processor(images=random_image(), text="<image> alpha beta gamma delta", truncation=True, max_length=9)
    assert out["input_ids"][0][:8] == [IMAGE_ID] * 8 and len(out["input_ids"][0]) == 9


# ---------------------------------------------------------------------------------------------- errors
def test_fewer_or_more_image_tokens_than_images(processor):
    image = random_image()
    with pytest.raises(ValueError, match=r"Got 2 image\(s\) but 1 <image> token\(s\).*one <image> in the text for"):
        processor(images=[image, image], text="alpha <image>")
    with pytest.raises(ValueError, match=r"Got 1 image\(s\) but 3 <image> token\(s\) in the text \(per row: \[1, 2\]"):
        processor(images=image, text=["<image>", "<image> <image>"])
    with pytest.raises(ValueError, match=r"Got 1 image\(s\) but 0 <image> token\(s\)"):
        processor(images=image, text="alpha")


def test_nested_counts_must_match_per_row(processor):
    image = random_image()
    # Same total (2) as the text, but in the wrong rows.
    with pytest.raises(ValueError, match=r"per row \[2, 0\] do not match the <image> tokens per text row \[1, 1\]"):
        processor(images=[[image, image], []], text=["<image>", "<image>"])
    with pytest.raises(ValueError, match=r"per row \[1\] do not match .* per text row \[1, 0\].*one list per text row"):
        processor(images=[[image]], text=["<image>", "alpha"])


def test_image_tokens_without_images(processor):
    with pytest.raises(ValueError, match=r"The text has 2 <image> token\(s\) \(per row: \[0, 2\]\) but no images"):
        processor(text=["alpha", "<image> beta <image>"])


def test_truncation_cutting_placeholders_raises(processor, tokenizer):
    kept = 5 - len(tokenizer("alpha beta ")["input_ids"])
    assert 0 < kept < 8
    with pytest.raises(ValueError, match=rf"kept \[{kept}\] <image> tokens of the expected \[8\].*Raise max_length"):
        processor(images=random_image(), text="alpha beta <image>", truncation=True, max_length=5)
    kept = 8 - len(tokenizer("alpha beta gamma delta ")["input_ids"])
    with pytest.raises(ValueError, match=rf"kept \[8, {kept}\] <image> tokens of the expected \[8, 8\]"):
        processor(
            images=[random_image(), random_image()],
            text=["<image>", "alpha beta gamma delta <image>"],
            truncation=True,
            max_length=8,
            padding=True,
        )


def test_image_processor_errors_propagate(processor):
    rgba = Image.fromarray(np.zeros((28, 56, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"mode 'RGBA' with do_convert_rgb=False"):
        processor(images=rgba, text="<image>", do_convert_rgb=False)
    with pytest.raises(ValueError, match=r"30x20 \(H x W\) after loading, which is not a multiple of patch_size=14"):
        processor(images=random_image(30, 20), text="<image>", do_resize=False)


# ---------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path, tokenizer):
    """In-process loading finds SlamImageProcessor/SlamProcessor through the registrations in slam_hf/__init__.py."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    processor = make_processor(tokenizer, chat_template=template)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["image_token"] == IMAGE and config["image_processor"]["patch_size"] == 14

    kwargs = dict(
        images=[random_image(seed=3), random_image(seed=4)],
        text=["<image> alpha", "beta <image>"],
        padding=True,
        return_tensors="pt",
    )
    expected = processor(**kwargs)
    for loaded in (SlamProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is SlamProcessor and type(loaded.image_processor) is SlamImageProcessor
        assert loaded.image_token_id == IMAGE_ID and loaded.chat_template == template
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        got = loaded(**kwargs)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), key


def test_module_imports_only_remote_code_safe_names():
    """auto_map copies this file: numpy, tokenizers, transformers and relative imports only."""
    tree = ast.parse(open(processing_slam.__file__).read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else node.module.split(".")[0])
    assert roots <= {"numpy", "tokenizers", "transformers", "."}, roots


LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["slam_hf"] = None  # `import slam_hf` raises ImportError even if it is installed
    import numpy as np
    from transformers import AutoProcessor
    # transformers 5.10 without torchvision: top-level AutoImageProcessor is a placeholder; this one works on both.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    folder, images_path, out_path = sys.argv[1:4]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    images = list(np.load(images_path))
    out = processor(images=images, text=["<image> alpha", "beta <image> <image>"], padding=True, return_tensors="np")
    np.savez(out_path, **out)
    print(json.dumps({
        "class": type(processor).__name__,
        "image_processor": type(processor.image_processor).__name__,
        "auto_image_processor": type(AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)).__name__,
        "module_file": sys.modules[type(processor).__module__].__file__,
        "image_token_id": processor.image_token_id,
        "slam_hf_modules": sorted(n for n, m in sys.modules.items() if n.startswith("slam_hf") and m is not None),
    }))
    """
)


def test_remote_code_load_in_clean_process(tmp_path, tokenizer, monkeypatch):
    for cls in (SlamProcessor, SlamImageProcessor):
        monkeypatch.setattr(cls, "_auto_class", None)  # undo the registration after the test
    SlamProcessor.register_for_auto_class("AutoProcessor")
    SlamImageProcessor.register_for_auto_class("AutoImageProcessor")
    processor = make_processor(tokenizer)
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_slam.SlamProcessor"}
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_slam.SlamImageProcessor"
    assert (folder / "processing_slam.py").is_file() and (folder / "image_processing_slam.py").is_file()

    images = np.stack([np.asarray(random_image(seed=s)) for s in range(3)])
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "loader.py").write_text(LOADER)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    loader = [tmp_path / "loader.py", folder, tmp_path / "images.npy", tmp_path / "out.npz"]
    stdout = run_offline(loader, tmp_path / "hf_home", cwd=elsewhere, timeout=120)
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["class"] == "SlamProcessor"
    assert report["image_processor"] == report["auto_image_processor"] == "SlamImageProcessor"
    assert report["image_token_id"] == IMAGE_ID
    assert report["slam_hf_modules"] == []
    assert report["module_file"].startswith(str(tmp_path / "hf_home"))  # the copied file, not the repository's

    expected = processor(
        images=list(images), text=["<image> alpha", "beta <image> <image>"], padding=True, return_tensors="np"
    )
    got = np.load(tmp_path / "out.npz")
    assert sorted(got.files) == sorted(expected.keys())
    for key in expected:
        assert np.array_equal(got[key], expected[key]), key
    assert (got["input_ids"] == IMAGE_ID).sum(axis=1).tolist() == [8, 16]


NO_PILLOW_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["slam_hf"] = None
    sys.modules["PIL"] = None  # Pillow missing: `import PIL` raises ImportError
    from transformers import AutoProcessor
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    errors = []
    for auto in (AutoProcessor, AutoImageProcessor):
        try:
            auto.from_pretrained(sys.argv[1], trust_remote_code=True)
            errors.append(None)
        except Exception as err:
            errors.append([type(err).__name__, str(err)])
    print(json.dumps(errors))
    """
)


def test_remote_code_without_pillow_names_the_package(tmp_path, tokenizer, monkeypatch):
    """Without Pillow, loading the processor raises an ImportError that says `pip install pillow`, not PIL's name."""
    for cls in (SlamProcessor, SlamImageProcessor):
        monkeypatch.setattr(cls, "_auto_class", None)
    SlamProcessor.register_for_auto_class("AutoProcessor")
    SlamImageProcessor.register_for_auto_class("AutoImageProcessor")
    make_processor(tokenizer).save_pretrained(tmp_path / "saved")
    (tmp_path / "loader.py").write_text(NO_PILLOW_LOADER)
    stdout = run_offline([tmp_path / "loader.py", tmp_path / "saved"], tmp_path / "hf_home", cwd=tmp_path, timeout=120)
    for error in json.loads(stdout.strip().splitlines()[-1]):
        assert error is not None and error[0] == "ImportError", error
        assert "`pip install pillow`" in error[1], error
