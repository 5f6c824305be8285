"""Malformed inputs are rejected by name; legal degenerate inputs (batch of 0 rows, rows of nothing but padding) run.

ONE table (`CASES`): every public forward (v1/v2: Model, ForCausalLM, ForMaskedLM, ForSequenceClassification; v3:
Model, ForConditionalGeneration; the latent loop: Model, ForCausalLM, ForImageTextToText), `generate()` of the
generative heads, `SlamProcessor` and `SlamImageProcessor`, each with a bad input (-> the exception type and a
fragment naming the argument) or a degenerate one (-> the output shape, all values finite). Rows come from
per-family lists of inputs crossed with the family's classes. The latent loop runs the decoder-only rows with its
adaptive exit on (the tester's confidence threshold), plus its own: the loop arguments (`loop_iterations`,
`loop_exit_criterion`, `loop_exit_threshold`) out of range or of the wrong type, and legal corner cases (one token,
no rows, every token padding, each exit criterion); its forwards must also report a depth per token within the one
asked for. The image-text loop adds image inputs.
"""
# ruff: noqa: E501  (the tables keep one case per line, so a reader scans them row by row)

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from slam_common import single_threaded_torch
from slam_tester import (
    SlamLoopImageTextModelTester,
    SlamLoopModelTester,
    SlamV1ModelTester,
    SlamV2ModelTester,
    SlamV3ModelTester,
)

from slam_hf.image_processing_slam import SlamImageProcessor
from slam_hf.processing_slam import SlamProcessor, train_bpe_tokenizer

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)

V1, V2, V3, LOOP = SlamV1ModelTester(), SlamV2ModelTester(), SlamV3ModelTester(), SlamLoopModelTester()
LOOP_IMAGE = SlamLoopImageTextModelTester()
VOCAB, LENGTH, ANSWER = V1.vocab_size, 9, V3.decoder_seq_length


def raises(error, fragment):
    return ("raises", error, fragment)


def output(*shape):
    """The main output (logits or last hidden state) has this shape, every value finite; `V` = the vocabulary."""
    return ("output", shape)


@functools.cache
def model(tester, cls):
    torch.manual_seed(0)
    return cls(tester.get_config()).eval()


# ---------------------------------------------------------------------------------------------- inputs
def ids(batch=2, length=LENGTH):
    return torch.randint(V1.first_regular_token_id, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))


def with_value(tensor, value, row=0, column=3):
    tensor = tensor.clone()
    tensor[row, column] = value
    return tensor


def padded_mask(batch=2, padded_rows=(1,)):
    mask = torch.ones(batch, LENGTH, dtype=torch.long)
    mask[list(padded_rows)] = 0
    return mask


def token_labels(batch=2, length=LENGTH):
    return ids(batch, length)


