"""Image processor for SLAM v3 (multimodal): images -> `pixel_values` plus the patch grid per image.

`SlamImageProcessor` subclasses transformers' `PilBackend` (the PIL/NumPy backend of `BaseImageProcessor`), so it
needs neither torch nor torchvision and keeps the usual HF surface: `__call__`/`preprocess` with per-call
overrides of every setting, `save_pretrained`/`from_pretrained` through `preprocessor_config.json`, and
`AutoImageProcessor` loading (in-process registration or `auto_map` remote code).

Pipeline, per image:
  1. to a channels-first float32 array: PIL images, NumPy arrays (HWC or CHW, or 2-D grayscale), torch
     tensors (same layouts), local paths / URLs (via `transformers.image_utils.load_image`);
  2. `do_convert_rgb`: grayscale -> 3 channels; anything with alpha (RGBA, LA, PA, P with transparency,
     4-channel arrays) is composited onto a WHITE background; other PIL modes use `Image.convert("RGB")`;
  3. `do_resize`: to exactly `size = {"height", "width"}` with PIL `resample` (per channel, float "F" mode,
     so no uint8 rounding);
  4. `do_rescale`: x * `rescale_factor` (1/255);
  5. `do_normalize`: (x - `image_mean`) / `image_std`, per channel.
The final height and width must be multiples of `patch_size`, and every image of a batch must end with the same
size (a batch is stacked); otherwise a `ValueError` says what to change.

Output (`BatchFeature`):
  - `pixel_values`: (B, 3, H, W) float32;
  - `image_grid_hw`: (B, 2) int64, the patch grid (H // patch_size, W // patch_size) of each image. The number of
    `<image>` tokens that one image expands to is `image_grid_hw[i].prod()` (one token per patch); see also
    `get_number_of_image_patches`.

Defaults (override in `__init__`, per call, or in `preprocessor_config.json`):
  - `size` 224 x 224, `patch_size` 16 -> a 14 x 14 grid = 196 image tokens (the common ViT-B/16 setting);
    tiny test models use e.g. `size={"height": 16, "width": 16}, patch_size=8`;
  - `resample` BICUBIC (as CLIP/SigLIP);
  - `image_mean` = `image_std` = (0.5, 0.5, 0.5), which maps [0, 1] to [-1, 1]. SLAM's vision tower is trained from
    scratch, so dataset-agnostic statistics are used rather than ImageNet's; pass
    `transformers.image_utils.IMAGENET_DEFAULT_MEAN/STD` to match a backbone pretrained with them.

Remote code: this file imports only numpy, PIL, public transformers names (present in transformers 5.10 and
5.23) and the stdlib-only `.slam_manifest` (which records the saved file in checksums.json), so `save_pretrained`
can copy it next to `preprocessor_config.json`. To get the `auto_map` entry, call
`SlamImageProcessor.register_for_auto_class("AutoImageProcessor")` before saving; in-process
`AutoImageProcessor.register(<v3 config class>, SlamImageProcessor)` belongs in `slam_hf/__init__.py`.
"""

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, is_torch_tensor, load_image
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

from .slam_manifest import IMAGE_PROCESSOR_FILES, RecordsChecksums

# Pillow is imported inside `try`: transformers' remote-code loader skips imports in try blocks when it checks a
# folder's requirements; a top-level import failed there, before this file ran, with "Run `pip install PIL`" (not
# the package's name). Without Pillow the module loads and SlamImageProcessor() raises PILLOW_MISSING.
try:
    from PIL import Image
    from transformers.image_utils import PILImageResampling  # defined only where Pillow imports
except ImportError:
    Image = PILImageResampling = None
PILLOW_MISSING = (
    "SlamImageProcessor needs Pillow (the Python Imaging Library) to read and resize images, and it is not "
    "installed: run `pip install pillow`."
)

logger = logging.get_logger(__name__)

# Keys of ImagesKwargs that this processor does not implement: asking for them is an error, not a silent no-op.
_UNSUPPORTED_FLAGS = ("do_center_crop", "do_pad")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class SlamImageProcessorKwargs(ImagesKwargs, total=False):
    """`ImagesKwargs` plus `patch_size` (side of one square ViT patch, in pixels after resizing)."""

    patch_size: int | None


