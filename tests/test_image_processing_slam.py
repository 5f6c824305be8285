"""SlamImageProcessor: outputs, input types, mode conversion, resizing, the patch grid, errors, save/load, remote
code."""

import ast
import json
import textwrap

import numpy as np
import pytest
import torch
from hub_helpers import run_offline
from PIL import Image
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from slam_hf import image_processing_slam
from slam_hf.image_processing_slam import SlamImageProcessor

TINY = dict(size={"height": 16, "width": 16}, patch_size=8)


def random_uint8(height, width, channels=3, seed=0):
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def expected_pixels(rgb_uint8_hwc, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """Hand-written reference: rescale by 1/255, normalise, to CHW."""
    x = rgb_uint8_hwc.astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    return x.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------- outputs
def test_defaults_give_224_pixels_and_a_14x14_grid():
    processor = SlamImageProcessor()
    assert (processor.size["height"], processor.size["width"], processor.patch_size) == (224, 224, 16)
    assert tuple(processor.image_mean) == tuple(processor.image_std) == (0.5, 0.5, 0.5)
    out = processor(Image.fromarray(random_uint8(30, 40)), return_tensors="pt")
    assert set(out.keys()) == {"pixel_values", "image_grid_hw"}
    assert out["pixel_values"].shape == (1, 3, 224, 224) and out["pixel_values"].dtype == torch.float32
    assert out["image_grid_hw"].tolist() == [[14, 14]] and out["image_grid_hw"].dtype == torch.int64
    assert processor.get_number_of_image_patches(30, 40) == 196
    # Without return_tensors: stacked NumPy arrays.
    out = processor([Image.fromarray(random_uint8(30, 40))] * 2)
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (2, 3, 224, 224)


def test_known_pixel_values_are_normalised_by_hand():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[...] = (255, 0, 51)
    image[0, 0] = (10, 128, 200)
    processor = SlamImageProcessor(do_resize=False, patch_size=4)
    pixels = processor(image, return_tensors="pt")["pixel_values"][0]
    # (v / 255 - 0.5) / 0.5
    assert torch.allclose(pixels[:, 1, 1], torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]), atol=1e-6)
    expected = torch.tensor([10 / 255 * 2 - 1, 128 / 255 * 2 - 1, 200 / 255 * 2 - 1])
    assert torch.allclose(pixels[:, 0, 0], expected, atol=1e-6)

    imagenet = SlamImageProcessor(
        do_resize=False, patch_size=4, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD
    )
    pixels = imagenet(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(pixels, expected_pixels(image, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), atol=1e-5)
    assert abs(pixels[0, 1, 1] - (1.0 - 0.485) / 0.229) < 1e-5

    # Each step can be switched off per call.
    raw = processor(image, do_rescale=False, do_normalize=False)["pixel_values"][0]
    np.testing.assert_array_equal(raw, image.transpose(2, 0, 1).astype(np.float32))
    rescaled = processor(image, do_normalize=False)["pixel_values"][0]
    np.testing.assert_allclose(rescaled, image.transpose(2, 0, 1) / 255.0, atol=1e-7)


# ---------------------------------------------------------------------------------------------- modes
def test_mode_conversion_to_rgb():
    processor = SlamImageProcessor(do_resize=False, patch_size=4, do_normalize=False)
    rgb = random_uint8(8, 8)

    gray = Image.fromarray(rgb).convert("L")
    out = processor(gray)["pixel_values"][0]
    assert out.shape == (3, 8, 8)
    for channel in range(3):
        np.testing.assert_allclose(out[channel], np.asarray(gray) / 255.0, atol=1e-7)

    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=-1)
    rgba[:4, :, 3] = 0  # top half fully transparent -> white
    out = processor(Image.fromarray(rgba))["pixel_values"][0]
    np.testing.assert_allclose(out[:, :4], 1.0)
    np.testing.assert_allclose(out[:, 4:], rgb[4:].transpose(2, 0, 1) / 255.0, atol=1e-7)

    palette = Image.fromarray(rgb).convert("P")
    out = processor(palette)["pixel_values"][0]
    np.testing.assert_allclose(out, np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / 255.0, atol=1e-7)

    mono = Image.fromarray(rgb).convert("1")
    assert processor(mono)["pixel_values"].shape == (1, 3, 8, 8)


