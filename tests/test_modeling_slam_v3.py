"""SLAM v3 (encoder-decoder): the shared suite, plus what only v3 has.

1. generation: the compressed MLA cache (exact shapes and contents), cross-attention K/V and the encoder computed
   once per generation (hooks), cached == uncached step by step, beam search against a reference beam search
   written out here, absorbed == expanded MLA decoding;
2. the encoder: four batched paths == the paths run one by one (outputs and gradients), text-only input (no NaN,
   the image and cross-modal paths contribute exact zeros), image placement, padded prompts;
3. the latent bottleneck and aux inputs;
4. input and config errors;
5. training: Trainer on a tiny image -> text task, LoRA on the decoder (save, reload, merge);
6. the image-text-to-text pipeline with SlamProcessor.
"""

import copy
import math

import numpy as np
import pytest
import torch
from slam_common import (
    ATOL,
    SlamModelTesterMixin,
    assert_context_sensitive,
    count_calls,
    described,
    output_cache,
    rows_of,
    single_threaded_torch,
)
from slam_tester import SlamV3ModelTester
from torch import nn
from transformers.cache_utils import EncoderDecoderCache

from slam_hf import SlamImageProcessor, SlamProcessor, SlamV3Config, SlamV3VisionConfig
from slam_hf.configuration_slam import ENCODER_PATHS
from slam_hf.modeling_slam import memory_padding_mask
from slam_hf.slam_fusion import path_masks

TEXT, IMAGE, SHARED, CROSS = (ENCODER_PATHS.index(name) for name in ("text", "image", "shared", "cross_modal"))


class TestSlamV3Model(SlamModelTesterMixin):  # pytest collects `Test*` classes only
    model_tester_class = SlamV3ModelTester


single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


@pytest.fixture(scope="module")
def tester():
    return SlamV3ModelTester()


@pytest.fixture(scope="module")
def model(tester):
    """The tester's model (init std 0.2, so greedy decoding moves between tokens), in eval mode."""
    torch.manual_seed(0)
    return tester.conditional_generation_class(tester.get_config()).eval()


def fresh(tester, train=False, **overrides):
    model = tester.conditional_generation_class(tester.get_config(**overrides))
    return model.train() if train else model.eval()


def fixed_length(new_tokens):
    """Greedy, exactly `new_tokens` new tokens (EOS suppressed until then)."""
    return dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)


class Recorder:
    """Forward hooks keeping the last output of modules: {name: output}."""

    def __init__(self, **modules):
        self.outputs = {}
        self.handles = [
            module.register_forward_hook(lambda _m, _a, out, name=name: self.outputs.__setitem__(name, out))
            for name, module in modules.items()
        ]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def record_encoder(model, **inputs):
    """(model outputs, path states (4, B, L, H), fusion output (B, L, H)) of one forward."""
    encoder = model.model.encoder
    recorder = Recorder(paths=encoder.paths, fusion=encoder.fusion)
    try:
        outputs = model(**inputs)
    finally:
        recorder.remove()
    return outputs, recorder.outputs["paths"], recorder.outputs["fusion"]


# ------------------------------------------------------------------------------------- 1. generation ----
def test_generate_cache_holds_compressed_latent_and_cross_kv(tester, model):
    config = model.config
    inputs = tester.generation_inputs()
    out = model.generate(**inputs, **fixed_length(6), return_dict_in_generate=True)
    cache = output_cache(out)
    assert type(cache) is EncoderDecoderCache
    batch, length = out.sequences.shape
    assert (batch, length) == (2, 7)
    processed = length - 1  # the last generated token is returned, never fed back
    memory_length = inputs["input_ids"].shape[1]
    assert len(cache.self_attention_cache.layers) == config.decoder_layers == 2
    assert len(cache.cross_attention_cache.layers) == config.decoder_layers
    for layer in cache.self_attention_cache.layers:  # MLA: the latent c_kv and the shared RoPE key, one "head"
        assert layer.keys.shape == (2, 1, processed, 16)  # (B, 1, S, kv_lora_rank)
        assert layer.values.shape == (2, 1, processed, 4)  # (B, 1, S, qk_rope_head_dim)
    for layer in cache.cross_attention_cache.layers:  # GQA K/V over the memory: 2 heads of 8
        assert layer.keys.shape == layer.values.shape == (2, 2, memory_length, 8)
    assert all(cache.is_updated[idx] for idx in range(config.decoder_layers))

    # Contents: what each layer computes from the same tokens in one full forward.
    decoder = model.model.decoder
    captured = {}
    handles = [
        layer.self_attn.register_forward_pre_hook(lambda _m, args, idx=idx: captured.__setitem__(idx, args[:2]))
        for idx, layer in enumerate(decoder.layers)
    ]
    with torch.no_grad():
        model(**inputs, decoder_input_ids=out.sequences[:, :-1], use_cache=False)
        memory = model.get_encoder()(**inputs).last_hidden_state
        for handle in handles:
            handle.remove()
        for idx, layer in enumerate(decoder.layers):
            _, _, c_kv, k_rope = layer.self_attn.project(*captured[idx])
            keys = layer.cross_attn.k_proj(memory).view(batch, memory_length, 2, 8).transpose(1, 2)
            values = layer.cross_attn.v_proj(memory).view(batch, memory_length, 2, 8).transpose(1, 2)
            self_layer, cross_layer = cache.self_attention_cache.layers[idx], cache.cross_attention_cache.layers[idx]
            for what, cached, expected in (
                ("cached latent", self_layer.keys, c_kv),
                ("cached RoPE key", self_layer.values, k_rope),
                ("cross keys", cross_layer.keys, keys),
                ("cross values", cross_layer.values, values),
            ):
                torch.testing.assert_close(cached, expected, rtol=0, atol=ATOL, msg=described(f"{what} of layer {idx}"))


