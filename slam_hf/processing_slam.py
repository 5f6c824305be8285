"""Text processing for SLAM models: the special-token contract, the byte-level BPE tokenizer and `SlamProcessor`.

The tokenizer needs no custom class: it is a `PreTrainedTokenizerFast` over a `tokenizers` BPE, so
`AutoTokenizer` loads it everywhere, remote code or not.

`SlamProcessor` (SLAM v3) pairs that tokenizer with `SlamImageProcessor`. Each `<image>` in the text is expanded
into one `<image>` per patch of its image (`image_grid_hw[i].prod()` copies), so the encoder's `input_ids` hold
exactly as many placeholders as the vision tower yields patch embeddings.

Remote code: this file imports only numpy, tokenizers, transformers, `.image_processing_slam` and the stdlib-only
`.slam_manifest` (which records the saved files in checksums.json), so
`save_pretrained` can copy both files next to `processor_config.json` (after
`SlamProcessor.register_for_auto_class("AutoProcessor")` and
`SlamImageProcessor.register_for_auto_class("AutoImageProcessor")`).
"""

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

from .image_processing_slam import SlamImageProcessorKwargs
from .slam_manifest import PROCESSOR_FILES, RecordsChecksums

# The order fixes ids 0..5, which model configs (pad/bos/eos_token_id) rely on.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>", "<image>")
DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MODEL_MAX_LENGTH = 1024


def train_bpe_tokenizer(
    texts, vocab_size: int = DEFAULT_VOCAB_SIZE, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (no normaliser, so decode(encode(x)) == x for any string).

    No post-processor inserts <s>/</s> (GPT-2 style); causal-LM packing adds eos between documents.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes up front, so no input ever needs <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=model_max_length,
        # Cleanup would turn "a ." into "a." and break exact round trips.
        clean_up_tokenization_spaces=False,
    )


class SlamProcessorKwargs(ProcessingKwargs, total=False):
    # Declares `patch_size` as an image kwarg, so it can be passed per call like the other image settings.
    images_kwargs: SlamImageProcessorKwargs
    # The encoder has no segment embeddings.
    _defaults = {"text_kwargs": {"return_token_type_ids": False}}


class SlamProcessor(RecordsChecksums, ProcessorMixin):
    r"""Tokenizer + `SlamImageProcessor` for SLAM v3: `processor(images=..., text=...)` returns a `BatchFeature` with
    `input_ids` and `attention_mask` (for the encoder) and, when images are given, `pixel_values` (B, 3, H, W) and
    `image_grid_hw` (B, 2) (for the vision tower).

    Images are matched to the `image_token`s of the text in order: pass them flat (one per `image_token` across the
    batch) or nested per text row (`[[row 0 images], [row 1 images], ...]`, where a row may be `[]`). Each token is
    expanded to `image_grid_hw[i].prod()` copies. Mismatched counts, and truncation that would cut placeholders, raise
    `ValueError`. `decode`/`batch_decode` are the tokenizer's.

    Args:
        image_processor (`SlamImageProcessor`): the image processor.
        tokenizer (`PreTrainedTokenizerFast`): a tokenizer with `image_token` as a single added token
            (`train_bpe_tokenizer` reserves `<image>` as id 5).
        chat_template (`str`, *optional*): a Jinja chat template.
        image_token (`str`, defaults to `"<image>"`): the placeholder token for one image patch.
    """

    valid_processor_kwargs = SlamProcessorKwargs
    recorded_files = PROCESSOR_FILES  # in checksums.json, next to the model's entries (slam_manifest.py)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = image_token
        self.image_token_id = None if tokenizer is None else _single_token_id(tokenizer, image_token)
        # ProcessorMixin rejects keyword arguments that are not sub-processors, so extra kwargs stop here.
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    # The hooks below are called by ProcessorMixin.__call__ (transformers 5.10 and 5.23 alike).
    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # Types first: transformers' own layout step fails on them with errors that name no argument (images=5:
        # "only a single or a list of entries is supported", text=5: "'int' object is not iterable").
        if text is not None and not (
            isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(row, str) for row in text))
        ):
            found = type(text).__name__ if isinstance(text, str) or not isinstance(text, (list, tuple)) else "a list"
            raise TypeError(f"`text` must be a string or a list of strings, got {found}: {text!r:.80}.")
        if images is not None:
            self._count_images(images)  # flatten_images names the argument and the unsupported type
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # Replaces the base check: 5.23's counts images with make_flat_list_of_images, which rejects 2-D grayscale
        # arrays that SlamImageProcessor accepts, and 5.10's does not count at all.
        if images is None and text is None:
            raise ValueError(f"You need to provide at least one input (images or text) to call {type(self).__name__}.")
        if text is None:
            return
        if not all(isinstance(sample, str) for sample in text):  # text is a list of rows by now
            raise ValueError("`text` must be a string or a list of strings.")
        token = self.image_token
        in_text = [sample.count(token) for sample in text]
        if images is None:
            if any(in_text):
                raise ValueError(
                    f"The text has {sum(in_text)} {token} token(s) (per row: {in_text}) but no images were passed; "
                    f"pass images=... (one image per {token}) or remove {token} from the text."
                )
        elif isinstance(images, (list, tuple)) and images and all(isinstance(row, (list, tuple)) for row in images):
            given = [self._count_images(row) for row in images]
            if len(images) != len(text) or given != in_text:
                raise ValueError(
                    f"Images given per row {given} do not match the {token} tokens per text row {in_text}; with nested "
                    f"images, pass one list per text row holding exactly one image per {token} in that row."
                )
        elif (given := self._count_images(images)) != sum(in_text):
            raise ValueError(
                f"Got {given} image(s) but {sum(in_text)} {token} token(s) in the text "
                f"(per row: {in_text}); put exactly one {token} in the text for each image, in the order of the images."
            )

    def _count_images(self, images) -> int:
        # The image processor's own flattening, so the count is the number of images it will return.
        if isinstance(images, (list, tuple)) and not images:
            return 0  # an empty row of nested images
        return len(self.image_processor.flatten_images(images))

    def _process_images(self, images, **kwargs):
        # One replacement per processed image (the base counts with make_flat_list_of_images, see validate_inputs).
        processed = self.image_processor(images, **kwargs)
        return processed, [self.replace_image_token(processed, i) for i in range(len(processed["image_grid_hw"]))]

    def replace_image_token(self, image_inputs, image_idx, **kwargs) -> str:
        return self.image_token * int(image_inputs["image_grid_hw"][image_idx].prod())

    def _check_special_mm_tokens(self, text, text_inputs, modalities=None):
        expected = [sample.count(self.image_token) for sample in text]
        kept = [int((np.asarray(ids) == self.image_token_id).sum()) for ids in text_inputs["input_ids"]]
        if kept != expected:
            raise ValueError(
                f"Truncation cut image placeholder tokens: the rows kept {kept} {self.image_token} tokens of the "
                f"expected {expected} (one per image patch). Raise max_length (or pass truncation=False) so every "
                "image's tokens fit; placeholders are never truncated silently."
            )


def _single_token_id(tokenizer, token: str) -> int:
    """The id of `token`, which must encode to exactly that one id (an added token, so BPE never splits it)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(
            f"image_token {token!r} is not a single token of this tokenizer (it encodes to {ids}); use a tokenizer "
            f"from train_bpe_tokenizer (which reserves <image>) or add it with "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})."
        )
    return ids[0]


__all__ = ["DEFAULT_VOCAB_SIZE", "SPECIAL_TOKENS", "SlamProcessor", "SlamProcessorKwargs", "train_bpe_tokenizer"]