# Decoder-only (v1, v2): (id, inputs, expected, which heads: "all", "labels" (with labels), "cls", "lm", "gen").
DECODER_ONLY = [
    ("ids_bool", lambda: dict(input_ids=ids().bool()), raises(TypeError, "`input_ids`"), "all"),
    ("ids_float", lambda: dict(input_ids=ids().float()), raises(TypeError, "`input_ids`"), "all"),
    ("ids_list", lambda: dict(input_ids=ids().tolist()), raises(TypeError, "`input_ids`"), "all"),
    ("ids_rank1", lambda: dict(input_ids=ids()[0]), raises(ValueError, "`input_ids` must have shape"), "all"),
    ("ids_ge_vocab", lambda: dict(input_ids=with_value(ids(), VOCAB)), raises(ValueError, "`input_ids` holds"), "all"),
    ("ids_negative", lambda: dict(input_ids=with_value(ids(), -1)), raises(ValueError, "`input_ids` holds"), "all"),
    ("ids_minus100", lambda: dict(input_ids=with_value(ids(), -100)), raises(ValueError, "`input_ids`"), "all"),
    ("ids_empty_seq", lambda: dict(input_ids=ids(2, 0)), raises(ValueError, "`input_ids`) is empty"), "all"),
    ("ids_and_embeds", lambda: dict(input_ids=ids(), inputs_embeds=torch.randn(2, LENGTH, 32)), raises(ValueError, "exactly one of `input_ids`"), "all"),
    ("embeds_int", lambda: dict(inputs_embeds=torch.ones(2, LENGTH, 32, dtype=torch.long)), raises(TypeError, "`inputs_embeds`"), "all"),
    ("embeds_width", lambda: dict(inputs_embeds=torch.randn(2, LENGTH, 31)), raises(ValueError, "`inputs_embeds`"), "all"),
    ("mask_value_2", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=()) * 2), raises(ValueError, "`attention_mask` must hold only 0"), "all"),
    ("mask_value_half", lambda: dict(input_ids=ids(), attention_mask=torch.full((2, LENGTH), 0.5)), raises(ValueError, "`attention_mask` must hold only 0"), "all"),
    ("mask_shape", lambda: dict(input_ids=ids(), attention_mask=padded_mask()[:, 1:]), raises(ValueError, "`attention_mask` must have shape"), "all"),
    ("mask_batch", lambda: dict(input_ids=ids(), attention_mask=padded_mask(3, ())), raises(ValueError, "`attention_mask` must have shape"), "all"),
    ("mask_complex", lambda: dict(input_ids=ids(), attention_mask=torch.ones(2, LENGTH, dtype=torch.complex64)), raises(TypeError, "`attention_mask`"), "all"),
    ("mask_holes", lambda: dict(input_ids=ids(), attention_mask=with_value(padded_mask(padded_rows=()), 0)), raises(ValueError, "`attention_mask` must mark one contiguous span"), "all"),
    ("positions_shape", lambda: dict(input_ids=ids(), position_ids=torch.arange(3)[None]), raises(ValueError, "`position_ids` must have shape"), "all"),
    ("positions_rank1", lambda: dict(input_ids=ids(), position_ids=torch.arange(LENGTH)), raises(ValueError, "`position_ids` must have shape"), "all"),
    ("positions_float", lambda: dict(input_ids=ids(), position_ids=torch.arange(LENGTH)[None].float()), raises(TypeError, "`position_ids`"), "all"),
    ("positions_negative", lambda: dict(input_ids=ids(), position_ids=torch.arange(LENGTH)[None] - 1), raises(ValueError, "`position_ids` must be >= 0"), "all"),
    ("labels_shape", lambda: dict(input_ids=ids(), labels=token_labels(2, LENGTH - 1)), raises(ValueError, "`labels` must have shape"), "lm"),
    ("labels_ge_vocab", lambda: dict(input_ids=ids(), labels=with_value(token_labels(), VOCAB)), raises(ValueError, "`labels` holds"), "lm"),
    ("labels_minus5", lambda: dict(input_ids=ids(), labels=with_value(token_labels(), -5)), raises(ValueError, "`labels` holds"), "lm"),
    ("labels_float", lambda: dict(input_ids=ids(), labels=token_labels().float()), raises(TypeError, "`labels`"), "lm"),
    ("labels_int32", lambda: dict(input_ids=ids(), labels=token_labels().int()), raises(TypeError, "`labels`"), "lm"),
    ("class_ge_num_labels", lambda: dict(input_ids=ids(), labels=torch.tensor([0, 3])), raises(ValueError, "`labels` holds class ids"), "cls"),
    ("class_negative", lambda: dict(input_ids=ids(), labels=torch.tensor([0, -2])), raises(ValueError, "`labels` holds class ids"), "cls"),
    ("class_int32", lambda: dict(input_ids=ids(), labels=torch.tensor([0, 1], dtype=torch.int32)), raises(TypeError, "`labels`"), "cls"),
    ("class_bool", lambda: dict(input_ids=ids(), labels=torch.tensor([True, False])), raises(TypeError, "`labels`"), "cls"),
    ("class_batch", lambda: dict(input_ids=ids(), labels=torch.tensor([0, 1, 2])), raises(ValueError, "`labels` must have shape (2,)"), "cls"),
    ("class_multilabel_shape", lambda: dict(input_ids=ids(), labels=torch.rand(2, 2)), raises(ValueError, "`labels` must have shape"), "cls"),
    ("gen_ids_ge_vocab", lambda: dict(input_ids=with_value(ids(), VOCAB)), raises(ValueError, "`input_ids` holds"), "gen"),
    ("gen_mask_value_2", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=()) * 2), raises(ValueError, "`attention_mask` must hold only 0"), "gen"),
    # legal degenerate inputs
    ("batch0", lambda: dict(input_ids=ids(0)), output(0, LENGTH, "V"), "all"),
    ("batch0_mask", lambda: dict(input_ids=ids(0), attention_mask=padded_mask(0, ())), output(0, LENGTH, "V"), "all"),
    ("batch0_embeds", lambda: dict(inputs_embeds=torch.randn(0, LENGTH, 32)), output(0, LENGTH, "V"), "all"),
    ("batch0_labels", lambda: dict(input_ids=ids(0), labels=token_labels(0)), output(0, LENGTH, "V"), "lm"),
    ("batch0_class_labels", lambda: dict(input_ids=ids(0), labels=torch.zeros(0, dtype=torch.long)), output(0, "V"), "cls"),
    ("padded_row", lambda: dict(input_ids=ids(), attention_mask=padded_mask()), output(2, LENGTH, "V"), "all"),
    ("padded_batch", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=(0, 1))), output(2, LENGTH, "V"), "all"),
    ("padded_row_bool", lambda: dict(input_ids=ids(), attention_mask=padded_mask().bool()), output(2, LENGTH, "V"), "all"),
    ("padded_row_labels", lambda: dict(input_ids=ids(), attention_mask=padded_mask(), labels=token_labels()), output(2, LENGTH, "V"), "lm"),
    ("padded_batch_labels", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=(0, 1)), labels=torch.tensor([0, 2])), output(2, "V"), "cls"),
    ("gen_padded_row", lambda: dict(input_ids=ids(), attention_mask=padded_mask()), output(2, LENGTH + 3), "gen"),
    ("gen_padded_batch", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=(0, 1))), output(2, LENGTH + 3), "gen"),
    ("gen_batch0", lambda: dict(input_ids=ids(0), attention_mask=padded_mask(0, ())), output(0, LENGTH), "gen"),
    ("gen_batch0_ids_float", lambda: dict(input_ids=ids(0).float()), raises(TypeError, "`input_ids`"), "gen"),
]  # fmt: skip