def test_cross_attention_kv_and_encoder_computed_once(tester, model):
    inputs = tester.generation_inputs()
    encoder = model.model.encoder
    modules = {"encoder": encoder, "vision": encoder.vision_tower, "decoder": model.model.decoder}
    for idx, layer in enumerate(model.model.decoder.layers):
        modules[f"k_proj {idx}"], modules[f"v_proj {idx}"] = layer.cross_attn.k_proj, layer.cross_attn.v_proj

    def generate_counting(**kwargs):
        counters = {name: count_calls(module) for name, module in modules.items()}
        try:
            model.generate(**inputs, **fixed_length(6), **kwargs)
        finally:
            for _, handle in counters.values():
                handle.remove()
        return {name: len(calls) for name, (calls, _) in counters.items()}

    counts = generate_counting()
    assert counts["decoder"] == 6  # one decoding step per new token
    assert counts["encoder"] == counts["vision"] == 1
    for idx in range(2):
        assert counts[f"k_proj {idx}"] == counts[f"v_proj {idx}"] == 1, counts
    # The counters do see repeated projections: without a cache every step projects the memory again.
    counts = generate_counting(use_cache=False)
    assert counts["encoder"] == 1 and counts["k_proj 0"] == counts["v_proj 1"] == 6, counts


def test_cached_generation_equals_uncached_step_by_step(tester, model):
    inputs = tester.generation_inputs()
    kwargs = dict(**fixed_length(8), output_logits=True, return_dict_in_generate=True)
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for row in cached.sequences:  # the random model does not repeat one token, so equality means something
        assert len(set(row[1:].tolist())) >= 3, cached.sequences
    assert len(cached.logits) == len(uncached.logits) == 8
    for step, (with_cache, without_cache) in enumerate(zip(cached.logits, uncached.logits)):
        torch.testing.assert_close(
            with_cache, without_cache, rtol=0, atol=1e-4, msg=described(f"step {step} logits, cached vs uncached")
        )
    # ... and both equal one teacher-forced forward over the generated answer.
    with torch.no_grad():
        full = model(**inputs, decoder_input_ids=cached.sequences[:, :-1], use_cache=False).logits
    torch.testing.assert_close(
        torch.stack(cached.logits, dim=1), full, rtol=0, atol=1e-4, msg=described("step logits vs full forward")
    )


def reference_beam_search(model, inputs, num_beams, new_tokens):
    """Beam search written out over full forwards (no cache): keep the `num_beams` best partial answers by summed
    log-probability (EOS suppressed, as min_new_tokens does). Returns [(tokens, score)], best first."""
    config = model.config
    beams = [([config.decoder_start_token_id], 0.0)]
    for _ in range(new_tokens):
        expanded = {name: value.expand(len(beams), *value.shape[1:]) for name, value in inputs.items()}
        with torch.no_grad():
            logits = model(**expanded, decoder_input_ids=torch.tensor([t for t, _ in beams]), use_cache=False).logits
        log_probs = logits[:, -1].float().log_softmax(-1)
        log_probs[:, config.eos_token_id] = -math.inf
        candidates = []
        for (tokens, score), row in zip(beams, log_probs):
            top = row.topk(num_beams)
            candidates += [(tokens + [int(t)], score + float(v)) for v, t in zip(top.values, top.indices)]
        beams = sorted(candidates, key=lambda beam: -beam[1])[:num_beams]
    return beams


def test_beam_search_matches_reference_beam_search(tester, model):
    inputs, num_beams, new_tokens = tester.generation_inputs(), 3, 4
    out = model.generate(
        **inputs,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        length_penalty=0.0,
        output_scores=True,
        return_dict_in_generate=True,
        **fixed_length(new_tokens),
    )
    assert out.sequences.shape == (2 * num_beams, 1 + new_tokens)  # every returned answer has the same length
    for row in range(2):
        reference = reference_beam_search(model, rows_of(inputs, slice(row, row + 1)), num_beams, new_tokens)
        returned = out.sequences[row * num_beams : (row + 1) * num_beams]
        assert returned.tolist() == [tokens for tokens, _ in reference], f"row {row}"
        scores = torch.tensor([score for _, score in reference])
        torch.testing.assert_close(
            out.sequences_scores[row * num_beams : (row + 1) * num_beams],
            scores,
            rtol=0,
            atol=1e-4,
            msg=described("scores"),
        )
        assert len({tuple(tokens) for tokens, _ in reference}) == num_beams
    greedy = model.generate(**inputs, **fixed_length(new_tokens))
    assert not torch.equal(out.sequences[::num_beams], greedy), "beam search found nothing better than greedy"


