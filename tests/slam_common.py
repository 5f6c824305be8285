"""Tests every SLAM variant must pass (the role of transformers' ModelTesterMixin + GenerationTesterMixin).

Test names follow the upstream mixins so a reader can map them one to one. Each test is parametrised
only by the tester (`model_tester_class`); a variant plugs in with a tester subclass (slam_tester.py)
and a test file holding

    class TestSlamV2Model(SlamModelTesterMixin):  # pytest only collects classes named Test*
        model_tester_class = SlamV2ModelTester

Tests that need a head the variant lacks (tester attribute set to None) are skipped.
Tolerances: reloads must be bit-identical (`torch.equal`); different kernels (eager/sdpa, cached vs
full forward) agree to 1e-5 on these tiny fp32 models.

Equivalence tests (cached vs uncached, step by step vs one forward, padded vs alone, beams, sampling) can only
fail on a model whose outputs depend on earlier tokens: a tiny model at transformers' default init (std 0.02)
repeats one token whatever its context, so a cache that drops the history passes them all (transformers 5.24
did exactly that to every SLAM model). The testers therefore build every model with a large init std
(`SlamModelTester.initializer_range`), and each equivalence test first asserts, with
`assert_context_sensitive`, that its model is context-sensitive. The cache is passed under both of its names
(`CACHE_ARGUMENTS`), and cached generation goes through `generate()` itself.

Inputs come from the tester as dicts (`tester.model_inputs()`, `tester.generation_inputs()`, ...), so the
same tests run on the decoder-only variants (v1, v2) and on the encoder-decoder SLAM v3
(`tester.is_encoder_decoder`: prompt + image for the encoder, answer tokens for the decoder, generation
head `conditional_generation_class`). Where the two kinds differ in structure (what the cache holds,
which side is causal, where hidden states come from), a test has one branch per kind.
"""

import importlib.util
import json
import math
import os
import re

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slam_hf.configuration_slam import AUTO_FACTORIES

ATOL = 1e-5
# The cache argument: "cache" since transformers 5.24, "past_key_values" before; SLAM forwards accept both.
CACHE_ARGUMENTS = ("cache", "past_key_values")


def load_script(path):
    """A script that is no module (benchmarks/*.py, scripts/*.py), imported from its path."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single_threaded_torch():
    """Generator for a fixture: run tiny-tensor tests on one intra-op thread, then restore the setting.

    For these shapes thread hand-offs cost more than they save, and on a busy 2-core machine OpenMP
    spin-waiting made `generate` ~40x slower (0.4 s vs 20 s).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def described(what):
    """`msg` for `torch.testing.assert_close`: `what` in front of torch's own report (greatest difference, where).

    Comparisons pass `rtol=0`: the tolerance is the absolute `atol` alone (ATOL unless stated).
    """
    return lambda report: f"{what}: {report}"


def output_cache(outputs):
    """The cache an output returns, under either name (the output field was renamed in transformers 5.24)."""
    cache = outputs.get("cache")
    return cache if cache is not None else outputs.get("past_key_values")


def assert_context_sensitive(model, inputs, sequence, tester, what="model"):
    """Fail unless `model` can tell a cache that keeps the history from one that drops it.

    `sequence` is what `model.generate(**inputs)` returned (prompt included for decoder-only models). Asserts that
    (1) every row depends on its early tokens: replacing the second token of the sequence (a prompt token, or for
    an encoder-decoder the first generated answer token) moves the next-token log-probabilities at the end by
    more than 0.05 nats; and (2) dropping the history changes greedy decoding: at some generated position, the
    next token after the whole history differs from the next token after that position's token alone (what a
    forward that loses its cache sees).
    """
    prompt = tester.prompt_sequence(inputs).shape[1]
    changed = sequence.clone()
    changed[:, 1] = different_token(sequence[:, 1], tester)
    with torch.no_grad():

        def next_logits(model_inputs, tokens):
            return model(**tester.with_sequence(model_inputs, tokens), use_cache=False).logits

        original = next_logits(inputs, sequence)[:, -1].log_softmax(-1)
        shift = (original - next_logits(inputs, changed)[:, -1].log_softmax(-1)).abs().amax(-1)
        with_history = next_logits(inputs, sequence[:, :-1])[:, prompt - 1 :].argmax(-1)  # (B, new tokens)
        steps = with_history.shape[1]
        alone = sequence[:, prompt - 1 : -1].reshape(-1, 1)  # each position's token on its own: (B * steps, 1)
        without_history = next_logits(tester.repeat_rows(inputs, steps), alone)[:, -1].argmax(-1)
    assert shift.min() > 0.05, (
        f"{what}: the last logits ignore an early token (shift {shift.tolist()}); "
        "equivalence tests on it cannot fail: build it with a larger init std"
    )
    assert (with_history.flatten() != without_history).any(), (
        f"{what}: greedy decoding picks the same tokens without the history ({sequence.tolist()}), so a cache "
        "that drops the history would go unnoticed: build it with a larger init std"
    )


def without_load_metadata(config_dict):
    return {k: v for k, v in config_dict.items() if k not in ("auto_map", "_name_or_path", "transformers_version")}


def rope_modules(model):
    """(name, module) of every RoPE module (the ones holding an `inv_freq` buffer)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]


def expected_inv_freq(head_dim, theta):
    """RoPE frequencies written out here, independently of the package: theta^(-2i/d)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (1.0 / theta**exponents).float()


def enable_checkpointing(model, use_reentrant=False):
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5.23
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model):
    new_name = "is_activation_checkpointing"  # transformers >= 5.23; the old name warns
    return getattr(model, new_name if hasattr(type(model), new_name) else "is_gradient_checkpointing")


def count_calls(module):
    """Attach a forward hook counting calls; returns (counter list, hook handle)."""
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def rows_of(inputs, rows):
    """The rows `rows` (a slice) of every input tensor (inputs with one image per row split by rows too)."""
    return {name: value[rows] for name, value in inputs.items()}


def different_token(tokens, tester):
    """A regular token id certainly different from each of `tokens`."""
    regular = tester.vocab_size - tester.first_regular_token_id
    return (tokens + 1 - tester.first_regular_token_id) % regular + tester.first_regular_token_id