def loop_ids(**loop_arguments):
    return dict(input_ids=ids(), **loop_arguments)


# The latent loop, on top of DECODER_ONLY: (id, inputs, expected, which heads: "all", "base" (the trunk), "lm", "gen").
# The tester's model has loop_max_iterations=3 and the confidence exit on (threshold 0.5).
LOOP_ONLY = [
    ("loop_iterations_0", lambda: loop_ids(loop_iterations=0), raises(ValueError, "`loop_iterations` must be in [1, loop_max_iterations=3], got 0"), "all"),
    ("loop_iterations_above_max", lambda: loop_ids(loop_iterations=4), raises(ValueError, "`loop_iterations` must be in [1, loop_max_iterations=3], got 4"), "all"),
    ("loop_iterations_negative", lambda: loop_ids(loop_iterations=-1), raises(ValueError, "`loop_iterations` must be in"), "all"),
    ("loop_iterations_float", lambda: loop_ids(loop_iterations=2.0), raises(TypeError, "`loop_iterations` must be an int, got float"), "all"),
    ("loop_iterations_bool", lambda: loop_ids(loop_iterations=True), raises(TypeError, "`loop_iterations` must be an int, got bool"), "all"),
    ("loop_iterations_tensor", lambda: loop_ids(loop_iterations=torch.tensor(2)), raises(TypeError, "`loop_iterations` must be an int"), "all"),
    ("loop_exit_criterion_bogus", lambda: loop_ids(loop_exit_criterion="bogus"), raises(ValueError, "`loop_exit_criterion` must be one of"), "all"),
    ("loop_exit_criterion_int", lambda: loop_ids(loop_exit_criterion=1), raises(ValueError, "`loop_exit_criterion` must be one of"), "all"),
    ("loop_exit_threshold_str", lambda: loop_ids(loop_exit_threshold="0.5"), raises(TypeError, "`loop_exit_threshold`"), "all"),
    ("loop_exit_threshold_nan", lambda: loop_ids(loop_exit_threshold=float("nan")), raises(ValueError, "`loop_exit_threshold`"), "all"),
    ("loop_exit_threshold_negative", lambda: loop_ids(loop_exit_criterion="hidden_change", loop_exit_threshold=-0.5), raises(ValueError, "`loop_exit_threshold`"), "all"),
    ("loop_exit_threshold_above_1_confidence", lambda: loop_ids(loop_exit_threshold=1.5), raises(ValueError, "`loop_exit_threshold`"), "all"),
    ("kl_on_trunk", lambda: loop_ids(loop_exit_criterion="kl", use_cache=False), raises(ValueError, "loop_exit_criterion='kl' compares next-token distributions"), "base"),
    ("kl_with_cache", lambda: loop_ids(loop_exit_criterion="kl", use_cache=True), raises(ValueError, "pass use_cache=False"), "lm"),
    ("batch0_loop_iterations_0", lambda: dict(input_ids=ids(0), loop_iterations=0), raises(ValueError, "`loop_iterations` must be in"), "all"),
    ("batch0_loop_exit_criterion_bogus", lambda: dict(input_ids=ids(0), loop_exit_criterion="bogus"), raises(ValueError, "`loop_exit_criterion`"), "all"),
    ("gen_loop_iterations_above_max", lambda: loop_ids(loop_iterations=4), raises(ValueError, "`loop_iterations` must be in"), "gen"),
    ("gen_loop_iterations_float", lambda: loop_ids(loop_iterations=2.0), raises(TypeError, "`loop_iterations` must be an int"), "gen"),
    ("gen_loop_exit_criterion_bogus", lambda: loop_ids(loop_exit_criterion="bogus"), raises(ValueError, "`loop_exit_criterion` must be one of"), "gen"),
    ("gen_kl_with_cache", lambda: loop_ids(loop_exit_criterion="kl"), raises(ValueError, "pass use_cache=False"), "gen"),
    ("gen_batch0_loop_iterations_0", lambda: dict(input_ids=ids(0), loop_iterations=0), raises(ValueError, "`loop_iterations` must be in"), "gen"),
    # legal degenerate inputs
    ("one_token", lambda: dict(input_ids=ids(2, 1)), output(2, 1, "V"), "all"),
    ("one_token_padded_row", lambda: dict(input_ids=ids(2, 1), attention_mask=torch.tensor([[1], [0]])), output(2, 1, "V"), "all"),
    ("batch0_loop_arguments", lambda: dict(input_ids=ids(0), loop_iterations=2, loop_exit_criterion="hidden_change", loop_exit_threshold=0.1), output(0, LENGTH, "V"), "all"),
    ("padded_batch_loop_iterations_1", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=(0, 1)), loop_iterations=1), output(2, LENGTH, "V"), "all"),
    ("loop_iterations_max", lambda: loop_ids(loop_iterations=3), output(2, LENGTH, "V"), "all"),
    ("exit_none", lambda: loop_ids(loop_exit_criterion="none", loop_exit_threshold=0.5), output(2, LENGTH, "V"), "all"),
    ("exit_threshold_0", lambda: loop_ids(loop_exit_threshold=0.0), output(2, LENGTH, "V"), "all"),
    ("exit_threshold_1", lambda: loop_ids(loop_exit_threshold=1.0), output(2, LENGTH, "V"), "all"),
    ("exit_hidden_change", lambda: loop_ids(loop_exit_criterion="hidden_change", loop_exit_threshold=0.5), output(2, LENGTH, "V"), "all"),
    ("exit_kl_uncached", lambda: loop_ids(loop_exit_criterion="kl", loop_exit_threshold=0.1, use_cache=False), output(2, LENGTH, "V"), "lm"),
    ("exit_kl_labels_uncached", lambda: loop_ids(loop_exit_criterion="kl", loop_exit_threshold=0.1, use_cache=False, labels=token_labels()), output(2, LENGTH, "V"), "lm"),
    ("gen_one_token", lambda: dict(input_ids=ids(2, 1)), output(2, 1 + 3), "gen"),
    ("gen_one_token_loop_iterations_1", lambda: dict(input_ids=ids(2, 1), loop_iterations=1), output(2, 1 + 3), "gen"),
    ("gen_padded_batch_hidden_change", lambda: dict(input_ids=ids(), attention_mask=padded_mask(padded_rows=(0, 1)), loop_exit_criterion="hidden_change", loop_exit_threshold=0.5), output(2, LENGTH + 3), "gen"),
    ("gen_kl_uncached", lambda: loop_ids(loop_exit_criterion="kl", loop_exit_threshold=0.1, use_cache=False), output(2, LENGTH + 3), "gen"),
    ("gen_batch0_loop_arguments", lambda: dict(input_ids=ids(0), loop_iterations=1, loop_exit_criterion="none"), output(0, LENGTH), "gen"),
]  # fmt: skip