def test_absorbed_decoding_matches_expanded(tester, model):
    model = copy.deepcopy(model)
    attentions = [layer.self_attn for layer in model.model.decoder.layers]
    inputs = tester.generation_inputs()
    runs, calls = {}, {}
    for absorb in (True, False):
        calls[absorb] = {"attend_absorbed": 0, "attend_expanded": 0}
        for attention in attentions:
            attention.absorb = absorb
            for name in calls[absorb]:
                method = getattr(type(attention), name).__get__(attention)

                def counted(*args, _method=method, _name=name, _calls=calls[absorb], **kwargs):
                    _calls[_name] += 1
                    return _method(*args, **kwargs)

                setattr(attention, name, counted)
        runs[absorb] = model.generate(**inputs, **fixed_length(8), output_logits=True, return_dict_in_generate=True)
        calls[absorb] = dict(calls[absorb])  # a snapshot: the decoding steps only
        with torch.no_grad():
            runs[absorb].full = model(**inputs, decoder_input_ids=runs[absorb].sequences, use_cache=False).logits
    assert calls[True] == {"attend_absorbed": 16, "attend_expanded": 0}  # 8 steps x 2 layers
    assert calls[False] == {"attend_absorbed": 0, "attend_expanded": 16}
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for step, (absorbed, expanded) in enumerate(zip(runs[True].logits, runs[False].logits)):
        torch.testing.assert_close(
            absorbed, expanded, rtol=0, atol=1e-4, msg=described(f"step {step} logits, absorbed vs expanded")
        )
    torch.testing.assert_close(
        runs[True].full, runs[False].full, rtol=0, atol=1e-4, msg=described("full forward, absorbed vs expanded")
    )

    # "auto": decoding steps absorb, training runs expanded.
    attention = attentions[0]
    attention.absorb = "auto"
    assert attention.use_absorption(1)
    attention.train()
    assert not attention.use_absorption(1)


# ---------------------------------------------------------------------------------------- 2. encoder ----
def path_layer_calls(model):
    """Counters on every SlamLayer of the four paths (called only when the paths run one by one)."""
    return [count_calls(layer) for path in model.model.encoder.paths.paths.values() for layer in path]


@pytest.mark.parametrize("case", ["image", "padded", "text_only"])
def test_batched_paths_match_sequential_paths(tester, case):
    model = fresh(tester, train=True)  # dropout is 0: training mode is deterministic
    if case == "padded":  # left-padded prompts, rows with an image and a text-only row
        inputs, _ = tester.pad_rows(tester.padding_rows((tester.seq_length, 9, 3)), "left")
    else:
        inputs = tester.model_inputs(text_only=case == "text_only")
    inputs = tester.training_inputs(model.__class__, inputs)
    paths = model.model.encoder.paths

    results = {}
    for batched in (True, False):
        paths.batch_paths = batched
        model.zero_grad()
        counters = path_layer_calls(model)
        outputs = model(**inputs)
        outputs.loss.backward()
        for _, handle in counters:
            handle.remove()
        layer_calls = sum(len(calls) for calls, _ in counters)
        # a text-only batch gives no token a key in the image and cross-modal paths: those two are not run
        active_paths = 2 if case == "text_only" else 4
        assert layer_calls == (0 if batched else active_paths * model.config.encoder_layers), (batched, layer_calls)
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results[batched] = (outputs, grads)
    (batched, batched_grads), (sequential, sequential_grads) = results[True], results[False]
    torch.testing.assert_close(
        batched.encoder_last_hidden_state,
        sequential.encoder_last_hidden_state,
        rtol=0,
        atol=ATOL,
        msg=described("memory"),
    )
    torch.testing.assert_close(batched.logits, sequential.logits, rtol=0, atol=ATOL, msg=described("logits"))
    torch.testing.assert_close(batched.loss, sequential.loss, rtol=0, atol=ATOL, msg=described("loss"))
    assert batched_grads.keys() == sequential_grads.keys()
    assert any(".paths.text." in name for name in batched_grads)
    skipped = any(".paths.image." in name or ".paths.cross_modal." in name for name in batched_grads)
    assert skipped == (case != "text_only")
    for name, grad in batched_grads.items():
        torch.testing.assert_close(
            grad, sequential_grads[name], rtol=0, atol=ATOL, msg=described(f"gradient of {name}")
        )


