"""The latent-loop transformer: the shared suite (with adaptive exit on), plus what only the loop has: per-token exit
with row gathering, both cache modes, sampled depth with truncated backprop, the confidence head's training."""

import logging

import pytest
import torch
from slam_common import ATOL, SlamModelTesterMixin, described, output_cache, single_threaded_torch
from slam_tester import SlamLoopImageTextModelTester, SlamLoopModelTester

from slam_hf import SlamLoopConfig, SlamLoopForCausalLM, SlamLoopForImageTextToText
from slam_hf.slam_loop_training import confidence_targets, sample_iterations
from slam_hf.training.loop import calibrate_exit_threshold, evaluate_exit


class TestSlamLoopModel(SlamModelTesterMixin):  # pytest collects `Test*` classes only
    model_tester_class = SlamLoopModelTester


class TestSlamLoopImageTextModel(SlamModelTesterMixin):
    model_tester_class = SlamLoopImageTextModelTester


single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


TESTER = SlamLoopModelTester()


def loop_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return SlamLoopForCausalLM(TESTER.get_config(**overrides)).eval()


def prompts(batch=3, length=12, seed=1):
    return TESTER.input_ids(batch, length, generator=torch.Generator().manual_seed(seed))


def incremental_logits(model, input_ids, prefix, attention_mask=None, **kwargs):
    """Logits of a prefill of `prefix` tokens, then one token per cached forward (teacher forcing)."""
    mask = None if attention_mask is None else attention_mask[:, :prefix]
    outputs = model(input_ids[:, :prefix], attention_mask=mask, use_cache=True, **kwargs)
    cache, steps = output_cache(outputs), [outputs.logits]
    for position in range(prefix, input_ids.shape[1]):
        mask = None if attention_mask is None else attention_mask[:, : position + 1]
        outputs = model(
            input_ids[:, position : position + 1], attention_mask=mask, cache=cache, use_cache=True, **kwargs
        )
        cache = output_cache(outputs)
        steps.append(outputs.logits)
    return torch.cat(steps, dim=1), cache


# ------------------------------------------------------------------------------- adaptive exit ----
def test_tester_exit_is_mixed():
    """The harness runs with exit on: its random model must stop some tokens early and run others to full depth,
    or the shared equivalence tests would not exercise the exit."""
    model = loop_model()
    with torch.no_grad():
        iterations = model(prompts()).loop_iterations
    maximum = model.config.loop_max_iterations
    assert (iterations < maximum).any() and (iterations == maximum).any(), iterations
    assert iterations.min() >= 1


def test_one_iteration_is_a_plain_transformer():
    """loop_max_iterations=1 with additive injection: embed -> prelude -> core -> coda -> norm, nothing else."""
    model = loop_model(loop_max_iterations=1, loop_exit_threshold=None)
    ids = prompts()
    trunk = model.model
    with torch.no_grad():
        hidden = trunk.embed_tokens(ids)
        positions = torch.arange(ids.shape[1])[None].expand_as(ids)
        rope = trunk.rotary_emb(positions, hidden.dtype)
        mask = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril().expand(ids.shape[0], 1, -1, -1)
        for layer in [*trunk.prelude, *trunk.core, *trunk.coda]:
            hidden = type(trunk.prelude[0]).forward(layer, hidden, rope, attention_mask=mask)
        expected = model.lm_head(trunk.norm(hidden))
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=ATOL)


def test_exit_runs_only_active_rows():
    """Rows whose tokens all stopped are not run again (gather -> core -> scatter): the core sees fewer rows."""
    model = loop_model()
    ids = prompts(batch=8, length=1, seed=3)  # one token per row: a row stops when its token does
    seen = []
    handle = model.model.core[0].register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    with torch.no_grad():
        iterations = model(ids).loop_iterations
    handle.remove()
    assert seen[0] == 8
    assert seen[1:] == [int((iterations > i).sum()) for i in range(1, len(seen))]
    assert sum(seen) < 8 * model.config.loop_max_iterations, "no row stopped early: the test cannot tell"


def test_exit_batch_equals_rows_alone():
    model = loop_model()
    ids = prompts(batch=4, length=10, seed=5)
    with torch.no_grad():
        batch = model(ids)
        for row in range(ids.shape[0]):
            alone = model(ids[row : row + 1])
            torch.testing.assert_close(alone.logits, batch.logits[row : row + 1], rtol=0, atol=ATOL)
            assert torch.equal(alone.loop_iterations, batch.loop_iterations[row : row + 1])


