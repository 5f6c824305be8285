"""torch.export of every SLAM class (non-strict), with static and with dynamic shapes.

Eager SLAM plans its windows, segments, experts and encoder paths from tensor values (the padding mask, the
routing, the placeholders), which a traced graph cannot branch on. Under tracing (`slam_compat.is_tracing()`) the
models take shape-static forms of the same computations (slam_windows, slam_moa, slam_fusion), so the exported
program must reproduce eager outputs: on the example it was exported with and, with dynamic shapes, on a batch of
another size and length whose rows carry different amounts of left padding. With labels, the losses must match too.

Every model is the testers' context-sensitive one (init std 0.2), and each comparison first checks that the output
moves when an early token changes, so a graph that lost the context (or the padding) could not pass.
"""

import inspect

import pytest
import torch
from slam_common import different_token, single_threaded_torch
from slam_tester import SlamV1ModelTester, SlamV2ModelTester, SlamV3ModelTester
from torch.export import Dim

TESTERS = (SlamV1ModelTester(), SlamV2ModelTester(), SlamV3ModelTester())
CASES = [pytest.param(tester, cls, id=cls.__name__) for tester in TESTERS for cls in tester.all_model_classes]
LABEL_CASES = [pytest.param(tester, cls, id=cls.__name__) for tester in TESTERS for cls in tester.classes_with_labels]
ATOL = RTOL = 1e-5
# (real length of every row, SLAM v3 answer length) of the example batch and of the batches a dynamic program must
# also run: more rows and longer (more windows, segment groups and image rows), a single short row. Batches of rows
# of different lengths are left-padded; SLAM v3 rows hold an image (placeholders at 1..4 of the real tokens).
EXAMPLE = (15, 11), 7
OTHER_SHAPES = [((22, 9, 17), 4), ((6,), 1)]

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


def build(tester, model_class):
    torch.manual_seed(0)
    return model_class(tester.get_config()).eval()


def batch_inputs(tester, model_class, shape, seed):
    """`shape` = (real length of each row, answer length): a left-padded batch (SLAM v3: an image in every row)."""
    lengths, answer_length = shape
    torch.manual_seed(seed)
    inputs, _ = tester.pad_rows(tester.padding_rows(lengths), "left")
    if tester.is_encoder_decoder:
        assert inputs["pixel_values"].shape[0] == len(lengths)
        inputs["decoder_input_ids"] = tester.input_ids(len(lengths), answer_length)
    if "use_cache" in inspect.signature(model_class.forward).parameters:
        inputs["use_cache"] = False  # export the cache-free forward
    return inputs


def dynamic_shapes(inputs):
    """Dynamic batch and prompt length everywhere; SLAM v3: the number of images and the answer length too."""
    batch, length = Dim("batch", min=1, max=32), Dim("length", min=1, max=256)
    shapes = {
        "input_ids": {0: batch, 1: length},
        "attention_mask": {0: batch, 1: length},
        "pixel_values": {0: Dim("images", min=1, max=32)},
        "decoder_input_ids": {0: batch, 1: Dim("answer", min=1, max=64)},
    }
    return {name: shapes.get(name) for name in inputs}


def main_output(outputs):
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


def eager(model, inputs):
    with torch.no_grad():
        return main_output(model(**inputs))


def assert_matches_eager(program, model, tester, inputs, what):
    expected = eager(model, inputs)
    # The check can fail: the output at the last position (real in every row: left padding) moves when the first real
    # token of the row changes (sequence classification: the pooled logits).
    changed = inputs["input_ids"].clone()
    first_real = inputs["attention_mask"].argmax(-1)
    rows = torch.arange(changed.shape[0])
    changed[rows, first_real] = different_token(changed[rows, first_real], tester)
    moved = eager(model, {**inputs, "input_ids": changed}) - expected
    moved = (moved[:, -1] if moved.dim() == 3 else moved).abs().amax(-1)
    assert moved.min() > 1e-3, f"{what}: the eager output ignores an early token ({moved.tolist()})"
    with torch.no_grad():
        actual = main_output(program.module()(**inputs))
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(("tester", "model_class"), CASES)
def test_export_static_shapes(tester, model_class):
    model = build(tester, model_class)
    inputs = batch_inputs(tester, model_class, EXAMPLE, seed=1)
    program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
    assert_matches_eager(program, model, tester, inputs, "example input")


@pytest.mark.parametrize(("tester", "model_class"), CASES)
def test_export_dynamic_shapes(tester, model_class):
    model = build(tester, model_class)
    example = batch_inputs(tester, model_class, EXAMPLE, seed=1)
    program = torch.export.export(model, args=(), kwargs=example, dynamic_shapes=dynamic_shapes(example), strict=False)
    assert_matches_eager(program, model, tester, example, "example input")
    for seed, shape in enumerate(OTHER_SHAPES, start=2):
        other = batch_inputs(tester, model_class, shape, seed=seed)
        assert other["input_ids"].shape != example["input_ids"].shape
        assert_matches_eager(program, model, tester, other, f"rows of lengths {shape[0]}, left-padded")


@pytest.mark.parametrize(("tester", "model_class"), LABEL_CASES)
def test_export_with_labels(tester, model_class):
    """The loss of the exported program equals eager, SLAM v2's MoA balancing loss over the real tokens included (its
    padding is weighted out instead of indexed out under tracing)."""
    model = build(tester, model_class)
    inputs = batch_inputs(tester, model_class, EXAMPLE, seed=1)
    inputs = tester.training_inputs(model_class, inputs, generator=torch.Generator().manual_seed(0))
    routed = getattr(model.model, "has_router", False)
    if routed:
        inputs["output_router_logits"] = True
    program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
    with torch.no_grad():
        expected, actual = model(**inputs), program.module()(**inputs)
    for name in ("loss", "logits") + (("aux_loss",) if routed else ()):
        torch.testing.assert_close(actual[name], expected[name], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n} {m}")