@pytest.mark.parametrize("batch_paths", [True, False], ids=["batched", "sequential"])
def test_gradient_checkpointing_recomputes_every_encoder_part(tester, batch_paths):
    """The batched paths never call their SlamLayers, so checkpointing must be applied to the batched layer itself;
    the fusion node and the latent bottleneck are checkpointed layers too. Gradients stay exact."""
    from slam_common import enable_checkpointing

    from slam_hf.slam_grouped import StackedLayers

    plain = fresh(tester, train=True, fusion_num_latents=2)
    checkpointed = fresh(tester, train=True, fusion_num_latents=2)
    checkpointed.load_state_dict(plain.state_dict())
    enable_checkpointing(checkpointed)
    inputs = tester.training_inputs(plain.__class__, tester.model_inputs())

    def run(model):
        model.model.encoder.paths.batch_paths = batch_paths
        encoder = model.model.encoder
        watched = {
            "fusion": encoder.fusion.cross_modal.self_attn.q_proj,
            "bottleneck": encoder.bottleneck.cross_attn.q_proj,
            "decoder": model.model.decoder.layers[1].cross_attn.o_proj,
        }
        # Early modules of each layer: the recomputation stops after the last activation the backward needs, so a
        # layer's last module never finishes its recomputed call. A hook on a path layer would turn off the stacked
        # weights of the batched run, which StackedLayers.linear calls count instead.
        if not batch_paths:
            watched["path"] = encoder.paths.paths["image"][1].self_attn.q_proj
        counters = {name: count_calls(module) for name, module in watched.items()}
        stacked_calls = []
        original = StackedLayers.linear

        def counting(self, name, x):
            stacked_calls.append(name)
            return original(self, name, x)

        StackedLayers.linear = counting
        try:
            model.zero_grad()
            loss = model(**inputs).loss
            loss.backward()
        finally:
            StackedLayers.linear = original
            for _, handle in counters.values():
                handle.remove()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        return loss, grads, {name: len(calls) for name, (calls, _) in counters.items()}, len(stacked_calls)

    loss, grads, calls, stacked = run(plain)
    checkpointed_loss, checkpointed_grads, checkpointed_calls, checkpointed_stacked = run(checkpointed)
    assert set(calls.values()) == {1} and set(checkpointed_calls.values()) == {2}, (calls, checkpointed_calls)
    # 2 layers x (q, k, v, o, gate, up, down) of the four stacked paths, recomputed once under checkpointing
    assert (stacked, checkpointed_stacked) == ((14, 28) if batch_paths else (0, 0))
    assert torch.equal(loss, checkpointed_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(
            checkpointed_grads[name], grad, rtol=0, atol=1e-6, msg=described(f"checkpointed gradient of {name}")
        )


def test_path_masks_rules():
    """Written out for a joint sequence [t, i, i, t, pad]: who attends to whom in each path."""
    is_image = torch.tensor([[False, True, True, False, False]])
    real = torch.tensor([[True, True, True, True, False]])
    allowed, has_key = path_masks(is_image, real)
    # A query without any allowed key (padding; image tokens in the text path, ...) attends to itself only.
    text = [[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 1]]  # image rows: self
    image = [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    shared = [[1, 1, 1, 1, 0]] * 4 + [[0, 0, 0, 0, 1]]
    cross = [[0, 1, 1, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 1]]
    for index, expected in ((TEXT, text), (IMAGE, image), (SHARED, shared), (CROSS, cross)):
        assert allowed[index, 0].int().tolist() == expected, ENCODER_PATHS[index]
    assert has_key[:, 0].int().tolist() == [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]


def test_text_only_input(tester):
    model = fresh(tester, train=True)
    inputs = tester.training_inputs(model.__class__, tester.model_inputs(text_only=True))
    outputs, path_states, fused = record_encoder(model, **inputs)
    outputs.loss.backward()
    assert torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.loss)
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)

    # No image: the image path and the cross-modal path leave every token without a key -> exact zeros.
    assert torch.count_nonzero(path_states[IMAGE]) == 0
    assert torch.count_nonzero(path_states[CROSS]) == 0
    assert path_states[TEXT].abs().amax(-1).min() > 0 and path_states[SHARED].abs().amax(-1).min() > 0
    # Fusion: mean over the two paths that saw each token + concat projection; the cross-modal attention adds
    # nothing (no key of the other modality), so only its residual + MLP remain.
    fusion = model.model.encoder.fusion
    with torch.no_grad():
        concat = path_states.permute(1, 2, 0, 3).flatten(2)
        expected = (path_states[TEXT] + path_states[SHARED]) / 2 + fusion.concat_proj(concat)
        expected = fusion.cross_modal.finish(expected, torch.zeros_like(expected))
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6, msg=described("fusion output for text-only input"))

    # Exactly no gradient reaches what had no input: the image and cross-modal paths, the fusion's cross-modal
    # attention projections, the vision tower (not run at all).
    silent = (".paths.image.", ".paths.cross_modal.", "fusion.cross_modal.self_attn.")
    for name, grad in grads.items():
        if "vision_tower" in name:
            assert grad is None, name
        elif any(part in name for part in silent):
            assert grad is None or torch.count_nonzero(grad) == 0, name
    assert grads["model.encoder.paths.paths.text.0.self_attn.q_proj.weight"].abs().sum() > 0