@pytest.mark.parametrize("criterion, threshold", [("hidden_change", 0.9), ("kl", 1.0)])
def test_untrained_exit_criteria(criterion, threshold):
    """The untrained exits (hidden-state change, Huginn's KL between successive steps) stop tokens early, batch
    rows stay independent, and "kl" (which probes the coda every iteration) refuses a cache."""
    no_cache = {"use_cache": False} if criterion == "kl" else {}
    model = loop_model(loop_exit_criterion=criterion, loop_exit_threshold=threshold, **no_cache)
    ids = prompts()
    with torch.no_grad():
        outputs = model(ids, use_cache=False)
        assert outputs.loop_iterations.float().mean() < model.config.loop_max_iterations
        alone = model(ids[:1], use_cache=False)
        torch.testing.assert_close(alone.logits, outputs.logits[:1], rtol=0, atol=ATOL)
        if criterion == "kl":
            with pytest.raises(ValueError, match="use_cache=False"):
                model(ids, use_cache=True)
            with pytest.raises(ValueError, match="use_cache=False"):  # a config that could not decode by default
                TESTER.get_config(loop_exit_criterion="kl", loop_exit_threshold=threshold)
        else:
            cached, _ = incremental_logits(model, ids, prefix=6)
            torch.testing.assert_close(cached, outputs.logits, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------------------- caches ----
def test_per_iteration_cache_has_no_holes():
    """A token that stopped at iteration e holds its step-e K/V in every deeper slot of each core layer."""
    model = loop_model()
    config = model.config
    ids = prompts(batch=2, length=9)
    with torch.no_grad():
        outputs = model(ids, use_cache=True)
    cache = output_cache(outputs)
    assert len(cache.layers) == config.num_hidden_layers == 1 + 3 * 2 + 1
    iterations = outputs.loop_iterations
    for layer in range(config.core_layers):
        slots = [cache.layers[1 + (i - 1) * config.core_layers + layer].keys for i in range(1, 4)]
        for row, position in (iterations < 3).nonzero().tolist():
            stop = int(iterations[row, position])
            for deeper in range(stop, 3):
                assert torch.equal(slots[deeper][row, :, position], slots[stop - 1][row, :, position])
    assert (iterations < 3).any()


def test_shared_cache():
    """One set of core cache layers (P + C + D); prefill equals the uncached forward exactly; decoding reads past
    tokens' last K/V at every iteration (an approximation of the per-iteration cache, which the benchmark
    measures), equal to per_iteration with one iteration, and row-independent with exit on."""
    model = loop_model(loop_cache="shared")
    config = model.config
    assert config.num_hidden_layers == config.prelude_layers + config.core_layers + config.coda_layers
    ids = prompts(batch=3, length=12)
    with torch.no_grad():
        prefill = model(ids, use_cache=True)
        torch.testing.assert_close(prefill.logits, model(ids, use_cache=False).logits, rtol=0, atol=ATOL)
        assert len(output_cache(prefill).layers) == config.num_hidden_layers
        cached, _ = incremental_logits(model, ids, prefix=6)
        torch.testing.assert_close(cached[:, :6], prefill.logits[:, :6], rtol=0, atol=ATOL)
        for row in range(3):
            alone, _ = incremental_logits(model, ids[row : row + 1], prefix=6)
            torch.testing.assert_close(alone, cached[row : row + 1], rtol=0, atol=ATOL)

    per_iteration = loop_model(seed=4, loop_max_iterations=1)
    shared = SlamLoopForCausalLM(TESTER.get_config(loop_max_iterations=1, loop_cache="shared")).eval()
    shared.load_state_dict(per_iteration.state_dict())
    with torch.no_grad():
        expected, _ = incremental_logits(per_iteration, ids, prefix=4)
        got, _ = incremental_logits(shared, ids, prefix=4)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_shared_cache_left_padding():
    model = loop_model(loop_cache="shared")
    rows = [prompts(1, length, seed=length)[0] for length in (7, 10)]
    input_ids, attention_mask = TESTER.left_padded_batch(rows)
    with torch.no_grad():
        generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False)
        for index, row in enumerate(rows):
            alone = model.generate(row[None], max_new_tokens=5, do_sample=False)
            assert torch.equal(generated[index, -5:], alone[0, -5:])