class SlamImageProcessor(RecordsChecksums, PilBackend):
    r"""Turns images into SLAM v3 `pixel_values` (B, 3, H, W) and `image_grid_hw` (B, 2). See the module docstring.

    Args (all optional; each can also be given per call):
        do_convert_rgb (`bool`, defaults to `True`): make every image 3-channel RGB (alpha composited onto white).
        do_resize (`bool`, defaults to `True`): resize to `size`.
        size (`dict[str, int]` or `int`, defaults to `{"height": 224, "width": 224}`): target size; an int means square.
        resample (`PILImageResampling`, defaults to `BICUBIC`): PIL filter for resizing.
        do_rescale (`bool`, defaults to `True`): multiply by `rescale_factor`.
        rescale_factor (`float`, defaults to `1/255`).
        do_normalize (`bool`, defaults to `True`): subtract `image_mean`, divide by `image_std`.
        image_mean, image_std (`float` or 3 floats, default `(0.5, 0.5, 0.5)`).
        patch_size (`int`, defaults to 16): the final height and width must be multiples of it.
    """

    valid_kwargs = SlamImageProcessorKwargs
    model_input_names = ["pixel_values", "image_grid_hw"]
    recorded_files = IMAGE_PROCESSOR_FILES  # in checksums.json, next to the model's entries (slam_manifest.py)

    do_convert_rgb = True
    do_resize = True
    size = {"height": 224, "width": 224}
    resample = PILImageResampling.BICUBIC if PILImageResampling is not None else None
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
    patch_size = 16

    def __init__(self, **kwargs):
        if Image is None:
            raise ImportError(PILLOW_MISSING)
        super().__init__(**kwargs)
        # Fail at construction (and at from_pretrained) rather than on the first call.
        self._check_settings(
            patch_size=self.patch_size, size=self.size, image_mean=self.image_mean, image_std=self.image_std
        )

    # ------------------------------------------------------------------ settings
    @staticmethod
    def _check_settings(patch_size=None, size=None, image_mean=None, image_std=None, do_resize=None, **_):
        if patch_size is None or isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}.")
        if do_resize or size is not None:
            height, width = (size.get("height"), size.get("width")) if hasattr(size, "get") else (None, None)
            if not height or not width:
                raise ValueError(
                    "size must give 'height' and 'width' (e.g. {'height': 224, 'width': 224} or an int), "
                    f"got {size!r}; "
                    "SlamImageProcessor resizes to a fixed size only (no shortest_edge/max_height modes)."
                )
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            if value is None:
                continue
            values = [value] if isinstance(value, (int, float)) else list(value)
            if len(values) not in (1, 3):
                raise ValueError(f"{name} must be one float or 3 floats (one per RGB channel), got {value!r}.")
            if name == "image_std" and any(v == 0 for v in values):
                raise ValueError(f"image_std must not contain 0, got {value!r}.")

    def _validate_preprocess_kwargs(self, **kwargs):
        for flag in _UNSUPPORTED_FLAGS:
            if kwargs.get(flag):
                raise ValueError(f"SlamImageProcessor does not implement {flag}; leave it unset or False.")
        data_format = kwargs.get("data_format")
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError(f"SlamImageProcessor outputs channels-first images only; got data_format={data_format!r}.")
        if kwargs.get("do_resize") and kwargs.get("resample") is None:
            raise ValueError("do_resize=True needs a resample filter (e.g. PILImageResampling.BICUBIC).")
        if kwargs.get("do_rescale") and kwargs.get("rescale_factor") is None:
            raise ValueError("do_rescale=True needs rescale_factor (e.g. 1/255).")
        if kwargs.get("do_normalize") and (kwargs.get("image_mean") is None or kwargs.get("image_std") is None):
            raise ValueError("do_normalize=True needs image_mean and image_std.")
        self._check_settings(**kwargs)

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Number of `<image>` tokens for an input image of (height, width), with this processor's settings
        (optionally overridden by `images_kwargs`), i.e. the product of its `image_grid_hw` row."""
        images_kwargs = images_kwargs or {}
        patch_size = images_kwargs.get("patch_size", self.patch_size)
        do_resize = images_kwargs.get("do_resize", self.do_resize)
        if do_resize:
            size = images_kwargs.get("size", self.size)
            if isinstance(size, int):
                height = width = size
            else:
                height, width = size["height"], size["width"]
        return (height // patch_size) * (width // patch_size)

    # ------------------------------------------------------------------ inputs
    def flatten_images(self, images) -> list:
        """A single image, a 4-D batch, or (nested) lists of them -> flat list of single images."""
        flat = []

        def visit(item, where):
            if isinstance(item, (list, tuple)):
                for i, sub in enumerate(item):
                    visit(sub, f"{where}[{i}]")
            elif isinstance(item, Image.Image) or isinstance(item, str):
                flat.append(item)
            elif isinstance(item, np.ndarray) or is_torch_tensor(item):
                if item.ndim == 4:
                    flat.extend(item[i] for i in range(item.shape[0]))
                elif item.ndim in (2, 3):
                    flat.append(item)
                else:
                    raise ValueError(
                        f"images{where} has {item.ndim} dimensions (shape {tuple(item.shape)}); expected one image of "
                        "shape (H, W), (H, W, C) or (C, H, W), or a batch (B, C, H, W) / (B, H, W, C)."
                    )
            else:
                raise ValueError(
                    f"`images{where}` has unsupported type {type(item).__name__}; pass PIL.Image.Image, numpy.ndarray, "
                    "torch.Tensor, a path/URL string, or a list of these."
                )

        visit(images, "")
        if not flat:
            raise ValueError("No images were given (empty list); pass at least one image, or call without images.")
        return flat

    def _to_chw_array(self, image, do_convert_rgb, input_data_format, alpha_max) -> np.ndarray:
        """One image -> float32 (C, H, W) with C == 3 (or 3 already, when do_convert_rgb is False)."""
        if isinstance(image, str):
            image = load_image(image)
        if isinstance(image, Image.Image):
            if do_convert_rgb:
                image = _pil_to_rgb(image)
            elif image.mode != "RGB":
                raise ValueError(
                    f"Got a PIL image in mode {image.mode!r} with do_convert_rgb=False; convert it to RGB first "
                    "(image.convert('RGB')) or pass do_convert_rgb=True."
                )
            return np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()

        if is_torch_tensor(image):
            image = image.detach().cpu()
            if not image.dtype.is_floating_point and str(image.dtype) != "torch.uint8":
                image = image.long()
            elif image.dtype.is_floating_point:
                image = image.float()  # bfloat16/half have no (exact) NumPy counterpart
            image = image.numpy()
        image = np.asarray(image)
        if image.dtype == np.bool_:
            image = image.astype(np.uint8)
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise ValueError(f"Image arrays of `images` must hold numbers, got dtype {image.dtype}.")

        if image.ndim == 2:
            image = image[None]
        else:
            image = _to_channels_first(image, input_data_format)
        channels = image.shape[0]
        if channels not in (1, 3, 4):
            raise ValueError(
                f"Image of shape {image.shape} (as C, H, W) has {channels} channels; expected 1 (grayscale), "
                "3 (RGB) or 4 (RGBA). If the array is channels-last, pass input_data_format='channels_last'."
            )
        if channels != 3 and not do_convert_rgb:
            raise ValueError(
                f"Got a {channels}-channel image with do_convert_rgb=False; pass do_convert_rgb=True "
                "(grayscale is repeated to RGB, alpha is composited onto white) or give 3-channel RGB images."
            )
        if channels == 4 and image.dtype == np.uint8:
            # Same path as a PIL RGBA image, so array and PIL inputs give identical results.
            rgb = _pil_to_rgb(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))))
            return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1).copy()
        image = image.astype(np.float32)
        if channels == 1:
            image = np.repeat(image, 3, axis=0)
        elif channels == 4:
            # Alpha on the same scale as the colours (0..alpha_max); composite onto white.
            alpha = np.clip(image[3:4] / alpha_max, 0.0, 1.0)
            image = image[:3] * alpha + alpha_max * (1.0 - alpha)
        return image

    # ------------------------------------------------------------------ pipeline
    def _preprocess_image_like_inputs(self, images, *args, **kwargs) -> BatchFeature:
        do_rescale = kwargs.get("do_rescale")
        alpha_max = 1.0 / kwargs["rescale_factor"] if do_rescale else 1.0
        arrays = []
        for index, image in enumerate(self.flatten_images(images)):
            array = self._to_chw_array(
                image,
                do_convert_rgb=kwargs.get("do_convert_rgb"),
                input_data_format=kwargs.get("input_data_format"),
                alpha_max=alpha_max,
            )
            if 0 in array.shape[-2:]:  # resizing would invent a uniform image out of nothing
                raise ValueError(
                    f"Image {index} of `images` is empty ({array.shape[-2]} x {array.shape[-1]} pixels, H x W); "
                    "pass images of at least one pixel."
                )
            if do_rescale and _is_float_input(image) and array.size and float(np.abs(array).max()) <= 1.0:
                logger.warning_once(
                    "A float image looks already scaled to [0, 1], but do_rescale=True multiplies it by "
                    "rescale_factor again; pass do_rescale=False for such inputs."
                )
            arrays.append(array)
        return self._preprocess(arrays, **kwargs)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        patch_size: int,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for index, image in enumerate(images):
            if do_resize:
                image = _resize_chw(image, size["height"], size["width"], resample)
            height, width = image.shape[-2:]
            if height % patch_size or width % patch_size:
                fix = (
                    f"set size to multiples of {patch_size}"
                    if do_resize
                    else f"resize/crop the image to multiples of {patch_size} or pass do_resize=True with such a size"
                )
                raise ValueError(
                    f"Image {index} is {height}x{width} (H x W) after {'resizing' if do_resize else 'loading'}, "
                    f"which is not a multiple of patch_size={patch_size}; {fix} (or change patch_size)."
                )
            if do_rescale:
                image = image * np.float32(rescale_factor)
            if do_normalize:
                image = (image - _per_channel(image_mean)) / _per_channel(image_std)
            processed.append(image.astype(np.float32, copy=False))

        sizes = sorted({tuple(image.shape[-2:]) for image in processed})
        if len(sizes) > 1:
            raise ValueError(
                f"Images of a batch must end up the same size to be stacked, got sizes (H, W) {sizes}; "
                "pass do_resize=True with a fixed size, or process images of different sizes in separate calls."
            )
        pixel_values = np.stack(processed)
        grid = np.array([[h // patch_size, w // patch_size] for h, w in (img.shape[-2:] for img in processed)])
        return BatchFeature(
            data={"pixel_values": pixel_values, "image_grid_hw": grid.astype(np.int64)}, tensor_type=return_tensors
        )


# ---------------------------------------------------------------------- helpers
def _pil_to_rgb(image: "Image.Image") -> "Image.Image":
    """PIL image of any mode -> RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_channels_first(image: np.ndarray, input_data_format) -> np.ndarray:
    """(H, W, C) or (C, H, W) -> (C, H, W). When both ends could be channels, channels-first wins (as in
    transformers); pass input_data_format='channels_last' to say otherwise."""
    if input_data_format is not None:
        fmt = ChannelDimension(input_data_format)
        if fmt == ChannelDimension.LAST:
            return image.transpose(2, 0, 1)
        if fmt == ChannelDimension.FIRST:
            return image
        raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}.")
    if image.shape[0] in (1, 3, 4):
        return image
    if image.shape[-1] in (1, 3, 4):
        return image.transpose(2, 0, 1)
    raise ValueError(
        f"Cannot find the channel axis of an image of shape {image.shape}: neither the first nor the last dimension "
        "is 1, 3 or 4. Pass (H, W, C) or (C, H, W) with C in {1, 3, 4}, or a 2-D grayscale (H, W) array."
    )


def _resize_chw(image: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    """Resize a float32 (C, H, W) array channel by channel in PIL's 32-bit float mode (no uint8 rounding)."""
    if image.shape[-2:] == (height, width):
        return image
    resample = PILImageResampling(resample)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize((width, height), resample))
        for channel in image
    ]
    return np.stack(channels).astype(np.float32, copy=False)


def _per_channel(value) -> np.ndarray:
    """One float or 3 floats -> a (3, 1, 1) float32 array."""
    values = np.asarray([value] if isinstance(value, (int, float)) else list(value), dtype=np.float32)
    return np.broadcast_to(values, (3,)).reshape(3, 1, 1)


def _is_float_input(image) -> bool:
    if isinstance(image, (Image.Image, str)):
        return False
    if is_torch_tensor(image):
        return image.dtype.is_floating_point
    return np.issubdtype(np.asarray(image).dtype, np.floating)


__all__ = ["SlamImageProcessor", "SlamImageProcessorKwargs"]