# ---------------------------------------------------------------------------------------------- input types
def test_pil_numpy_and_torch_inputs_give_identical_outputs():
    processor = SlamImageProcessor(**TINY)
    hwc = random_uint8(24, 20)
    reference = processor(Image.fromarray(hwc), return_tensors="pt")["pixel_values"]
    variants = {
        "numpy HWC": hwc,
        "numpy CHW": hwc.transpose(2, 0, 1),
        "torch CHW": torch.from_numpy(hwc).permute(2, 0, 1),
        "torch HWC": torch.from_numpy(hwc),
        "torch float32 0..255": torch.from_numpy(hwc).permute(2, 0, 1).float(),
        "list of one": [Image.fromarray(hwc)],
        "4-D numpy batch": hwc[None],
        "4-D torch batch": torch.from_numpy(hwc).permute(2, 0, 1)[None],
        "nested list": [[hwc]],
    }
    for name, images in variants.items():
        out = processor(images, return_tensors="pt")["pixel_values"]
        assert torch.equal(out, reference), name
    # Already rescaled floats with do_rescale=False match as well.
    scaled = torch.from_numpy(hwc).permute(2, 0, 1).double() / 255
    assert torch.allclose(
        processor(scaled, do_rescale=False, return_tensors="pt")["pixel_values"], reference, atol=1e-6
    )

    # Grayscale and RGBA arrays take the same path as the matching PIL modes.
    gray = random_uint8(16, 16, channels=None)
    assert np.array_equal(processor(gray)["pixel_values"], processor(Image.fromarray(gray))["pixel_values"])
    assert np.array_equal(processor(gray[None])["pixel_values"], processor(Image.fromarray(gray))["pixel_values"])
    rgba = random_uint8(16, 16, channels=4)
    assert np.array_equal(processor(rgba)["pixel_values"], processor(Image.fromarray(rgba))["pixel_values"])
    assert np.array_equal(
        processor(torch.from_numpy(rgba).permute(2, 0, 1))["pixel_values"],
        processor(Image.fromarray(rgba))["pixel_values"],
    )