def test_image_features_and_path_structure(tester, model):
    """Features go to the placeholders row-major in batch order; each path is zero exactly where it gives a token no
    key. Batch: row 0 text only, row 1 two images (8 placeholders)."""
    input_ids = tester.input_ids(2, 14)
    input_ids[1, 2:6] = input_ids[1, 8:12] = tester.image_token_id
    pixel_values = tester.pixel_values(2)
    inputs = dict(input_ids=input_ids, pixel_values=pixel_values, decoder_input_ids=tester.input_ids(2, 5))
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
        _, path_states, _ = record_encoder(model, **inputs)
        features = model.model.encoder.vision_tower(pixel_values)  # (2 images, 4 patches, hidden)
    embedded = outputs.encoder_hidden_states[0]
    is_image = input_ids == tester.image_token_id
    assert torch.equal(embedded[1, 2:6], features[0]) and torch.equal(embedded[1, 8:12], features[1])
    assert torch.equal(embedded[~is_image], model.get_input_embeddings()(input_ids)[~is_image])

    assert torch.count_nonzero(path_states[TEXT][is_image]) == 0
    assert torch.count_nonzero(path_states[IMAGE][~is_image]) == 0
    assert torch.count_nonzero(path_states[CROSS][0]) == 0  # row 0 has one modality only
    assert path_states[CROSS][1].abs().amax(-1).min() > 0  # row 1: every token has keys of the other modality
    assert path_states[TEXT][~is_image].abs().amax(-1).min() > 0
    assert path_states[IMAGE][is_image].abs().amax(-1).min() > 0


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_image_prompts_equal_unpadded(tester, model, side):
    rows = tester.padding_rows((tester.seq_length, 7, 2))  # image, image, text only
    padded, _ = tester.pad_rows(rows, side)
    with torch.no_grad():
        batched = model(**padded)
        mask = padded["attention_mask"].bool()
        for i, row in enumerate(rows):
            alone = model(**row)
            torch.testing.assert_close(
                batched.logits[i], alone.logits[0], rtol=0, atol=ATOL, msg=described(f"{side}-padded row {i} logits")
            )
            real_memory = batched.encoder_last_hidden_state[i][mask[i]]
            torch.testing.assert_close(
                real_memory,
                alone.encoder_last_hidden_state[0],
                rtol=0,
                atol=ATOL,
                msg=described(f"{side}-padded row {i} memory"),
            )
        # The ids under the padding are never read.
        scrambled = padded["input_ids"].masked_fill(~mask, 77)
        assert torch.equal(model(**{**padded, "input_ids": scrambled}).logits, batched.logits)


# ------------------------------------------------------------------------------- 3. latents and aux ----
def test_latent_bottleneck(tester):
    model = fresh(tester, fusion_num_latents=3)
    config = model.config
    inputs = tester.model_inputs()
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.encoder_last_hidden_state.shape == (2, 3, config.hidden_size)  # memory = the latents
    generated = model.generate(**tester.encoder_part(inputs), **fixed_length(5), return_dict_in_generate=True)
    assert generated.sequences.shape == (2, 6)
    for layer in output_cache(generated).cross_attention_cache.layers:
        assert layer.keys.shape[2] == 3

    # The prompt's padding mask does not apply to the latents (all real): padded rows equal unpadded ones, and
    # the padding is hidden from the bottleneck instead.
    rows = tester.padding_rows((tester.seq_length, 9, 1))
    padded, _ = tester.pad_rows(rows, "left")
    assert memory_padding_mask(config, padded["attention_mask"], 3) is None
    with torch.no_grad():
        batched = model(**padded).logits
        for i, row in enumerate(rows):
            torch.testing.assert_close(
                batched[i], model(**row).logits[0], rtol=0, atol=ATOL, msg=described(f"row {i} with latents")
            )
        scrambled = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, 77)
        torch.testing.assert_close(
            model(**{**padded, "input_ids": scrambled}).logits, batched, rtol=0, atol=0, msg=described("padding ids")
        )
    rows = tester.padding_rows((tester.seq_length, 9, 1), decoder=False)
    padded, _ = tester.pad_rows(rows, "left")
    batched = model.generate(**padded, **fixed_length(5))
    for i, row in enumerate(rows):
        assert torch.equal(batched[i], model.generate(**row, **fixed_length(5))[0]), f"generated row {i}"


def test_aux_values(tester):
    model = fresh(tester, aux_dim=5)
    inputs = tester.model_inputs(config=model.config)
    aux = inputs["aux_values"]
    assert aux.shape == (2, tester.num_aux, 5)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        outputs, path_states, _ = record_encoder(model, **inputs, output_hidden_states=True)
        assert outputs.encoder_last_hidden_state.shape == (2, length + tester.num_aux, model.config.hidden_size)
        embedded_aux = outputs.encoder_hidden_states[0][:, length:]
        assert torch.equal(embedded_aux, model.model.encoder.aux_projector(aux))  # appended after the prompt
        # aux tokens join the image/aux modality: the text path gives them no key, the image path does
        assert torch.count_nonzero(path_states[TEXT][:, length:]) == 0
        assert path_states[IMAGE][:, length:].abs().amax(-1).min() > 0
        changed = model(**{**inputs, "aux_values": aux + 1.0}).logits
        assert (changed - outputs.logits).abs().max() > 1e-3, "aux_values do not change the output"

        # padded prompts (aux after the padding on the right) equal the unpadded rows
        rows = tester.padding_rows((tester.seq_length, 8))
        for i, row in enumerate(rows):
            row["aux_values"] = aux[i : i + 1]
        for side in ("left", "right"):
            padded, _ = tester.pad_rows(rows, side)
            batched = model(**padded, aux_values=aux).logits
            for i, row in enumerate(rows):
                torch.testing.assert_close(
                    batched[i],
                    model(**row).logits[0],
                    rtol=0,
                    atol=ATOL,
                    msg=described(f"{side}-padded row {i} with aux"),
                )

    cached = model.generate(**tester.encoder_part(inputs), **fixed_length(5))
    assert torch.equal(cached, model.generate(**tester.encoder_part(inputs), **fixed_length(5), use_cache=False))

    for bad, message in (
        (torch.randn(2, 3, 4), "aux_dim=5"),  # wrong width
        (torch.randn(2, 5), "aux_values"),  # wrong rank
        (torch.randn(3, 3, 5), "batch size"),
    ):
        with pytest.raises(ValueError, match=message):
            model(**{**inputs, "aux_values": bad})
    without_aux_dim = fresh(tester)
    with pytest.raises(ValueError, match="aux_dim"):
        without_aux_dim(**inputs)