def loop_image(batch=2, **changes):
    """The image-text loop's inputs: LENGTH tokens per row with one image's placeholders, and the images."""
    inputs = LOOP_IMAGE.model_inputs(seq_length=LENGTH)
    inputs = {**{name: value[:batch] for name, value in inputs.items()}, **changes}
    return {name: value for name, value in inputs.items() if value is not None}


def loop_image_mask(padded_rows):
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[list(padded_rows)] = 0
    return mask


# The image-text latent loop (its trunk, and SlamLoopForImageTextToText): image inputs and the loop arguments.
IMAGE_LOOP = [
    ("image_pixels_uint8", lambda: loop_image(pixel_values=loop_image()["pixel_values"].to(torch.uint8)), raises(TypeError, "`pixel_values` must be a float tensor"), "all"),
    ("image_images_vs_placeholders", lambda: loop_image(pixel_values=loop_image()["pixel_values"][:1]), raises(ValueError, "image placeholder tokens, but `pixel_values` give 1 image"), "all"),
    ("image_placeholders_no_images", lambda: loop_image(pixel_values=None), raises(ValueError, "no `pixel_values`"), "all"),
    ("image_loop_iterations_0", lambda: loop_image(loop_iterations=0), raises(ValueError, "`loop_iterations` must be in"), "all"),
    ("image_loop_exit_criterion_bogus", lambda: loop_image(loop_exit_criterion="bogus"), raises(ValueError, "`loop_exit_criterion` must be one of"), "all"),
    ("image_labels_ge_vocab", lambda: loop_image(labels=with_value(loop_image()["input_ids"], VOCAB)), raises(ValueError, "`labels` holds"), "lm"),
    ("gen_image_pixels_uint8", lambda: loop_image(pixel_values=loop_image()["pixel_values"].to(torch.uint8)), raises(TypeError, "`pixel_values`"), "gen"),
    ("gen_image_loop_iterations_float", lambda: loop_image(loop_iterations=2.0), raises(TypeError, "`loop_iterations` must be an int"), "gen"),
    ("gen_image_batch0_pixels_uint8", lambda: loop_image(0, pixel_values=torch.zeros(0, 3, 8, 8, dtype=torch.uint8)), raises(TypeError, "`pixel_values`"), "gen"),
    # legal degenerate inputs
    ("image_batch0", lambda: loop_image(0), output(0, LENGTH, "V"), "all"),
    ("image_text_only", lambda: dict(input_ids=LOOP_IMAGE.input_ids(2, LENGTH)), output(2, LENGTH, "V"), "all"),
    ("image_one_token", lambda: dict(input_ids=LOOP_IMAGE.input_ids(2, 1)), output(2, 1, "V"), "all"),
    ("image_padded_row", lambda: loop_image(attention_mask=loop_image_mask((1,))), output(2, LENGTH, "V"), "all"),
    ("image_padded_batch", lambda: loop_image(attention_mask=loop_image_mask((0, 1))), output(2, LENGTH, "V"), "all"),
    ("image_labels", lambda: loop_image(labels=loop_image()["input_ids"]), output(2, LENGTH, "V"), "lm"),
    ("gen_image", lambda: loop_image(), output(2, LENGTH + 3), "gen"),
    ("gen_image_padded_row", lambda: loop_image(attention_mask=loop_image_mask((1,))), output(2, LENGTH + 3), "gen"),
    ("gen_image_batch0", lambda: loop_image(0), output(0, LENGTH), "gen"),
]  # fmt: skip