# ------------------------------------------------------------------------------------- generate ----
def test_generate_reports_mean_iterations(caplog):
    model = loop_model()
    ids = prompts(batch=2, length=6)
    with caplog.at_level(logging.INFO, logger="slam_hf"), torch.no_grad():
        output = model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    stats = model.loop_statistics
    assert output.loop_statistics == stats
    assert stats["prompt_tokens"] == 12 and stats["new_tokens"] == 2 * 5  # the first new token comes from the prefill
    assert 1 <= stats["new_mean_iterations"] < stats["max_iterations"] == 3
    assert stats["new_compute_saved"] == pytest.approx(1 - stats["new_mean_iterations"] / 3)
    assert any("core iterations per new token" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------------- training ----
def test_sampled_depth():
    """Huginn's log-normal Poisson depth: within [1, N], mostly deep (mean N), reproducible from the seed; the
    published loss trigger; a fixed depth."""
    config = SlamLoopConfig(loop_max_iterations=6)
    torch.manual_seed(0)
    draws = [sample_iterations(config) for _ in range(2000)]
    torch.manual_seed(0)
    assert draws[:50] == [sample_iterations(config) for _ in range(50)]
    assert min(draws) >= 1 and max(draws) == 6
    assert 4.5 < sum(draws) / len(draws) < 6 and draws.count(1) > 0
    assert sample_iterations(SlamLoopConfig(loop_iteration_sampling="fixed")) == 4


def test_loss_triggered_depth():
    """The published trigger: past iteration 1 only while this batch's token loss after it is above the trigger;
    with full depth, gradients still reach only the last loop_backprop_iterations iterations."""
    ids = prompts()
    for trigger, expected in ((0.0, 3), (100.0, 1)):
        model = loop_model(loop_iteration_sampling="loss_triggered", loop_loss_trigger=trigger).train()
        outputs = model(ids, labels=ids)
        assert outputs.loop_iterations.unique().tolist() == [expected]
        outputs.loss.backward()
        assert model.model.core[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_truncated_backprop():
    """loop_backprop_iterations=k: the core's weights get gradients from the last k iterations only."""
    for backprop, expected_calls in ((1, 1), (3, 3)):
        model = loop_model(loop_backprop_iterations=backprop, loop_confidence_loss_weight=0.0).train()
        calls = []
        model.model.core[0].mlp.down_proj.register_full_backward_hook(lambda *args: calls.append(1))
        ids = prompts()
        model(ids, labels=ids, loop_iterations=3).loss.backward()
        assert len(calls) == expected_calls, (backprop, len(calls))


def test_confidence_head_trains_alone():
    """The confidence loss reaches only the confidence head: every other gradient is the LM loss's alone."""
    ids = prompts()
    grads = {}
    for weight in (0.0, 1.0):
        model = loop_model(loop_confidence_loss_weight=weight).train()
        outputs = model(ids, labels=ids)
        outputs.loss.backward()
        grads[weight] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        if weight:
            assert outputs.confidence_loss > 0 and outputs.lm_loss is not None
            torch.testing.assert_close(outputs.loss, outputs.lm_loss + outputs.confidence_loss)
    only_confidence = set(grads[1.0]) - set(grads[0.0])
    assert only_confidence and all("confidence" in name for name in only_confidence)
    for name, grad in grads[0.0].items():
        torch.testing.assert_close(grads[1.0][name], grad, rtol=0, atol=0, msg=described(name))


def test_confidence_targets():
    config = SlamLoopConfig(loop_max_iterations=4, loop_confidence_margin=0.1)
    losses = [torch.tensor([[3.0, 2.5]]), torch.tensor([[2.0, 1.95]]), torch.tensor([[1.0, 1.97]])]
    targets, weight = confidence_targets(config, losses, full_depth=False)
    # token 0 keeps improving until the 3rd iteration; token 1 is good enough after the 2nd (gains <= 0.1 later)
    assert targets[:, 0, 0].tolist() == [0.0, 0.0, 1.0] and targets[:, 0, 1].tolist() == [0.0, 1.0, 1.0]
    assert weight.tolist() == [1.0, 1.0, 0.0]  # a shallow step cannot tell whether its last iteration was enough
    absolute = SlamLoopConfig(loop_confidence_target="absolute")
    targets, weight = confidence_targets(absolute, losses, full_depth=False)
    torch.testing.assert_close(targets[:, 0, 0], torch.tensor([0.0, 0.0, 0.5]))
    assert weight.tolist() == [1.0, 1.0, 1.0]


def test_training_learns_and_calibration_keeps_the_budget():
    """A few hundred steps on a learnable sequence: the LM loss and the confidence loss go down, and the calibrated
    threshold saves iterations within the loss budget on held-out rows (the same forward cached decoding runs)."""
    torch.manual_seed(0)
    config = TESTER.get_config(
        initializer_range=0.02, loop_max_iterations=3, loop_iteration_sampling="lognormal_poisson"
    )
    model = SlamLoopForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def rows(count, seed):  # counting sequences mod 40 from random starts: the next token is learnable
        starts = torch.randint(0, 40, (count, 1), generator=torch.Generator().manual_seed(seed))
        return (starts + torch.arange(16)) % 40 + TESTER.first_regular_token_id

    history = []
    for step in range(120):
        ids = rows(8, step)
        outputs = model(ids, labels=ids)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if outputs.confidence_loss is not None:
            history.append((outputs.lm_loss.item(), outputs.confidence_loss.item()))
    first, last = history[:5], history[-5:]
    assert sum(h[0] for h in last) < 0.5 * sum(h[0] for h in first)
    assert sum(h[1] for h in last) < sum(h[1] for h in first)

    heldout = [rows(8, 10_000 + i) for i in range(2)]
    report = calibrate_exit_threshold(model, heldout, loss_budget=0.05)
    assert report.chosen.loss <= report.full_depth.loss * 1.05
    assert model.config.loop_exit_threshold == report.threshold
    check = evaluate_exit(model, heldout, "confidence", report.threshold)
    assert check.mean_iterations == report.chosen.mean_iterations


# ----------------------------------------------------------------------------------- image-text ----
IMAGE_TESTER = SlamLoopImageTextModelTester()


def test_image_text_model_on_text_is_the_causal_lm():
    """Text keeps 1D RoPE: without images the image-text model is the causal LM with the same weights."""
    torch.manual_seed(0)
    model = SlamLoopForImageTextToText(IMAGE_TESTER.get_config()).eval()
    text_model = SlamLoopForCausalLM(IMAGE_TESTER.get_config(vision_config=None)).eval()
    missing, unexpected = text_model.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(name.startswith("model.vision_tower.") for name in unexpected)
    ids = IMAGE_TESTER.input_ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, text_model(ids).logits, rtol=0, atol=0)
    with pytest.raises(TypeError, match="pixel_values"):  # the text head takes no images
        text_model(ids, pixel_values=IMAGE_TESTER.pixel_values(2))
    with pytest.raises(ValueError, match="no vision tower"):  # nor does a text trunk
        text_model.model(ids, pixel_values=IMAGE_TESTER.pixel_values(2))
    with pytest.raises(ValueError, match="vision_config"):
        SlamLoopForImageTextToText(IMAGE_TESTER.get_config(vision_config=None))


def test_image_patches_get_2d_rope():
    """Placeholders take 2D RoPE at their (row, column) in the patch grid, text 1D RoPE at its position; attention
    among an image's patches then sees their 2D offsets (a transposed image changes the output)."""
    torch.manual_seed(0)
    model = SlamLoopForImageTextToText(IMAGE_TESTER.get_config()).eval()
    inputs = IMAGE_TESTER.model_inputs(batch_size=1, seq_length=9)
    trunk = model.model
    is_image = inputs["input_ids"] == IMAGE_TESTER.image_token_id
    text_rope = trunk.rotary_emb(torch.arange(9)[None], torch.float32)
    cos, sin = trunk._selective_rope(text_rope, is_image, inputs["pixel_values"])
    grid = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])[None]  # 2 x 2 patches, row-major
    patch_cos, patch_sin = trunk.patch_rotary_emb(grid, torch.float32)
    torch.testing.assert_close(cos[is_image], patch_cos[0])
    torch.testing.assert_close(sin[~is_image], text_rope[1][~is_image])
    with torch.no_grad():
        logits = model(**inputs).logits
        transposed = model(inputs["input_ids"], pixel_values=inputs["pixel_values"].transpose(2, 3)).logits
    assert (logits - transposed).abs().max() > 1e-3