# ---------------------------------------------------------------------------------------- 4. errors ----
def test_bad_inputs(tester, model):
    inputs = tester.model_inputs()
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]

    def raises(match, **changes):
        with pytest.raises(ValueError, match=match):
            model(**{**inputs, **changes})

    three = ids.clone()
    three[:, tester.image_start] = 7  # 3 placeholders per row, 4 patches per image
    raises(r"6 image placeholder tokens, but `pixel_values` give 2 image\(s\) x 4 patches", input_ids=three)
    raises(r"placeholder tokens \(id 5\) but no `pixel_values`", pixel_values=None)
    raises("multiples of patch_size=4", pixel_values=torch.randn(2, 3, 10, 10))
    raises("placeholder tokens, but `pixel_values` give 2 image", pixel_values=torch.randn(2, 3, 12, 8))  # 6 patches
    raises("1 channels, but the vision tower expects num_channels=3", pixel_values=pixels[:, :1])
    raises(r"shape \(batch, channels, height, width\)", pixel_values=pixels[0])
    raises("image_grid_hw", image_grid_hw=torch.tensor([[2, 3], [2, 3]]))
    raises(  # embedded placeholders are found in `inputs_embeds` (test_inputs_embeds_with_pixel_values) and counted
        r"`inputs_embeds` hold 6 embeddings of the image placeholder token, but `pixel_values` give 2 image\(s\)",
        input_ids=None,
        inputs_embeds=model.get_input_embeddings()(three),
    )
    raises(r"`labels` must have shape \(batch, answer length\)", labels=inputs["decoder_input_ids"][0])
    raises(r"`labels` must have shape \(2, 7\)", labels=inputs["decoder_input_ids"][:, :5])
    decoder_embeds = model.get_input_embeddings()(inputs["decoder_input_ids"])
    raises("exactly one of `decoder_input_ids` or `decoder_inputs_embeds`", decoder_inputs_embeds=decoder_embeds)
    raises("exactly one of `decoder_input_ids` or `decoder_inputs_embeds`", decoder_input_ids=None)
    raises("decoder_attention_mask", decoder_attention_mask=torch.ones(2, 3))
    bad_answer = inputs["decoder_input_ids"].clone()
    bad_answer[0, 0] = 99
    raises("outside the vocabulary", decoder_input_ids=bad_answer)
    memory = model.get_encoder()(input_ids=ids, pixel_values=pixels)
    with pytest.raises(ValueError, match="attention_mask` covers 16 tokens but the encoder memory has 15"):
        model(encoder_outputs=memory, attention_mask=torch.ones(2, 16), decoder_input_ids=inputs["decoder_input_ids"])
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        no_start = fresh(tester, decoder_start_token_id=None)
        no_start(input_ids=ids, pixel_values=pixels, labels=inputs["decoder_input_ids"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(qk_rope_head_dim=5), "qk_rope_head_dim` must be even"),
        (dict(kv_lora_rank=0), "kv_lora_rank` must be a positive integer"),
        (dict(vision_config=dict(hidden_size=24, num_attention_heads=4)), "multiple of 4, got 6"),
        (dict(num_hidden_layers=3), "derived as decoder_layers = 2"),
        (dict(position_embedding_type="learned"), "'rope' or 'none', got 'learned'"),
        (dict(is_encoder_decoder=False), "`is_encoder_decoder` must be True"),
        (dict(fusion_num_latents=-2), "fusion_num_latents"),
        (dict(image_token_id=99), "image_token_id"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_invalid_config_fails_at_construction(tester, overrides, message):
    with pytest.raises(ValueError, match=message):
        tester.get_config(**overrides)


def test_config_structure(tester):
    with pytest.raises(TypeError, match="vision_config` must be a dict, a SlamV3VisionConfig or None, got str"):
        SlamV3Config(vision_config="vit")
    config = tester.get_config(decoder_layers=3)
    assert config.num_hidden_layers == 3 and config.is_encoder_decoder and config.decoder_start_token_id == 1
    assert type(config.vision_config) is SlamV3VisionConfig and config.vision_config.patch_size == 4
    assert config.layer_schedule == ["paths_0", "paths_1", "fusion", "mla_decoder_0", "mla_decoder_1", "mla_decoder_2"]
    from_object = SlamV3Config(vision_config=SlamV3VisionConfig(patch_size=2))
    assert from_object.vision_config.patch_size == 2
    assert SlamV3Config.from_dict(from_object.to_dict()).vision_config.to_dict() == from_object.vision_config.to_dict()


# -------------------------------------------------------------------------------------- 5. training ----
def colour_task(tester, count, generator):
    """Image -> text: an 8 x 8 image (+ noise) that is red, green, blue or white; the answer names the colour
    (token 10 + colour, then </s>). The prompt is the same for every example, so only the image tells the answer."""
    colour = torch.randint(0, 4, (count,), generator=generator)
    channels = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1]])[colour]
    pixel_values = channels[:, :, None, None] + 0.3 * torch.randn(count, 3, 8, 8, generator=generator)
    input_ids = torch.tensor([[7] + [tester.image_token_id] * 4 + [8]] * count)
    labels = torch.stack([10 + colour, torch.full_like(colour, 2)], dim=1)
    rows = zip(input_ids, pixel_values, labels)
    return [dict(input_ids=ids, pixel_values=pixels, labels=answer) for ids, pixels, answer in rows]