def v3_inputs(**changes):
    torch.manual_seed(0)
    inputs = V3.model_inputs()
    inputs.update(changes)
    return {name: value for name, value in inputs.items() if value is not None}


def v3_rows(batch, **changes):
    return v3_inputs(**{**{name: value[:batch] for name, value in v3_inputs().items()}, **changes})


def v3_mask(padded_rows):
    mask = torch.ones(2, V3.seq_length, dtype=torch.long)
    mask[list(padded_rows)] = 0
    return mask


def v3_labels(**changes):
    inputs = v3_inputs(**changes)
    inputs["labels"] = inputs.pop("decoder_input_ids")
    return inputs


# SLAM v3: (id, inputs, expected, which heads: "all", "lm" (conditional generation), "gen" (its generate)).
ENCODER_DECODER = [
    ("ids_bool", lambda: v3_inputs(input_ids=v3_inputs()["input_ids"].bool()), raises(TypeError, "`input_ids`"), "all"),
    ("ids_ge_vocab", lambda: v3_inputs(input_ids=with_value(v3_inputs()["input_ids"], VOCAB, column=8)), raises(ValueError, "`input_ids` holds"), "all"),
    ("no_prompt", lambda: v3_inputs(input_ids=None, pixel_values=None), raises(ValueError, "exactly one of `input_ids`"), "all"),
    ("mask_value_2", lambda: v3_inputs(attention_mask=v3_mask(()) * 2), raises(ValueError, "`attention_mask` must hold only 0"), "all"),
    ("mask_shape", lambda: v3_inputs(attention_mask=v3_mask(())[:, 1:]), raises(ValueError, "`attention_mask` must have shape"), "all"),
    ("pixels_uint8", lambda: v3_inputs(pixel_values=torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), raises(TypeError, "`pixel_values` must be a float tensor"), "all"),
    ("pixels_list", lambda: v3_inputs(pixel_values=torch.zeros(2, 3, 8, 8).tolist()), raises(TypeError, "`pixel_values`"), "all"),
    ("pixels_rank3", lambda: v3_inputs(pixel_values=torch.zeros(3, 8, 8)), raises(ValueError, "`pixel_values` must have shape"), "all"),
    ("pixels_size", lambda: v3_inputs(pixel_values=torch.zeros(2, 3, 10, 10)), raises(ValueError, "`pixel_values` is 10 x 10"), "all"),
    ("images_vs_placeholders", lambda: v3_inputs(pixel_values=torch.zeros(1, 3, 8, 8)), raises(ValueError, "placeholder tokens, but `pixel_values` give 1 image"), "all"),
    ("placeholders_no_images", lambda: v3_inputs(pixel_values=None), raises(ValueError, "no `pixel_values`"), "all"),
    ("zero_images_for_placeholders", lambda: v3_inputs(pixel_values=torch.zeros(0, 3, 8, 8)), raises(ValueError, "no `pixel_values`"), "all"),
    ("grid_without_pixels", lambda: v3_inputs(input_ids=V3.input_ids(2), pixel_values=None, image_grid_hw=torch.ones(2, 2, dtype=torch.long)), raises(ValueError, "`image_grid_hw` was given without"), "all"),
    ("grid_float", lambda: v3_inputs(image_grid_hw=torch.full((2, 2), 2.0)), raises(TypeError, "`image_grid_hw`"), "all"),
    ("aux_without_aux_dim", lambda: v3_inputs(aux_values=torch.randn(2, 3, 5)), raises(ValueError, "`aux_values`"), "all"),
    ("decoder_ids_bool", lambda: v3_inputs(decoder_input_ids=v3_inputs()["decoder_input_ids"].bool()), raises(TypeError, "`decoder_input_ids`"), "all"),
    ("decoder_ids_ge_vocab", lambda: v3_inputs(decoder_input_ids=with_value(v3_inputs()["decoder_input_ids"], VOCAB)), raises(ValueError, "`decoder_input_ids` holds"), "all"),
    ("decoder_batch", lambda: v3_inputs(decoder_input_ids=v3_inputs()["decoder_input_ids"][:1]), raises(ValueError, "`decoder_input_ids` has 1 rows but the encoder inputs have 2"), "all"),
    ("decoder_embeds_int", lambda: v3_inputs(decoder_input_ids=None, decoder_inputs_embeds=torch.ones(2, ANSWER, 32, dtype=torch.long)), raises(TypeError, "`decoder_inputs_embeds`"), "all"),
    ("decoder_mask_value_2", lambda: v3_inputs(decoder_attention_mask=torch.full((2, ANSWER), 2)), raises(ValueError, "`decoder_attention_mask` must hold only 0"), "all"),
    ("decoder_mask_shape", lambda: v3_inputs(decoder_attention_mask=torch.ones(2, 3)), raises(ValueError, "`decoder_attention_mask` must have shape"), "all"),
    ("labels_batch", lambda: {**v3_labels(), "labels": v3_labels()["labels"][:1]}, raises(ValueError, "`labels` must have shape (2, 7)"), "lm"),
    ("labels_ge_vocab", lambda: {**v3_labels(), "labels": with_value(v3_labels()["labels"], VOCAB)}, raises(ValueError, "`labels` holds"), "lm"),
    ("labels_minus5", lambda: {**v3_labels(), "labels": with_value(v3_labels()["labels"], -5)}, raises(ValueError, "`labels` holds"), "lm"),
    ("labels_float", lambda: {**v3_labels(), "labels": v3_labels()["labels"].float()}, raises(TypeError, "`labels`"), "lm"),
    ("labels_rank1", lambda: {**v3_labels(), "labels": v3_labels()["labels"][0]}, raises(ValueError, "`labels` must have shape"), "lm"),
    ("gen_ids_ge_vocab", lambda: V3.encoder_part(v3_inputs(input_ids=with_value(v3_inputs()["input_ids"], VOCAB, column=8))), raises(ValueError, "`input_ids` holds"), "gen"),
    ("gen_pixels_uint8", lambda: V3.encoder_part(v3_inputs(pixel_values=torch.zeros(2, 3, 8, 8, dtype=torch.uint8))), raises(TypeError, "`pixel_values`"), "gen"),
    # legal degenerate inputs
    ("batch0", lambda: v3_rows(0), output(0, ANSWER, "V"), "all"),
    ("batch0_text_only", lambda: v3_rows(0, pixel_values=None), output(0, ANSWER, "V"), "all"),
    ("batch0_labels", lambda: {**v3_labels(), **{k: v[:0] for k, v in v3_labels().items()}}, output(0, ANSWER, "V"), "lm"),
    ("padded_row", lambda: v3_inputs(input_ids=V3.input_ids(2), pixel_values=None, attention_mask=v3_mask((1,))), output(2, ANSWER, "V"), "all"),
    ("padded_batch", lambda: v3_inputs(attention_mask=v3_mask((0, 1))), output(2, ANSWER, "V"), "all"),
    ("padded_batch_labels", lambda: v3_labels(attention_mask=v3_mask((0, 1))), output(2, ANSWER, "V"), "lm"),
    ("gen_padded_row", lambda: V3.encoder_part(v3_inputs(input_ids=V3.input_ids(2), pixel_values=None, attention_mask=v3_mask((1,)))), output(2, 4), "gen"),
    ("gen_padded_batch", lambda: V3.encoder_part(v3_inputs(attention_mask=v3_mask((0, 1)))), output(2, 4), "gen"),
    ("gen_batch0", lambda: V3.encoder_part(v3_rows(0)), output(0, 1), "gen"),
    ("gen_batch0_pixels_uint8", lambda: V3.encoder_part(v3_rows(0, pixel_values=torch.zeros(0, 3, 8, 8, dtype=torch.uint8))), raises(TypeError, "`pixel_values`"), "gen"),
]  # fmt: skip