def test_image_text_generate_with_processor(tmp_path):
    """SlamProcessor -> generate with adaptive exit; the images are read once (prefill), the `<image>` token is never
    decoded, cached == uncached, and AutoModelForImageTextToText / AutoProcessor load the saved pair."""
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from slam_hf import SlamImageProcessor, SlamProcessor
    from slam_hf.processing_slam import train_bpe_tokenizer

    words = ["a", "photo", "of", "the", "digit", "seven", "is", "red"]
    corpus = [" ".join(np.random.default_rng(i).choice(words, size=8)) for i in range(200)]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=IMAGE_TESTER.vocab_size)
    tokenizer.padding_side = "left"  # for generation
    processor = SlamProcessor(SlamImageProcessor(size={"height": 8, "width": 8}, patch_size=4), tokenizer)
    torch.manual_seed(0)
    model = SlamLoopForImageTextToText(IMAGE_TESTER.get_config(vocab_size=len(tokenizer))).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    batch = processor(
        text=["<image> a photo of", "<image> the digit seven is"],
        images=[image, image],
        padding=True,
        return_tensors="pt",
    )
    batch = {name: value for name, value in batch.items() if name != "token_type_ids"}
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        cached = model.generate(**batch, max_new_tokens=6, do_sample=False)
        handle.remove()
        assert model.loop_statistics["new_mean_iterations"] < model.config.loop_max_iterations
        uncached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    assert calls == [1]
    assert torch.equal(cached, uncached)
    assert not (cached[:, batch["input_ids"].shape[1] :] == IMAGE_TESTER.image_token_id).any()

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(reloaded) is SlamLoopForImageTextToText
    assert type(AutoProcessor.from_pretrained(tmp_path)) is SlamProcessor
    with torch.no_grad():
        assert torch.equal(reloaded.generate(**batch, max_new_tokens=6, do_sample=False), cached)