def dataset_loss_and_accuracy(model, examples):
    batch = {name: torch.stack([example[name] for example in examples]) for name in examples[0]}
    model.eval()
    with torch.no_grad():
        outputs = model(**batch)
    accuracy = (outputs.logits[:, 0].argmax(-1) == batch["labels"][:, 0]).float().mean().item()
    return outputs.loss.item(), accuracy


def test_trainer_learns_image_to_text_task(tester, tmp_path):
    from transformers import Trainer, TrainingArguments

    generator = torch.Generator().manual_seed(0)
    train, held_out = colour_task(tester, 64, generator), colour_task(tester, 32, generator)
    model = fresh(tester, initializer_range=0.02)
    loss_before, accuracy_before = dataset_loss_and_accuracy(model, held_out)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=train).train()
    loss_after, accuracy_after = dataset_loss_and_accuracy(model, held_out)
    assert loss_before > 4.0 and accuracy_before < 0.5, (loss_before, accuracy_before)  # ~ln(99): knows nothing
    assert loss_after < 0.1 * loss_before, (loss_before, loss_after)
    assert accuracy_after >= 0.9, accuracy_after  # it reads the image: the prompt is the same for every class


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("task_type", ["SEQ_2_SEQ_LM", None])
def test_lora_on_decoder_save_reload_merge(tester, tmp_path, task_type):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    fresh(tester).save_pretrained(tmp_path / "base")
    base = tester.conditional_generation_class.from_pretrained(tmp_path / "base")  # records its path for PEFT
    targets = r".*decoder.*\.(q_proj|kv_b_proj|o_proj)"
    wrapped = peft.get_peft_model(base, peft.LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=targets))
    lora_layers = [name for name, m in wrapped.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    # per decoder layer: self_attn q_proj, kv_b_proj, o_proj and cross_attn q_proj, o_proj
    assert len(lora_layers) == 2 * 5 and all(".decoder." in name for name in lora_layers), lora_layers
    if task_type is not None:
        assert type(wrapped).__name__ == "PeftModelForSeq2SeqLM"

    inputs = tester.training_inputs(base.__class__, tester.model_inputs())
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    wrapped.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = wrapped(**inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    wrapped.eval()
    eval_inputs = {name: value for name, value in inputs.items() if name != "labels"}
    eval_inputs["decoder_input_ids"] = tester.input_ids(2, tester.decoder_seq_length)
    with torch.no_grad():
        adapted = wrapped(**eval_inputs).logits
        original = tester.conditional_generation_class.from_pretrained(tmp_path / "base")(**eval_inputs).logits
    assert (adapted - original).abs().max() > 1e-3, "training did not change the adapted model"

    wrapped.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(
        tester.conditional_generation_class.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**eval_inputs).logits, adapted)
    generated = wrapped.generate(**tester.encoder_part(eval_inputs), **fixed_length(5))
    assert torch.equal(reloaded.generate(**tester.encoder_part(eval_inputs), **fixed_length(5)), generated)

    merged = reloaded.merge_and_unload()
    assert type(merged.model.decoder.layers[0].self_attn.kv_b_proj) is nn.Linear
    with torch.no_grad():
        scale = max(1.0, adapted.abs().max().item())
        torch.testing.assert_close(
            merged(**eval_inputs).logits,
            adapted,
            rtol=0,
            atol=1e-5 * scale,
            msg=described("merge_and_unload vs adapter"),
        )


# -------------------------------------------------------------------------------------- 6. pipeline ----
@pytest.mark.contract
def test_image_text_to_text_pipeline(tester, tmp_path):
    from PIL import Image
    from transformers import pipeline

    from slam_hf.processing_slam import train_bpe_tokenizer

    corpus = [f"the digit {d} is drawn in {c} on the left" for d in range(10) for c in ("red", "green", "blue")]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    model = fresh(tester, vocab_size=len(tokenizer))
    processor = SlamProcessor(SlamImageProcessor(size={"height": 8, "width": 8}, patch_size=4), tokenizer)
    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(12, 16, 3) * 255).astype("uint8")) for _ in range(2)]
    texts = ["which digit is <image> here", "<image> colour"]
    generate_kwargs = fixed_length(5)

    expected = []
    for image, text in zip(images, texts):  # one by one, without the cache: processor -> generate -> decode
        encoded = processor(images=[image], text=[text], return_tensors="pt")
        assert int((encoded["input_ids"] == tester.image_token_id).sum()) == 4  # one placeholder per patch
        answer = model.generate(**encoded, use_cache=False, **generate_kwargs)
        assert_context_sensitive(model, dict(encoded), answer, tester, what=text)
        answer = answer[0]
        assert answer.shape == (6,) and int(answer[0]) == model.config.decoder_start_token_id
        expected.append(tokenizer.decode(answer, skip_special_tokens=True))
    assert expected[0] != expected[1]

    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    for batch_size in (1, 2):  # the pipeline generates with the cache (as `generate()` passes it), padded batches
        results = pipe(
            images=images, text=texts, return_full_text=False, generate_kwargs=generate_kwargs, batch_size=batch_size
        )
        assert [result["generated_text"] for result in results] == expected, f"batch_size={batch_size}"
    assert [result["input_text"] for result in results] == texts
    full = pipe(images=images[0], text=texts[0], generate_kwargs=generate_kwargs)  # prompt + answer
    assert full[0]["generated_text"] == texts[0] + expected[0]

    # From a saved folder: AutoModelForImageTextToText and AutoProcessor resolve both halves.
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = pipeline("image-text-to-text", model=str(tmp_path))
    assert type(loaded.model) is type(model) and type(loaded.processor) is SlamProcessor
    results = loaded(images=images, text=texts, return_full_text=False, generate_kwargs=generate_kwargs)
    assert [result["generated_text"] for result in results] == expected