def processor():
    tokenizer = train_bpe_tokenizer(["alpha beta gamma delta"] * 20, vocab_size=280)
    return SlamProcessor(SlamImageProcessor(size={"height": 16, "width": 16}, patch_size=8), tokenizer)


def image(height=12, width=10):
    return Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))


# Preprocessing: (id, call, expected); `output(n)` = n rows of pixel_values.
PREPROCESSING = [
    ("processor_images_int", lambda p: p(images=5, text="a <image>"), raises(ValueError, "`images` has unsupported type int")),
    ("processor_images_dict", lambda p: p(images={}, text="a <image>"), raises(ValueError, "`images` has unsupported type dict")),
    ("processor_text_int", lambda p: p(text=5), raises(TypeError, "`text` must be a string")),
    ("processor_text_none_row", lambda p: p(text=["a", None]), raises(TypeError, "`text` must be a string")),
    ("processor_empty_image", lambda p: p(images=np.zeros((0, 0, 3), np.uint8), text="a <image>"), raises(ValueError, "`images` is empty (0 x 0")),
    ("processor_more_images", lambda p: p(images=[image(), image()], text="a <image>"), raises(ValueError, "Got 2 image(s) but 1 <image>")),
    ("processor_no_images", lambda p: p(text="a <image>"), raises(ValueError, "no images were passed")),
    ("image_processor_int", lambda p: p.image_processor(5), raises(ValueError, "`images` has unsupported type int")),
    ("image_processor_empty_pil", lambda p: p.image_processor(Image.new("RGB", (0, 0))), raises(ValueError, "`images` is empty (0 x 0")),
    ("image_processor_empty_rows", lambda p: p.image_processor(np.zeros((3, 0, 5), np.float32)), raises(ValueError, "`images` is empty (0 x 5")),
    ("image_processor_complex", lambda p: p.image_processor(np.zeros((4, 4, 3), np.complex64)), raises(ValueError, "`images` must hold numbers")),
    ("image_processor_ok", lambda p: p.image_processor([image(), image(5, 7)]), output(2)),
]  # fmt: skip