def test_ambiguous_layout_can_be_named():
    processor = SlamImageProcessor(do_resize=False, patch_size=1, do_normalize=False, do_rescale=False)
    image = np.arange(3 * 4 * 3, dtype=np.float32).reshape(3, 4, 3)  # (H=3, W=4, C=3) also reads as (C=3, 4, 3)
    assert processor(image)["pixel_values"].shape == (1, 3, 4, 3)  # channels-first wins, as in transformers
    out = processor(image, input_data_format="channels_last")["pixel_values"][0]
    np.testing.assert_array_equal(out, image.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------- resize and grid
def test_resize_uses_pil_resample_per_channel():
    processor = SlamImageProcessor(
        size={"height": 8, "width": 12},
        patch_size=4,
        resample=PILImageResampling.BILINEAR,
        do_rescale=False,
        do_normalize=False,
    )
    hwc = random_uint8(20, 30)
    out = processor(hwc)
    assert out["pixel_values"].shape == (1, 3, 8, 12)
    assert out["image_grid_hw"].tolist() == [[2, 3]]
    for channel in range(3):
        expected = Image.fromarray(hwc[..., channel].astype(np.float32)).resize((12, 8), Image.BILINEAR)
        np.testing.assert_allclose(out["pixel_values"][0, channel], np.asarray(expected), atol=1e-4)
    # A constant image stays constant whatever the filter.
    flat = np.full((21, 17, 3), 77, np.uint8)
    np.testing.assert_allclose(
        SlamImageProcessor(**TINY)(flat, do_normalize=False)["pixel_values"], 77 / 255, atol=1e-5
    )
    # int size means square; images of different sizes are resized to one batch.
    square = SlamImageProcessor(size=32, patch_size=8)
    assert (square.size["height"], square.size["width"]) == (32, 32)
    out = square([random_uint8(10, 50), random_uint8(40, 12)], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 32, 32) and out["image_grid_hw"].tolist() == [[4, 4], [4, 4]]


def test_patch_grid_without_resize_and_per_call_overrides():
    processor = SlamImageProcessor(do_resize=False, patch_size=4)
    out = processor([random_uint8(8, 12), random_uint8(8, 12, seed=1)], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 8, 12)
    assert out["image_grid_hw"].tolist() == [[2, 3], [2, 3]]
    assert processor.get_number_of_image_patches(8, 12) == 6 == int(out["image_grid_hw"][0].prod())
    out = processor(random_uint8(8, 12), patch_size=2, return_tensors="pt")
    assert out["image_grid_hw"].tolist() == [[4, 6]]
    out = processor(random_uint8(8, 12), do_resize=True, size={"height": 16, "width": 32}, return_tensors="pt")
    assert out["image_grid_hw"].tolist() == [[4, 8]]
    assert processor.get_number_of_image_patches(8, 12, {"do_resize": True, "size": {"height": 16, "width": 32}}) == 32


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, images, match",
    [
        (dict(size={"height": 20, "width": 16}, patch_size=8), random_uint8(16, 16), "not a multiple of patch_size=8"),
        (dict(do_resize=False, patch_size=8), random_uint8(12, 16), "not a multiple of patch_size=8"),
        (dict(do_resize=False, patch_size=4), [random_uint8(8, 8), random_uint8(8, 12)], "same size"),
        (dict(TINY), np.zeros(16, np.uint8), "1 dimensions"),
        (dict(TINY), np.zeros((1, 1, 3, 16, 16), np.uint8), "5 dimensions"),
        (dict(TINY), np.zeros((16, 16, 2), np.uint8), "neither the first nor the last dimension is 1, 3 or 4"),
        (dict(TINY, input_data_format="channels_last"), np.zeros((16, 16, 2), np.uint8), "has 2 channels"),
        (dict(TINY, input_data_format="channels_first"), np.zeros((5, 16, 16), np.uint8), "has 5 channels"),
        (dict(TINY), np.zeros((16, 7, 16), np.uint8), "Cannot find the channel axis"),
        (dict(TINY), [], "No images"),
        (dict(TINY), [[]], "No images"),
        (dict(TINY), [None], "unsupported type NoneType"),
        (dict(TINY), 3.0, "unsupported type float"),
        (dict(TINY, do_convert_rgb=False), Image.new("L", (16, 16)), "do_convert_rgb=True"),
        (dict(TINY, do_convert_rgb=False), np.zeros((16, 16, 4), np.uint8), "do_convert_rgb=True"),
        (dict(TINY), np.array([["a"]]), "dtype"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, images, match):
    processor = SlamImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=match):
        processor(images)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(size={"shortest_edge": 224}), "'height' and 'width'"),
        (dict(image_mean=[0.5, 0.5]), "one float or 3 floats"),
        (dict(image_std=[0.5, 0.0, 0.5]), "must not contain 0"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlamImageProcessor(**kwargs)


@pytest.mark.parametrize(
    "call_kwargs, match",
    [
        (dict(do_center_crop=True), "does not implement do_center_crop"),
        (dict(do_pad=True), "does not implement do_pad"),
        (dict(data_format="channels_last"), "channels-first"),
        (dict(patch_size=-2), "patch_size must be a positive int"),
    ],
)
def test_bad_call_options_raise_value_error(call_kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlamImageProcessor(**TINY)(random_uint8(16, 16), **call_kwargs)


# ---------------------------------------------------------------------------------------------- save / load
CUSTOM = dict(
    do_convert_rgb=False,
    do_resize=True,
    size={"height": 24, "width": 32},
    resample=PILImageResampling.BILINEAR,
    do_rescale=True,
    rescale_factor=1 / 127.5,
    do_normalize=True,
    image_mean=list(IMAGENET_DEFAULT_MEAN),
    image_std=list(IMAGENET_DEFAULT_STD),
    patch_size=8,
)


def test_save_and_load_keep_every_field(tmp_path):
    processor = SlamImageProcessor(**CUSTOM)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SlamImageProcessor"
    for key, value in CUSTOM.items():
        assert saved[key] == pytest.approx(value) if isinstance(value, (float, list)) else saved[key] == value, key
    loaded = SlamImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = random_uint8(30, 20)
    assert np.array_equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    # Defaults round-trip too.
    SlamImageProcessor().save_pretrained(tmp_path / "defaults")
    reloaded = SlamImageProcessor.from_pretrained(tmp_path / "defaults").to_dict()
    # importing slam_hf registers the class for remote code, so a saved file also carries its auto_map entry
    assert reloaded.pop("auto_map", None) in (None, {"AutoImageProcessor": "image_processing_slam.SlamImageProcessor"})
    assert reloaded == SlamImageProcessor().to_dict()


def test_module_imports_only_remote_code_safe_names():
    """auto_map copies this file alone: numpy, PIL, transformers and relative imports only, nothing absolute to
    slam_hf."""
    tree = ast.parse(open(image_processing_slam.__file__).read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else node.module.split(".")[0])
    assert roots <= {"numpy", "PIL", "transformers", "collections", "."}, roots


LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["slam_hf"] = None  # `import slam_hf` raises ImportError even if it is installed
    import numpy as np
    import transformers

    folder, image_path, out_path = sys.argv[1:4]
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        via = "transformers.AutoImageProcessor"
    except ImportError:
        # transformers 5.10 without torchvision: the top-level name is a placeholder demanding torchvision,
        # while the class itself (PIL backend) works.
        from transformers.models.auto.image_processing_auto import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        via = "image_processing_auto.AutoImageProcessor"
    out = processor(np.load(image_path), return_tensors="np")
    np.save(out_path, out["pixel_values"])
    print(json.dumps({
        "class": type(processor).__name__,
        "via": via,
        "module_file": sys.modules[type(processor).__module__].__file__,
        "config": processor.to_dict(),
        "grid": out["image_grid_hw"].tolist(),
        "slam_hf_modules": sorted(n for n, m in sys.modules.items() if n.startswith("slam_hf") and m is not None),
    }))
    """
)


def test_remote_code_load_in_clean_process(tmp_path, monkeypatch):
    monkeypatch.setattr(SlamImageProcessor, "_auto_class", None)  # undo the registration after the test
    SlamImageProcessor.register_for_auto_class("AutoImageProcessor")
    processor = SlamImageProcessor(**dict(CUSTOM, do_convert_rgb=True))
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {"AutoImageProcessor": "image_processing_slam.SlamImageProcessor"}
    assert (folder / "image_processing_slam.py").is_file()

    image = random_uint8(30, 20, channels=4)
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "loader.py").write_text(LOADER)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    loader = [tmp_path / "loader.py", folder, tmp_path / "image.npy", tmp_path / "out.npy"]
    stdout = run_offline(loader, tmp_path / "hf_home", cwd=elsewhere, timeout=120)
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["class"] == "SlamImageProcessor"
    try:
        import transformers

        transformers.AutoImageProcessor.from_pretrained  # a placeholder in 5.10 without torchvision
    except ImportError:
        pass
    else:
        assert report["via"] == "transformers.AutoImageProcessor"
    assert report["slam_hf_modules"] == []
    assert report["module_file"].startswith(str(tmp_path / "hf_home"))  # the copied file, not the repository's
    expected_config = processor.to_dict()
    assert {k: v for k, v in report["config"].items() if k != "auto_map"} == json.loads(
        json.dumps({k: v for k, v in expected_config.items() if k != "auto_map"})
    )
    assert report["grid"] == [[3, 4]]
    assert np.array_equal(np.load(tmp_path / "out.npy"), processor(image)["pixel_values"])