# ------------------------------------------------------------------------- 7. inputs_embeds + images ----
def test_inputs_embeds_with_pixel_values(tester, model):
    """`inputs_embeds` with `pixel_values`: the placeholders are where the embeddings equal the embedding of
    `image_token_id` (as transformers' image-text models locate them), so embedding the ids first changes nothing:
    trunk and head (with labels), a left-padded batch of image and text-only rows, and `generate`."""
    rows = tester.padding_rows((tester.seq_length, 7, 2))  # image, image, text only
    inputs, _ = tester.pad_rows(rows, "left")
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        embeds = embedding(inputs["input_ids"])
    embedded = {**{k: v for k, v in inputs.items() if k != "input_ids"}, "inputs_embeds": embeds}
    labels = tester.labels_for(model.__class__, inputs["decoder_input_ids"], generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    trunk = tester.base_model_class(tester.get_config()).eval()
    with torch.no_grad():
        # The comparison can fail: the images move the outputs (placeholders found, features placed).
        other_images = model(**{**embedded, "pixel_values": inputs["pixel_values"] + 1.0}).logits
        assert (other_images - model(**embedded).logits).abs().max() > 1e-3
        for name, run in (("trunk", trunk), ("head", model)):
            expected, actual = run(**inputs, output_hidden_states=True), run(**embedded, output_hidden_states=True)
            assert torch.equal(actual.encoder_hidden_states[0], expected.encoder_hidden_states[0]), name
            main = "last_hidden_state" if name == "trunk" else "logits"
            torch.testing.assert_close(
                getattr(actual, main), getattr(expected, main), rtol=0, atol=0, msg=described(f"{name} {main}")
            )
        # labels: the decoder inputs are the labels shifted right, and the loss is part of the output
        expected = model(**tester.encoder_part(inputs), labels=labels)
        actual = model(**tester.encoder_part(embedded), labels=labels)
        assert torch.equal(actual.loss, expected.loss) and torch.equal(actual.logits, expected.logits)
    generated = model.generate(**tester.encoder_part(inputs), **fixed_length(4))
    assert torch.equal(model.generate(**tester.encoder_part(embedded), **fixed_length(4)), generated)

    # Located placeholders that do not match the image features fail as with input_ids, naming `inputs_embeds`.
    fewer = inputs["input_ids"].clone()
    fewer[0, -tester.seq_length + tester.image_start] = tester.first_regular_token_id  # row 0: 3 placeholders
    with pytest.raises(
        ValueError,
        match=r"`inputs_embeds` hold 7 embeddings of the image placeholder token, but "
        r"`pixel_values` give 2 image\(s\) x 4 patches = 8 features",
    ):
        model(**{**embedded, "inputs_embeds": embedding(fewer)})
    with pytest.raises(
        ValueError,
        match=r"`inputs_embeds` hold 8 embeddings of the image placeholder token \(id 5\) "
        "but no `pixel_values`",
    ):
        model(**{**embedded, "pixel_values": None})


def test_padded_decoder_attention_mask_stays_causal(tester, model):
    """A `decoder_attention_mask` with padding keeps the decoder causal. (The v3 config says is_causal=False for its
    bidirectional encoder, and transformers' create_causal_mask then built a bidirectional decoder mask: every answer
    token saw the future ones as soon as the mask held a zero; torch.export, which always builds the mask, too.)"""
    from slam_common import different_token

    inputs = tester.model_inputs()
    answer = inputs["decoder_input_ids"]
    mask = torch.ones_like(answer)
    mask[1, -1] = 0  # row 1: the last answer token is padding
    with torch.no_grad():
        unpadded = model(**inputs).logits
        padded = model(**inputs, decoder_attention_mask=mask).logits
        future = answer.clone()
        future[:, -2] = different_token(future[:, -2], tester)
        changed = model(**{**inputs, "decoder_input_ids": future}, decoder_attention_mask=mask).logits
    torch.testing.assert_close(padded[0], unpadded[0], rtol=0, atol=0, msg=described("row without padding"))
    torch.testing.assert_close(
        padded[1, :-1], unpadded[1, :-1], rtol=0, atol=ATOL, msg=described("real positions of the padded row")
    )
    torch.testing.assert_close(
        changed[:, :-2], padded[:, :-2], rtol=0, atol=0, msg=described("positions before a changed future token")
    )
    assert (changed[:, -2] - padded[:, -2]).abs().max() > 1e-3