def family_classes(tester, heads):
    by_head = {
        "all": tester.all_model_classes,
        "lm": [cls for cls in tester.classes_with_labels if cls is not tester.sequence_classification_class],
        "cls": [tester.sequence_classification_class] if tester.sequence_classification_class else [],
        "gen": [tester.generative_class],
        "base": [tester.base_model_class],
    }
    return by_head[heads]


CASES = [
    pytest.param(tester, cls, make, expected, heads == "gen", id=f"{cls.__name__}-{'gen-' * (heads == 'gen')}{name}")
    for tester, table in (
        (V1, DECODER_ONLY),
        (V2, DECODER_ONLY),
        (V3, ENCODER_DECODER),
        (LOOP, DECODER_ONLY + LOOP_ONLY),
        (LOOP_IMAGE, IMAGE_LOOP),
    )
    for name, make, expected, heads in table
    for cls in family_classes(tester, heads)
] + [pytest.param(None, None, make, expected, False, id=name) for name, make, expected in PREPROCESSING]


def main_output(tester, cls, inputs, generate):
    if tester is None:
        return torch.as_tensor(inputs(processor())["pixel_values"])
    net = model(tester, cls)
    with torch.no_grad():
        if generate:
            return net.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        outputs = net(**inputs)
    if "labels" in inputs:
        assert outputs.loss is not None and outputs.loss.dim() == 0
        assert inputs["labels"].shape[0] == 0 or torch.isfinite(outputs.loss)
    main = outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state
    iterations = getattr(outputs, "loop_iterations", None)
    if iterations is not None:  # the latent loop: core iterations per token, (B, L), within the depth asked for
        depth = inputs.get("loop_iterations", net.config.loop_max_iterations)
        assert iterations.shape == main.shape[:2] and ((0 <= iterations) & (iterations <= depth)).all()
    return main