class SlamModelTesterMixin:
    model_tester_class = None

    # ------------------------------------------------------------------ fixtures and helpers ----
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def single_threaded(cls):
        yield from single_threaded_torch()

    @pytest.fixture(scope="class")
    @classmethod
    def tester(cls):
        return cls.model_tester_class()

    @pytest.fixture(scope="class")
    @classmethod
    def saved_models(cls, tester, tmp_path_factory):
        """One fresh model per class, saved once and shared by the save/load family of tests.

        Returns {class: (folder, model in eval mode)}.
        """
        torch.manual_seed(0)
        saved = {}
        for model_class in tester.all_model_classes:
            model = model_class(tester.get_config()).eval()
            folder = tmp_path_factory.mktemp(model_class.__name__)
            model.save_pretrained(folder)
            saved[model_class] = (str(folder), model)
        return saved

    def auto_classes_for(self, tester, model_class):
        """The Auto factories that must load `model_class` from its checkpoint (by its class-name suffix, from the
        package's one class -> factory table)."""
        suffix = max((s for s in AUTO_FACTORIES if model_class.__name__.endswith(s)), key=len)
        return [getattr(transformers, factory) for factory in AUTO_FACTORIES[suffix]]

    def require(self, model_class, what):
        if model_class is None:
            pytest.skip(f"this variant has no {what}")

    def fresh_model(self, model_class, config):
        return model_class(config).eval()

    # ------------------------------------------------------------------------------- config ----
    def test_config_roundtrip(self, tester, tmp_path):
        config = tester.get_config(**tester.non_default_config_kwargs())
        as_dict = config.to_dict()
        assert tester.config_class.from_dict(as_dict).to_dict() == as_dict
        assert tester.config_class.from_dict(json.loads(config.to_json_string())).to_dict() == as_dict
        config.save_pretrained(tmp_path)
        for reloaded in (tester.config_class.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
            assert type(reloaded) is tester.config_class
            # Saving adds the remote-code entry and loading the source path; everything else is unchanged.
            assert reloaded.auto_map == {"AutoConfig": f"configuration_slam.{tester.config_class.__name__}"}
            assert without_load_metadata(reloaded.to_dict()) == without_load_metadata(as_dict)
            for name, value in tester.non_default_config_kwargs().items():
                actual = getattr(reloaded, name)
                if isinstance(value, dict):  # a sub-config (SLAM v3's vision_config) given as a dict
                    assert type(actual) is type(getattr(config, name)), name
                    actual = {key: getattr(actual, key) for key in value}
                assert actual == value, name

        for bad_kwargs, field in tester.bad_config_cases():
            with pytest.raises(ValueError, match=field):
                tester.get_config(**bad_kwargs)

    # ----------------------------------------------------------------------- save and load ----
    def test_save_load(self, tester, saved_models):
        inputs = tester.model_inputs()
        for model_class, (folder, model) in saved_models.items():
            files = set(os.listdir(folder))
            assert "model.safetensors" in files and "config.json" in files, files
            assert not [name for name in files if name.endswith(".bin")], f"pickle weights written: {files}"
            # weights readable like the config next to them (safetensors >= 0.8 alone writes 0o600)
            modes = {name: os.stat(os.path.join(folder, name)).st_mode & 0o777 for name in files}
            assert modes["model.safetensors"] == modes["config.json"], modes

            reference = tester.logits_of(model, **inputs)
            reloaded, info = model_class.from_pretrained(folder, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], info
            assert not reloaded.training, "from_pretrained must return a model in eval mode"
            assert torch.equal(tester.logits_of(reloaded, **inputs), reference), model_class.__name__

            for auto_class in self.auto_classes_for(tester, model_class):
                via_auto = auto_class.from_pretrained(folder)
                assert type(via_auto) is model_class, auto_class.__name__
                assert torch.equal(tester.logits_of(via_auto, **inputs), reference), auto_class.__name__

    def test_load_base_model_from_causal_lm_checkpoint(self, tester, saved_models):
        """AutoModel on a causal-LM (or encoder-decoder head) checkpoint strips the `model.` prefix and gives the
        same trunk."""
        self.require(tester.generative_class, "causal LM or conditional-generation head")
        self.require(tester.base_model_class, "base model")
        folder, head = saved_models[tester.generative_class]
        base, info = AutoModel.from_pretrained(folder, output_loading_info=True)
        assert type(base) is tester.base_model_class
        assert not info["missing_keys"], info
        inputs = tester.model_inputs()
        expected = head.base_model(**inputs).last_hidden_state
        assert torch.equal(base(**inputs).last_hidden_state, expected)

    def test_can_init_all_missing_weights(self, tester, saved_models, tmp_path):
        """After from_pretrained, buffers are rebuilt and weights missing from the file are initialised."""
        for model_class, (folder, model) in saved_models.items():
            reloaded = model_class.from_pretrained(folder)
            # Full state, non-persistent buffers (RoPE inv_freq) included.
            original_state = {**model.state_dict(), **dict(model.named_buffers())}
            reloaded_state = {**reloaded.state_dict(), **dict(reloaded.named_buffers())}
            assert original_state.keys() == reloaded_state.keys()
            for name, tensor in original_state.items():
                assert torch.equal(reloaded_state[name], tensor), f"{model_class.__name__}.{name} changed on reload"
            config = reloaded.config
            for name, module in rope_modules(reloaded):
                expected = expected_inv_freq(*tester.expected_rope(name, config))
                what = f"RoPE inv_freq of {name} after from_pretrained"
                torch.testing.assert_close(module.inv_freq, expected, rtol=0, atol=1e-6, msg=described(what))

        # Drop a projection and a norm from a checkpoint: they must be reported and freshly initialised.
        model_class = tester.all_model_classes[-1]
        folder, model = saved_models[model_class]
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as handle:
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
        dropped_linear = next(name for name in weights if name.endswith("q_proj.weight"))
        dropped_norm = next(name for name in weights if "norm" in name and name.endswith(".weight"))
        partial = {name: t for name, t in weights.items() if name not in (dropped_linear, dropped_norm)}
        for name in os.listdir(folder):
            if name not in ("model.safetensors", "checksums.json"):  # a hand-edited file: no save-time checksums
                with open(os.path.join(folder, name), "rb") as src, open(tmp_path / name, "wb") as dst:
                    dst.write(src.read())
        save_file(partial, tmp_path / "model.safetensors", metadata={"format": "pt"})

        # SLAM checkpoints load strictly: the error names the dropped keys ...
        with pytest.raises(ValueError, match="not in the checkpoint") as err:
            model_class.from_pretrained(tmp_path)
        assert dropped_linear in str(err.value) and dropped_norm in str(err.value)
        # ... and output_loading_info=True opts out: the lists come back, the gaps are initialised.
        reloaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
        assert {dropped_linear, dropped_norm} <= set(info["missing_keys"]), info["missing_keys"]
        state = reloaded.state_dict()
        new_linear = state[dropped_linear]
        assert torch.isfinite(new_linear).all()
        std = new_linear.std().item()
        target = reloaded.config.initializer_range
        assert 0.5 * target < std < 2 * target, f"re-initialised std {std:.4f}, expected ~{target}"
        assert torch.equal(state[dropped_norm], torch.ones_like(state[dropped_norm]))
        for name, tensor in partial.items():
            assert torch.equal(state[name], tensor), f"{name} was overwritten by initialisation"

    def test_tied_weights_keys(self, tester, saved_models, tmp_path):
        if not tester.lm_classes:
            pytest.skip("this variant has no language-model head")
        for model_class in tester.lm_classes:
            folder, _ = saved_models[model_class]
            with safe_open(os.path.join(folder, "model.safetensors"), "pt") as handle:
                keys = set(handle.keys())
            assert not any(key.startswith("lm_head") for key in keys), f"tied head saved twice: {sorted(keys)}"
            reloaded = model_class.from_pretrained(folder)
            assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight

            # Untied: both matrices are saved and stay separate after reload.
            untied = model_class(tester.get_config(tie_word_embeddings=False)).eval()
            assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
            untied.save_pretrained(tmp_path / model_class.__name__)
            with safe_open(str(tmp_path / model_class.__name__ / "model.safetensors"), "pt") as handle:
                assert "lm_head.weight" in set(handle.keys())
            reloaded = model_class.from_pretrained(tmp_path / model_class.__name__)
            assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
            assert torch.equal(reloaded.lm_head.weight, untied.lm_head.weight)

    # ----------------------------------------------------------------------- model outputs ----
    def test_model_get_set_embeddings(self, tester):
        config = tester.get_config()
        inputs = tester.model_inputs(text_only=True)
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            embeddings = model.get_input_embeddings()
            assert isinstance(embeddings, nn.Embedding)
            assert embeddings.weight.shape == (config.vocab_size, config.hidden_size)
            before = tester.logits_of(model, **inputs)

            replacement = nn.Embedding(config.vocab_size, config.hidden_size)
            model.set_input_embeddings(replacement)
            assert model.get_input_embeddings() is replacement
            after = tester.logits_of(model, **inputs)
            assert not torch.allclose(after, before), "the new input embeddings are not used"
            torch.testing.assert_close(
                after, tester.logits_of(model, **tester.embedded(model, inputs, replacement)), rtol=0, atol=ATOL
            )

            output_embeddings = model.get_output_embeddings()
            if model_class in tester.lm_classes:
                assert isinstance(output_embeddings, nn.Linear)
                assert output_embeddings.out_features == config.vocab_size
            else:
                assert output_embeddings is None

        for model_class in tester.lm_classes:  # resizing keeps the head tied and usable
            model = self.fresh_model(model_class, tester.get_config())
            model.resize_token_embeddings(config.vocab_size + 5)
            assert model.config.vocab_size == config.vocab_size + 5
            assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
            logits = model(**inputs).logits
            assert logits.shape[-1] == config.vocab_size + 5

    def test_inputs_embeds_matches_input_ids(self, tester):
        config = tester.get_config()
        inputs = tester.model_inputs(text_only=True)  # embeddings cannot carry image placeholders
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            torch.testing.assert_close(
                tester.logits_of(model, **tester.embedded(model, inputs)),
                tester.logits_of(model, **inputs),
                rtol=0,
                atol=0,
                msg=described(model_class.__name__),
            )

    def test_return_dict_and_config_defaults(self, tester):
        """`return_dict=False` (argument or config) returns the output's fields as a tuple; `output_hidden_states`
        set in the config applies when the argument is not given, as in transformers' own models."""
        inputs = tester.model_inputs()
        hidden_field = "decoder_hidden_states" if tester.is_encoder_decoder else "hidden_states"
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, tester.get_config())
            expected = model(**inputs)
            by_argument = model(**inputs, return_dict=False)
            model.config.return_dict = False
            by_config = model(**inputs)
            assert type(model(**inputs, return_dict=True)) is type(expected)  # the argument wins
            for as_tuple in (by_argument, by_config):
                assert type(as_tuple) is tuple, f"{model_class.__name__}: {type(as_tuple).__name__}"
                assert len(as_tuple) == len(expected.to_tuple())
                for got, want in zip(as_tuple, expected.to_tuple()):
                    if isinstance(want, torch.Tensor):
                        assert torch.equal(got, want), model_class.__name__

            model.config.return_dict = True
            assert getattr(expected, hidden_field) is None
            model.config.output_hidden_states = True
            from_config = getattr(model(**inputs), hidden_field)
            assert from_config is not None, f"{model_class.__name__} ignores config.output_hidden_states"
            assert getattr(model(**inputs, output_hidden_states=False), hidden_field) is None

    def test_unknown_keyword_arguments_raise(self, tester):
        """A keyword argument no layer consumes is an error naming it, never silently dropped (a renamed cache
        argument once went unnoticed that way); the cache under both names at once is an error too."""
        inputs = tester.model_inputs()
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, tester.get_config())
            with pytest.raises(TypeError, match="cache_params"):
                model(**inputs, cache_params=None)
            with pytest.raises(TypeError, match="token_typ_ids"):
                model(**inputs, token_typ_ids=None)
            if model_class is tester.generative_class:
                cache = output_cache(model(**inputs, use_cache=True))
                with pytest.raises(TypeError, match="both `cache` and `past_key_values`"):
                    model(**inputs, cache=cache, past_key_values=cache)
            if model_class in tester.classes_with_labels:  # Trainer's loss kwarg is consumed by the loss
                labelled = tester.training_inputs(model_class, inputs)
                assert torch.isfinite(model(**labelled, num_items_in_batch=torch.tensor(7)).loss)
            else:
                with pytest.raises(TypeError, match="num_items_in_batch"):
                    model(**inputs, num_items_in_batch=torch.tensor(7))

    def test_hidden_states_output(self, tester):
        if tester.is_encoder_decoder:
            return self.check_encoder_decoder_hidden_states(tester)
        config = tester.get_config()
        input_ids = tester.input_ids()
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            outputs = model(input_ids=input_ids, output_hidden_states=True)
            hidden_states = outputs.hidden_states
            assert len(hidden_states) == tester.expected_num_hidden_states(config), model_class.__name__
            for state in hidden_states:
                assert state.shape == (*input_ids.shape, config.hidden_size)
            trunk = model.base_model
            if config.position_embedding_type != "learned":
                assert torch.equal(hidden_states[0], trunk.get_input_embeddings()(input_ids))
            # Each entry is the output of one layer: consecutive entries differ.
            for earlier, later in zip(hidden_states, hidden_states[1:]):
                assert not torch.allclose(earlier, later)
            if getattr(trunk, "norm", None) is not None:  # the last entry is taken before the final norm
                last_hidden_state = trunk(input_ids=input_ids).last_hidden_state
                torch.testing.assert_close(trunk.norm(hidden_states[-1]), last_hidden_state, rtol=0, atol=1e-6)
            assert model(input_ids=input_ids).hidden_states is None

    def check_encoder_decoder_hidden_states(self, tester):
        """Decoder: the embedded answer, then one entry per layer, the last before the final norm. Encoder: the
        embedded joint sequence, the fusion output, the memory (= encoder_last_hidden_state)."""
        config = tester.get_config()
        inputs = tester.model_inputs(text_only=True)  # the first encoder entry is then the token embeddings
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            trunk = model.base_model
            outputs = model(**inputs, output_hidden_states=True)
            embed = trunk.get_input_embeddings()

            decoder_states = outputs.decoder_hidden_states
            assert len(decoder_states) == tester.expected_num_hidden_states(config), model_class.__name__
            for state in decoder_states:
                assert state.shape == (*inputs["decoder_input_ids"].shape, config.hidden_size)
            assert torch.equal(decoder_states[0], embed(inputs["decoder_input_ids"]))
            for earlier, later in zip(decoder_states, decoder_states[1:]):
                assert not torch.allclose(earlier, later)
            last_hidden_state = trunk(**inputs).last_hidden_state
            torch.testing.assert_close(
                trunk.get_decoder().norm(decoder_states[-1]), last_hidden_state, rtol=0, atol=1e-6
            )

            encoder_states = outputs.encoder_hidden_states
            assert len(encoder_states) == tester.expected_num_encoder_hidden_states(config), model_class.__name__
            for state in encoder_states:
                assert state.shape == (*inputs["input_ids"].shape, config.hidden_size)
            assert torch.equal(encoder_states[0], embed(inputs["input_ids"]))
            assert torch.equal(encoder_states[-1], outputs.encoder_last_hidden_state)
            for earlier, later in zip(encoder_states, encoder_states[1:]):
                assert not torch.allclose(earlier, later)

            plain = model(**inputs)
            assert plain.decoder_hidden_states is None and plain.encoder_hidden_states is None

    def test_eager_matches_sdpa_inference(self, tester, saved_models):
        rows = tester.padding_rows((tester.seq_length, 5, tester.seq_length - 2))
        left_inputs, left_mask = tester.pad_rows(rows, "left")
        right_inputs, right_mask = tester.pad_rows(rows, "right")
        cases = [
            ("no padding", tester.model_inputs(), None),
            ("left padding", left_inputs, left_mask),
            ("right padding", right_inputs, right_mask),
        ]
        for model_class, (folder, _) in saved_models.items():
            eager = model_class.from_pretrained(folder, attn_implementation="eager")
            sdpa = model_class.from_pretrained(folder, attn_implementation="sdpa")
            assert eager.config._attn_implementation == "eager"
            assert sdpa.config._attn_implementation == "sdpa"
            for name, inputs, mask in cases:
                eager_out = tester.logits_of(eager, **inputs)
                sdpa_out = tester.logits_of(sdpa, **inputs)
                if mask is not None and eager_out.dim() == 3:  # per-token outputs: padding is garbage
                    eager_out, sdpa_out = eager_out[mask.bool()], sdpa_out[mask.bool()]
                torch.testing.assert_close(
                    eager_out,
                    sdpa_out,
                    rtol=0,
                    atol=ATOL,
                    msg=described(f"{model_class.__name__} eager vs sdpa, {name}"),
                )

    # ---------------------------------------------------------------- causal LM and cache ----
    @pytest.mark.contract
    @pytest.mark.parametrize("cache_argument", CACHE_ARGUMENTS)
    def test_past_key_values_equivalence(self, tester, saved_models, cache_argument):
        """Decoding in steps through a cache passed by hand (under either argument name) equals one full forward."""
        self.require(tester.generative_class, "causal LM or conditional-generation head")
        if tester.is_encoder_decoder:
            return self.check_decoder_cache_equivalence(
                tester, saved_models[tester.generative_class][1], cache_argument
            )
        _, model = saved_models[tester.causal_lm_class]
        input_ids = tester.input_ids()
        length = input_ids.shape[1]
        full = model(input_ids=input_ids, use_cache=False).logits
        sequence = model.generate(input_ids=input_ids[:, :9], do_sample=False, **self.generation_kwargs(model, 6))
        assert_context_sensitive(model, {"input_ids": input_ids[:, :9]}, sequence, tester)

        def run_in_chunks(chunk_sizes, attention_mask=None):
            cache, logits, done = DynamicCache(config=model.config), [], 0
            for size in chunk_sizes:
                inputs = {"input_ids": input_ids[:, done : done + size], cache_argument: cache, "use_cache": True}
                if attention_mask is not None:
                    inputs["attention_mask"] = attention_mask[:, : done + size]
                outputs = model(**inputs)
                assert output_cache(outputs) is cache
                logits.append(outputs.logits)
                done += size
            assert cache.get_seq_length() == length
            return torch.cat(logits, dim=1)

        prefill = 5
        token_by_token = [prefill] + [1] * (length - prefill)
        torch.testing.assert_close(
            run_in_chunks(token_by_token),
            full,
            rtol=0,
            atol=ATOL,
            msg=described("prefill + token-by-token vs full forward"),
        )
        torch.testing.assert_close(
            run_in_chunks([1] * length), full, rtol=0, atol=ATOL, msg=described("one token at a time vs full forward")
        )
        chunks = [7, 3, 1, length - 11]  # chunk borders fall inside windows
        torch.testing.assert_close(
            run_in_chunks(chunks), full, rtol=0, atol=ATOL, msg=described("chunked prefill vs full forward")
        )
        mask = torch.ones_like(input_ids)
        torch.testing.assert_close(
            run_in_chunks(token_by_token, mask),
            full,
            rtol=0,
            atol=ATOL,
            msg=described("with an explicit attention mask"),
        )

        # Left-padded batch, decoded one token at a time, against the padded full forward.
        rows = [input_ids[0], input_ids[1, :9]]
        padded_ids, padded_mask = tester.left_padded_batch(rows)
        padded_full = model(input_ids=padded_ids, attention_mask=padded_mask, use_cache=False).logits
        cache, steps = DynamicCache(config=model.config), []
        start = padded_ids.shape[1] - 4
        for begin, end in [(0, start)] + [(t, t + 1) for t in range(start, padded_ids.shape[1])]:
            inputs = {
                "input_ids": padded_ids[:, begin:end],
                "attention_mask": padded_mask[:, :end],
                cache_argument: cache,
            }
            steps.append(model(**inputs).logits)
        stepped = torch.cat(steps, dim=1)
        real = padded_mask.bool()
        torch.testing.assert_close(
            stepped[real],
            padded_full[real],
            rtol=0,
            atol=ATOL,
            msg=described("left-padded incremental decoding vs full forward"),
        )

    def check_decoder_cache_equivalence(self, tester, model, cache_argument):
        """Encoder-decoder: the answer decoded in chunks through an EncoderDecoderCache equals one full forward."""
        inputs = tester.model_inputs()
        decoder_ids = inputs.pop("decoder_input_ids")
        length = decoder_ids.shape[1]
        sequence = model.generate(**inputs, do_sample=False, **self.generation_kwargs(model, 6))
        assert_context_sensitive(model, inputs, sequence, tester)

        def run_in_chunks(encoder_inputs, chunk_sizes, decoder_mask=None, reuse_encoder_outputs=True):
            if reuse_encoder_outputs:  # as generate does: the encoder runs once, its outputs are passed back
                encoder_outputs = model.get_encoder()(**encoder_inputs)
                mask = encoder_inputs.get("attention_mask")
                encoder_inputs = {"encoder_outputs": encoder_outputs, "attention_mask": mask}
            cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
            logits, done = [], 0
            for size in chunk_sizes:
                step = {
                    "decoder_input_ids": decoder_ids[:, done : done + size],
                    cache_argument: cache,
                    "use_cache": True,
                }
                if decoder_mask is not None:
                    step["decoder_attention_mask"] = decoder_mask[:, : done + size]
                outputs = model(**encoder_inputs, **step)
                assert output_cache(outputs) is cache
                logits.append(outputs.logits)
                done += size
            assert cache.get_seq_length() == length
            return torch.cat(logits, dim=1)

        full = model(**inputs, decoder_input_ids=decoder_ids, use_cache=False).logits
        prefill = 3
        token_by_token = [prefill] + [1] * (length - prefill)
        stepped = run_in_chunks(inputs, token_by_token, reuse_encoder_outputs=False)
        torch.testing.assert_close(
            stepped,
            full,
            rtol=0,
            atol=ATOL,
            msg=described("prefill + token-by-token (encoder inputs every step) vs full forward"),
        )
        torch.testing.assert_close(
            run_in_chunks(inputs, token_by_token),
            full,
            rtol=0,
            atol=ATOL,
            msg=described("prefill + token-by-token vs full forward"),
        )
        torch.testing.assert_close(
            run_in_chunks(inputs, [1] * length),
            full,
            rtol=0,
            atol=ATOL,
            msg=described("one token at a time vs full forward"),
        )
        chunks = [3, 1, 2, length - 6]
        torch.testing.assert_close(
            run_in_chunks(inputs, chunks), full, rtol=0, atol=ATOL, msg=described("chunked vs full forward")
        )
        mask = torch.ones_like(decoder_ids)
        torch.testing.assert_close(
            run_in_chunks(inputs, token_by_token, mask),
            full,
            rtol=0,
            atol=ATOL,
            msg=described("with an explicit decoder mask"),
        )

        # Left-padded encoder prompts: the memory mask must hide the padding in every decoding step.
        rows = tester.padding_rows((tester.seq_length, 9))
        padded, _ = tester.pad_rows(rows, "left")
        decoder_ids = padded.pop("decoder_input_ids")
        padded_full = model(**padded, decoder_input_ids=decoder_ids, use_cache=False).logits
        stepped = run_in_chunks(padded, [1] * length)
        torch.testing.assert_close(
            stepped,
            padded_full,
            rtol=0,
            atol=ATOL,
            msg=described("left-padded prompt, token-by-token decoding vs full forward"),
        )

    def test_causal_lm_future_independence(self, tester, saved_models):
        self.require(tester.generative_class, "causal LM or conditional-generation head")
        if tester.is_encoder_decoder:
            return self.check_decoder_causality(tester, saved_models[tester.generative_class][0])
        folder, _ = saved_models[tester.causal_lm_class]
        t = tester.seq_length // 2
        input_ids = tester.input_ids()
        changed = input_ids.clone()
        changed[:, t + 1 :] = tester.input_ids(seq_length=tester.seq_length - t - 1)
        changed[:, t + 1] = different_token(input_ids[:, t + 1], tester)
        for implementation in ("sdpa", "eager"):
            model = tester.causal_lm_class.from_pretrained(folder, attn_implementation=implementation)
            logits = model(input_ids=input_ids).logits
            changed_logits = model(input_ids=changed).logits
            what = f"logits up to the change ({implementation})"
            torch.testing.assert_close(
                changed_logits[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6, msg=described(what)
            )
            assert (changed_logits[:, t + 1 :] - logits[:, t + 1 :]).abs().amax(-1).min() > 1e-4, (
                "a later position did not react to its own input"
            )

            # Gradient version: no path at all from a future input to the logits at t (exact zeros).
            embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
            model(inputs_embeds=embeds).logits[:, t].sum().backward()
            assert torch.count_nonzero(embeds.grad[:, t + 1 :]) == 0, f"future tokens leak into position {t}"
            assert embeds.grad[:, : t + 1].abs().sum(-1).min() > 0, "some past token does not influence position t"

    def check_decoder_causality(self, tester, folder):
        """Encoder-decoder: decoder position t sees answer tokens <= t only (the encoder side is bidirectional)."""
        inputs = tester.model_inputs()
        decoder_ids = inputs["decoder_input_ids"]
        t = decoder_ids.shape[1] // 2
        changed = decoder_ids.clone()
        changed[:, t + 1 :] = tester.input_ids(seq_length=decoder_ids.shape[1] - t - 1)
        changed[:, t + 1] = different_token(decoder_ids[:, t + 1], tester)
        for implementation in ("sdpa", "eager"):
            model = tester.generative_class.from_pretrained(folder, attn_implementation=implementation)
            logits = model(**inputs).logits
            changed_logits = model(**{**inputs, "decoder_input_ids": changed}).logits
            what = f"decoder logits up to the change ({implementation})"
            torch.testing.assert_close(
                changed_logits[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6, msg=described(what)
            )
            assert (changed_logits[:, t + 1 :] - logits[:, t + 1 :]).abs().amax(-1).min() > 1e-4, (
                "a later decoder position did not react to its own input"
            )

            embeds = model.get_input_embeddings()(decoder_ids).detach().requires_grad_(True)
            encoder_inputs = {name: value for name, value in inputs.items() if name != "decoder_input_ids"}
            model(**encoder_inputs, decoder_inputs_embeds=embeds).logits[:, t].sum().backward()
            assert torch.count_nonzero(embeds.grad[:, t + 1 :]) == 0, f"future answer tokens leak into position {t}"
            assert embeds.grad[:, : t + 1].abs().sum(-1).min() > 0, "some past answer token does not influence t"

    def test_bidirectional_heads_see_the_future(self, tester, saved_models):
        """The masked-LM / classifier trunk (an encoder-decoder's encoder) is bidirectional: later tokens change
        earlier outputs."""
        if tester.is_encoder_decoder:
            _, model = saved_models[tester.generative_class]
            inputs = tester.model_inputs()
            changed = inputs["input_ids"].clone()
            changed[:, -1] = different_token(changed[:, -1], tester)
            memory = model(**inputs).encoder_last_hidden_state
            changed_memory = model(**{**inputs, "input_ids": changed}).encoder_last_hidden_state
            difference = (changed_memory - memory).abs().amax(-1)
            assert difference[:, 0].min() > 1e-5, "the first prompt token ignores the last one in the encoder"
            return
        self.require(tester.masked_lm_class, "masked LM head")
        _, model = saved_models[tester.masked_lm_class]
        input_ids = tester.input_ids()
        changed = input_ids.clone()
        changed[:, -1] = different_token(input_ids[:, -1], tester)
        difference = (model(input_ids=changed).logits - model(input_ids=input_ids).logits).abs().amax(-1)
        assert difference[:, 0].min() > 1e-5, "the first token ignores the last one in a bidirectional model"

    def check_padded_rows_match_unpadded(self, tester, model_class, model, positions):
        """Each row of a left- or right-padded batch gives the outputs of the row run alone."""
        rows = tester.padding_rows((tester.seq_length, 9, 1, tester.seq_length - 4))
        for side in ("left", "right"):
            padded_inputs, mask = tester.pad_rows(rows, side)
            padded = tester.logits_of(model, **padded_inputs)
            for i, row in enumerate(rows):
                alone = tester.logits_of(model, **row)[0]
                ours = padded[i][mask[i].bool()] if mask is not None and padded.dim() == 3 else padded[i]
                length = row["input_ids"].shape[1]
                what = f"{model_class.__name__} ({positions}) {side}-padded row {i} (length {length})"
                torch.testing.assert_close(ours, alone, rtol=0, atol=ATOL, msg=described(what))

    def check_left_padded_generation(self, tester, model):
        """generate on a left-padded batch gives each row the tokens it gets alone."""
        rows = tester.padding_rows((5, 11, 8), decoder=False)
        inputs, _ = tester.pad_rows(rows, "left")
        prompt = tester.prompt_sequence(inputs).shape[1]
        kwargs = dict(do_sample=False, **self.generation_kwargs(model, 6))
        batched = model.generate(**inputs, **kwargs)
        for i, row in enumerate(rows):
            alone = model.generate(**row, **kwargs)
            if i == 1:  # the longest prompt
                assert_context_sensitive(model, row, alone, tester, what=f"row {i}")
            alone = alone[0]
            what = f"row {i} ({model.config.position_embedding_type} positions)"
            assert torch.equal(batched[i, prompt:], alone[tester.prompt_sequence(row).shape[1] :]), what

    def test_left_padding_compatibility(self, tester, saved_models):
        # RoPE only sees relative positions, so a padding shift would go unnoticed with it;
        # test_learned_absolute_positions repeats this with absolute positions.
        for model_class, (_, model) in saved_models.items():
            self.check_padded_rows_match_unpadded(tester, model_class, model, model.config.position_embedding_type)

    def test_learned_absolute_positions(self, tester, saved_models):
        """Learned absolute positions: padding must not shift them (every row counts its positions from its first
        real token), in a forward and in generate, and inputs beyond the table fail clearly."""
        if not tester.supports_learned_positions:
            pytest.skip("no learned position table in this variant (SLAM v3: RoPE or none; config rejects 'learned')")
        learned = tester.get_config(position_embedding_type="learned")
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, learned)
            self.check_padded_rows_match_unpadded(tester, model_class, model, "learned")
        if tester.generative_class is not None:
            self.check_left_padded_generation(tester, self.fresh_model(tester.generative_class, learned))

        limit = 16
        learned = tester.get_config(position_embedding_type="learned", max_position_embeddings=limit)
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, learned)
            model(input_ids=tester.input_ids(seq_length=limit))  # exactly at the limit is fine
            with pytest.raises(ValueError, match="max_position_embeddings"):
                model(input_ids=tester.input_ids(seq_length=limit + 1))
        if tester.causal_lm_class is not None:  # also when the limit is crossed while decoding
            model = self.fresh_model(tester.causal_lm_class, learned)
            cache = output_cache(model(input_ids=tester.input_ids(seq_length=limit - 2), use_cache=True))
            with pytest.raises(ValueError, match="max_position_embeddings"):
                model(input_ids=tester.input_ids(seq_length=3), cache=cache, use_cache=True)

    # ----------------------------------------------------------------------------- generate ----
    def generation_kwargs(self, model, new_tokens):
        # Suppress EOS so every run has exactly `new_tokens` tokens and runs are comparable.
        return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=model.config.pad_token_id)

    @pytest.mark.contract
    def test_generate_greedy(self, tester, saved_models):
        self.require(tester.generative_class, "generation head")
        _, model = saved_models[tester.generative_class]
        inputs, new_tokens = tester.generation_inputs(seq_length=9), 8  # generation crosses window borders
        kwargs = self.generation_kwargs(model, new_tokens)
        with_cache = model.generate(**inputs, do_sample=False, use_cache=True, **kwargs)
        without_cache = model.generate(**inputs, do_sample=False, use_cache=False, **kwargs)
        assert_context_sensitive(model, inputs, without_cache, tester)
        prompt = tester.prompt_sequence(inputs)
        assert with_cache.shape == (prompt.shape[0], prompt.shape[1] + new_tokens)
        assert torch.equal(with_cache, without_cache)

        # Greedy decoding written out: argmax of a full forward at every step.
        sequence = prompt
        for _ in range(new_tokens):
            logits = model(**tester.with_sequence(inputs, sequence), use_cache=False).logits[:, -1]
            logits[:, model.config.eos_token_id] = -math.inf
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(with_cache, sequence)

    @pytest.mark.contract
    @pytest.mark.contract
    def test_generate_cache_implementations(self, tester, saved_models):
        """The dynamic cache by name equals uncached decoding; a static cache is refused at the first forward with
        an error that says why and what to use (README, Compatibility)."""
        self.require(tester.generative_class, "generation head")
        _, model = saved_models[tester.generative_class]
        inputs = tester.generation_inputs(seq_length=9)
        kwargs = dict(do_sample=False, **self.generation_kwargs(model, 6))
        without_cache = model.generate(**inputs, use_cache=False, **kwargs)
        assert torch.equal(model.generate(**inputs, cache_implementation="dynamic", **kwargs), without_cache)
        with pytest.raises(ValueError, match="do not support a static cache.*cache_implementation='dynamic'"):
            model.generate(**inputs, cache_implementation="static", **kwargs)

    @pytest.mark.contract
    def test_generate_sample(self, tester, saved_models):
        self.require(tester.generative_class, "generation head")
        _, model = saved_models[tester.generative_class]
        inputs = tester.generation_inputs(seq_length=9)
        kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, **self.generation_kwargs(model, 8))
        torch.manual_seed(1)
        with_cache = model.generate(**inputs, use_cache=True, **kwargs)
        torch.manual_seed(1)
        without_cache = model.generate(**inputs, use_cache=False, **kwargs)
        assert_context_sensitive(model, inputs, without_cache, tester)
        torch.manual_seed(2)
        other_seed = model.generate(**inputs, use_cache=True, **kwargs)
        assert torch.equal(with_cache, without_cache)
        assert not torch.equal(with_cache, other_seed), "sampling ignores the random seed"
        prompt = tester.prompt_sequence(inputs)
        assert torch.equal(with_cache[:, : prompt.shape[1]], prompt)

    @pytest.mark.contract
    def test_generate_beam_search(self, tester, saved_models):
        self.require(tester.generative_class, "generation head")
        _, model = saved_models[tester.generative_class]
        inputs, new_tokens = tester.generation_inputs(seq_length=7), 6
        # length_penalty=0 makes the beam score the plain sum of token log-probabilities.
        kwargs = dict(
            num_beams=3,
            num_return_sequences=2,
            do_sample=False,
            length_penalty=0.0,
            output_scores=True,
            return_dict_in_generate=True,
            **self.generation_kwargs(model, new_tokens),
        )
        with_cache = model.generate(**inputs, use_cache=True, **kwargs)
        without_cache = model.generate(**inputs, use_cache=False, **kwargs)
        assert_context_sensitive(model, tester.repeat_rows(inputs, 2), without_cache.sequences, tester)
        sequences = with_cache.sequences
        batch, prompt = tester.prompt_sequence(inputs).shape
        assert sequences.shape == (batch * 2, prompt + new_tokens)
        assert torch.equal(sequences, without_cache.sequences)

        # Recompute each returned beam's score with one full forward.
        beam_inputs = tester.with_sequence(tester.repeat_rows(inputs, 2), sequences)
        log_probs = model(**beam_inputs, use_cache=False).logits.log_softmax(-1)
        chosen = log_probs[:, prompt - 1 : -1].gather(-1, sequences[:, prompt:, None]).squeeze(-1)
        torch.testing.assert_close(
            chosen.sum(-1),
            with_cache.sequences_scores.to(chosen.dtype),
            rtol=0,
            atol=1e-4,
            msg=described("beam scores"),
        )
        # Returned beams are sorted best first, and distinct.
        scores = with_cache.sequences_scores.view(batch, 2)
        assert (scores[:, 0] >= scores[:, 1]).all()
        assert not torch.equal(sequences[0], sequences[1])

    @pytest.mark.contract
    def test_generate_left_padded_batch(self, tester, saved_models):
        self.require(tester.generative_class, "generation head")
        self.check_left_padded_generation(tester, saved_models[tester.generative_class][1])

    @pytest.mark.contract
    def test_generate_from_inputs_embeds(self, tester, saved_models):
        self.require(tester.generative_class, "generation head")
        _, model = saved_models[tester.generative_class]
        inputs = tester.generation_inputs(seq_length=9, text_only=True)
        kwargs = dict(do_sample=False, **self.generation_kwargs(model, 6))
        from_ids = model.generate(**inputs, **kwargs)
        embedded = tester.embedded(model, inputs)
        from_embeds = model.generate(**embedded, **kwargs)
        # A decoder-only model returns only the new tokens (it has no prompt ids); an encoder-decoder returns the
        # decoder sequence either way.
        prompt_ids, embeds_prompt = tester.prompt_sequence(inputs), tester.prompt_sequence(embedded)
        new_tokens = from_ids.shape[1] - prompt_ids.shape[1]
        assert from_embeds.shape == (from_ids.shape[0], embeds_prompt.shape[1] + new_tokens)
        assert torch.equal(from_embeds[:, : embeds_prompt.shape[1]], embeds_prompt)
        assert torch.equal(from_embeds[:, embeds_prompt.shape[1] :], from_ids[:, prompt_ids.shape[1] :])

    @pytest.mark.contract
    def test_prompt_lookup_decoding_matches_greedy_search(self, tester, saved_models):
        """Candidate tokens are verified in chunks and rejected ones cropped from the cache."""
        self.require(tester.generative_class, "generation head")
        _, model = saved_models[tester.generative_class]
        inputs = tester.repetitive_generation_inputs()  # repeats, so the lookup proposes candidates
        kwargs = dict(do_sample=False, **self.generation_kwargs(model, 8))
        greedy = model.generate(**inputs, **kwargs)
        assert torch.equal(model.generate(**inputs, prompt_lookup_num_tokens=3, **kwargs), greedy)

    # ----------------------------------------------------------------------------- training ----
    def loss_and_grads(self, model, inputs):
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    @pytest.mark.parametrize("use_reentrant", [False, True])
    def test_training_gradient_checkpointing(self, tester, use_reentrant):
        """Both of torch's checkpoint implementations (reentrant: every output of a checkpointed layer must be a
        tensor it computed, or the backward replay never runs) give the plain model's loss and gradients."""
        model_inputs = tester.model_inputs()
        for model_class in tester.classes_with_labels:
            plain = model_class(tester.get_config()).train()
            checkpointed = model_class(tester.get_config()).train()  # own config: enabling must not leak
            checkpointed.load_state_dict(plain.state_dict())
            enable_checkpointing(checkpointed, use_reentrant)
            assert is_checkpointing(checkpointed)

            inputs = tester.training_inputs(model_class, model_inputs)
            loss, grads = self.loss_and_grads(plain, inputs)
            # transformers checkpoints `forward` (hooks stay outside), so count linear layers inside checkpointed
            # layers: each must run twice (forward + recomputation in backward).
            names = {module: name for name, module in checkpointed.named_modules()}
            counters = [(names[linear], *count_calls(linear)) for linear in tester.checkpointed_linears(checkpointed)]
            checkpointed_loss, checkpointed_grads = self.loss_and_grads(checkpointed, inputs)
            for name, calls, handle in counters:
                handle.remove()
                assert len(calls) == 2, f"{name}: expected forward + recomputation in backward, got {len(calls)} calls"

            assert torch.equal(checkpointed_loss, loss)
            assert grads.keys() == checkpointed_grads.keys()
            assert len(grads) == len(list(plain.parameters()))
            for name, grad in grads.items():
                torch.testing.assert_close(
                    checkpointed_grads[name],
                    grad,
                    rtol=0,
                    atol=1e-6,
                    msg=described(f"{model_class.__name__} grad of {name}"),
                )

    def test_loss_kwargs_gradient_accumulation(self, tester):
        """HF_GUIDE §7: with `num_items_in_batch`, summed micro-batch losses equal the big-batch loss."""
        token_classes = [(cls, cls is tester.causal_lm_class) for cls in tester.lm_classes]
        if not token_classes:
            pytest.skip("this variant has no token-level loss")
        inputs, tokens = tester.label_tokens(tester.model_inputs(batch_size=4))
        labels = tokens.clone()
        # Very uneven numbers of labelled tokens per micro-batch, so a mean of means would be wrong.
        labels[0, 3:] = -100
        labels[1, :] = -100
        labels[1, 5] = tokens[1, 5]
        labels[3, ::2] = -100
        halves = (slice(0, 2), slice(2, 4))
        for model_class, shifts in token_classes:
            model = model_class(tester.get_config(**tester.exact_loss_config_kwargs())).train()
            counted = labels[:, 1:] if shifts else labels
            num_items = torch.tensor(int((counted != -100).sum()))
            big_loss, big_grads = self.loss_and_grads(model, dict(**inputs, labels=labels))

            model.zero_grad()
            micro_losses = []
            for rows in halves:
                micro = rows_of(inputs, rows)
                loss = model(**micro, labels=labels[rows], num_items_in_batch=num_items).loss
                loss.backward()
                micro_losses.append(loss.detach())
            torch.testing.assert_close(
                sum(micro_losses), big_loss, rtol=0, atol=1e-6, msg=described("summed micro-batch losses")
            )
            for name, param in model.named_parameters():
                torch.testing.assert_close(
                    param.grad, big_grads[name], rtol=0, atol=1e-6, msg=described(f"accumulated grad of {name}")
                )

            mean_of_means = sum(model(**rows_of(inputs, r), labels=labels[r]).loss.detach() for r in halves) / 2
            assert (mean_of_means - big_loss).abs() > 1e-3, "test data too even to tell the two losses apart"

    # peft itself still reads the deprecated `is_gradient_checkpointing` property.
    @pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
    def test_peft_lora_wrap(self, tester):
        peft = pytest.importorskip("peft")
        inputs = tester.model_inputs()
        # The tester's targets (q/v; SLAM v3 adds a regex on decoder projections) on every class; "all-linear"
        # (whose name resolution skips the output head) on one.
        all_linear_class = tester.generative_class or tester.all_model_classes[0]
        cases = [(cls, targets) for targets in tester.lora_target_cases() for cls in tester.all_model_classes]
        cases += [(all_linear_class, "all-linear")]
        for model_class, target_modules in cases:
            model = self.fresh_model(model_class, tester.get_config())
            reference = tester.logits_of(model, **inputs)
            if target_modules == "all-linear":
                head = model.get_output_embeddings()
                expected = sum(isinstance(m, nn.Linear) and m is not head for m in model.modules())
            elif isinstance(target_modules, str):  # a regex, matched against the full module name
                expected = sum(re.fullmatch(target_modules, name) is not None for name, _ in model.named_modules())
                assert expected > 0, f"{target_modules!r} matches nothing"
            else:
                expected = sum(name.endswith(tuple(target_modules)) for name, _ in model.named_modules())
            wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules))
            what = f"{model_class.__name__} LoRA on {target_modules}"

            lora_layers = [m for m in wrapped.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
            assert len(lora_layers) == expected, f"{what}: {len(lora_layers)} LoRA layers, expected {expected}"
            trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
            assert trainable and all("lora_" in name for name in trainable), f"{what}: {trainable}"

            # LoRA B starts at zero, so the wrapped model computes exactly the original function (up to float
            # rounding: wrapped layers run one by one instead of batched, an absorbed MLA reads a wrapped kv_b_proj
            # through an identity probe), so the allowance is 1e-6 relative to the output's scale.
            output = tester.logits_of(wrapped, **inputs)
            scale = max(1.0, reference.abs().max().item())
            torch.testing.assert_close(
                output, reference, rtol=0, atol=1e-6 * scale, msg=described(f"{what} at initialisation")
            )
            output.float().pow(2).mean().backward()
            assert all(p.grad is None for name, p in wrapped.named_parameters() if "lora_" not in name)
            assert any(p.grad.abs().sum() > 0 for name, p in wrapped.named_parameters() if "lora_B" in name)

    # ------------------------------------------------------------------------ input errors ----
    def test_bad_inputs(self, tester):
        config = tester.get_config()
        inputs = tester.model_inputs(text_only=True)
        input_ids = inputs.pop("input_ids")
        batch, length = input_ids.shape
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            embeds = model.get_input_embeddings()(input_ids)
            with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
                model(input_ids=input_ids, inputs_embeds=embeds, **inputs)
            with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
                model(**inputs)
            for bad_id in (config.vocab_size, -1):
                bad = input_ids.clone()
                bad[0, 3] = bad_id
                with pytest.raises(ValueError, match="input_ids"):
                    model(input_ids=bad, **inputs)
            bad_masks = (torch.ones(batch, length - 1), torch.ones(batch + 1, length), torch.ones(batch, 1, length))
            for bad_mask in bad_masks:
                with pytest.raises(ValueError, match="attention_mask"):
                    model(input_ids=input_ids, attention_mask=bad_mask, **inputs)
            if model_class in tester.classes_with_labels:
                labels = tester.training_inputs(model_class, {"input_ids": input_ids, **inputs})["labels"]
                bad_labels = labels[:, :-1] if labels.dim() == 2 else labels[:-1]
                with pytest.raises(ValueError, match="labels"):
                    model(input_ids=input_ids, labels=bad_labels, **inputs)

    # ---------------------------------------------------------------- dtypes and placement ----
    def test_bf16_forward(self, tester, tmp_path):
        """bf16 loading and forward. At the default init std: with the large std of the other tests, bf16 rounding
        flips SLAM v2's top-k routing for some tokens, which is a different computation, not an error."""
        inputs = tester.model_inputs()
        for model_class in tester.all_model_classes:
            model = model_class(tester.get_config(**tester.bf16_config_kwargs())).eval()
            folder = tmp_path / model_class.__name__
            model.save_pretrained(folder)
            bf16 = model_class.from_pretrained(folder, dtype=torch.bfloat16)
            assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
            output = tester.logits_of(bf16, **inputs)
            assert output.dtype == torch.bfloat16, f"{model_class.__name__} returned {output.dtype}"
            assert torch.isfinite(output).all()
            reference = tester.logits_of(model, **inputs)
            scale, tolerance = reference.abs().max().item(), tester.bf16_tolerance
            torch.testing.assert_close(
                output.to(reference.dtype),
                reference,
                rtol=0,
                atol=tolerance * scale + tolerance,
                msg=described(f"{model_class.__name__} bf16 vs fp32"),
            )

    def test_device_map_auto(self, tester, saved_models, tmp_path):
        pytest.importorskip("accelerate")
        inputs = tester.model_inputs()
        for model_class, (folder, model) in saved_models.items():
            mapped = model_class.from_pretrained(folder, device_map="auto")
            assert mapped.device.type == "cpu"
            reference = tester.logits_of(model, **inputs)
            assert torch.equal(tester.logits_of(mapped, **inputs), reference), model_class.__name__

        # Too little CPU memory: part of the model is offloaded to disk and still gives the same logits.
        model_class = tester.generative_class or tester.all_model_classes[0]
        folder, model = saved_models[model_class]
        budget = int(model.get_memory_footprint() * tester.offload_memory_fraction)
        offloaded = model_class.from_pretrained(
            folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path / "offload")
        )
        assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}, offloaded.hf_device_map
        reference = tester.logits_of(model, **inputs)
        # Offloaded layers carry hooks, so they run unbatched / probed (an absorbed MLA reads a hooked kv_b_proj
        # through an identity probe): equal up to float rounding, 1e-6 relative to the output's scale.
        scale = max(1.0, reference.abs().max().item())
        torch.testing.assert_close(
            tester.logits_of(offloaded, **inputs),
            reference,
            rtol=0,
            atol=1e-6 * scale,
            msg=described("disk-offloaded model"),
        )

    # ---------------------------------------------------------------------- configurations ----
    def test_config_variants_forward(self, tester):
        model_inputs = tester.model_inputs()
        for overrides in tester.config_variants():
            config = tester.get_config(**overrides)
            inputs = tester.inputs_for_config(model_inputs, config)
            for model_class in tester.classes_with_labels:
                model = model_class(config).train()
                loss = model(**tester.training_inputs(model_class, inputs)).loss
                assert torch.isfinite(loss), f"{model_class.__name__} {overrides}: loss {loss}"
                loss.backward()
                for name, param in model.named_parameters():
                    assert param.grad is not None, f"{model_class.__name__} {overrides}: no gradient for {name}"
                    assert torch.isfinite(param.grad).all(), f"{model_class.__name__} {overrides}: {name}"