@pytest.mark.parametrize(("tester", "cls", "make", "expected", "generate"), CASES)
def test_inputs(tester, cls, make, expected, generate):
    inputs = make if tester is None else make()
    if expected[0] == "raises":
        _, error, fragment = expected
        with pytest.raises(error) as caught:
            main_output(tester, cls, inputs, generate)
        assert fragment in str(caught.value)
        return
    result = main_output(tester, cls, inputs, generate)
    shape = expected[1]
    if tester is not None:  # "V": the vocabulary, or the hidden size (trunks), or (batch, labels) (classifiers)
        width = tester.hidden_size if cls is tester.base_model_class else tester.vocab_size
        if cls is tester.sequence_classification_class:
            shape, width = (shape[0], "V"), tester.num_labels
        shape = tuple(width if size == "V" else size for size in shape)
    assert tuple(result.shape[: len(shape)]) == shape
    assert torch.isfinite(result.float()).all()


def test_table_covers_every_public_class():
    """Every model class of slam_hf.MODEL_FAMILIES has rows in the table, and so do both preprocessors."""
    from slam_hf import MODEL_FAMILIES

    classes = {cls for _, heads in MODEL_FAMILIES for cls in heads.values()}
    covered = {case.values[1] for case in CASES if case.values[1] is not None}
    assert classes <= covered, classes - covered


@pytest.mark.parametrize("tester", [V1, V2, V3, LOOP], ids=["v1", "v2", "v3", "loop"])
def test_generate_on_no_rows_returns_the_output_class_asked_for(tester):
    """transformers' decoding loop cannot run 0 rows (LlamaForCausalLM fails too); SLAM's generate answers them."""
    net = model(tester, tester.generative_class)
    inputs = V3.encoder_part(v3_rows(0)) if tester is V3 else dict(input_ids=ids(0))
    result = net.generate(**inputs, max_new_tokens=3, return_dict_in_generate=True)
    expected = "GenerateEncoderDecoderOutput" if tester is V3 else "GenerateDecoderOnlyOutput"
    assert type(result).__name__ == expected
    assert tuple(result.sequences.shape) == ((0, 1) if tester is V3 else (0, LENGTH))
