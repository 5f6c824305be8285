"""Tests every SLAM variant must pass (the role of transformers' ModelTesterMixin + GenerationTesterMixin).

Test names follow the upstream mixins so a reader can map them one to one. Each test is parametrised
only by the tester (`model_tester_class`); a variant plugs in with a tester subclass (slam_tester.py)
and a test file holding

    class TestSlamV2Model(SlamModelTesterMixin):  # pytest only collects classes named Test*
        model_tester_class = SlamV2ModelTester

Tests that need a head the variant lacks (tester attribute set to None) are skipped.
Tolerances: reloads must be bit-identical (`torch.equal`); different kernels (eager/sdpa, cached vs
full forward) agree to 1e-5 on these tiny fp32 models.
"""

import json
import math
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

ATOL = 1e-5


def single_threaded_torch():
    """Generator for a fixture: run tiny-tensor tests on one intra-op thread, then restore the setting.

    For these shapes thread hand-offs cost more than they save, and on a busy 2-core machine OpenMP
    spin-waiting made `generate` ~40x slower (0.4 s vs 20 s).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_close(actual, expected, atol=ATOL, what="values"):
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what} differ by {diff:.3g} (allowed {atol:g})"


def without_load_metadata(config_dict):
    return {k: v for k, v in config_dict.items() if k not in ("auto_map", "_name_or_path", "transformers_version")}


def rope_modules(model):
    return [module for module in model.modules() if isinstance(getattr(module, "inv_freq", None), torch.Tensor)]


def expected_inv_freq(head_dim, theta):
    """RoPE frequencies written out here, independently of the package: theta^(-2i/d)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (1.0 / theta**exponents).float()


def enable_checkpointing(model):
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:  # transformers < 5.23
        model.gradient_checkpointing_enable()


def is_checkpointing(model):
    new_name = "is_activation_checkpointing"  # transformers >= 5.23; the old name warns
    return getattr(model, new_name if hasattr(type(model), new_name) else "is_gradient_checkpointing")


def count_calls(module):
    """Attach a forward hook counting calls; returns (counter list, hook handle)."""
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


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

    def auto_class_for(self, tester, model_class):
        return {
            tester.base_model_class: AutoModel,
            tester.causal_lm_class: AutoModelForCausalLM,
            tester.masked_lm_class: AutoModelForMaskedLM,
            tester.sequence_classification_class: AutoModelForSequenceClassification,
        }[model_class]

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
                assert getattr(reloaded, name) == value, name

        for bad_kwargs, field in tester.bad_config_cases():
            with pytest.raises(ValueError, match=field):
                tester.get_config(**bad_kwargs)

    # ----------------------------------------------------------------------- save and load ----
    def test_save_load(self, tester, saved_models):
        input_ids = tester.input_ids()
        for model_class, (folder, model) in saved_models.items():
            files = set(os.listdir(folder))
            assert "model.safetensors" in files and "config.json" in files, files
            assert not [name for name in files if name.endswith(".bin")], f"pickle weights written: {files}"

            reference = tester.logits_of(model, input_ids=input_ids)
            reloaded, info = model_class.from_pretrained(folder, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], info
            assert not reloaded.training, "from_pretrained must return a model in eval mode"
            assert torch.equal(tester.logits_of(reloaded, input_ids=input_ids), reference), model_class.__name__

            via_auto = self.auto_class_for(tester, model_class).from_pretrained(folder)
            assert type(via_auto) is model_class
            assert torch.equal(tester.logits_of(via_auto, input_ids=input_ids), reference), model_class.__name__

    def test_load_base_model_from_causal_lm_checkpoint(self, tester, saved_models):
        """AutoModel on a causal-LM checkpoint strips the `model.` prefix and gives the same trunk."""
        self.require(tester.causal_lm_class, "causal LM head")
        self.require(tester.base_model_class, "base model")
        folder, causal_lm = saved_models[tester.causal_lm_class]
        base, info = AutoModel.from_pretrained(folder, output_loading_info=True)
        assert type(base) is tester.base_model_class
        assert not info["missing_keys"], info
        input_ids = tester.input_ids()
        expected = causal_lm.base_model(input_ids=input_ids).last_hidden_state
        assert torch.equal(base(input_ids=input_ids).last_hidden_state, expected)

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
            for module in rope_modules(reloaded):
                expected = expected_inv_freq(config.head_dim, config.rope_theta)
                assert_close(module.inv_freq, expected, atol=1e-6, what="RoPE inv_freq after from_pretrained")

        # Drop a projection and a norm from a checkpoint: they must be reported and freshly initialised.
        model_class = tester.all_model_classes[-1]
        folder, model = saved_models[model_class]
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as handle:
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
        dropped_linear = next(name for name in weights if name.endswith("q_proj.weight"))
        dropped_norm = next(name for name in weights if "norm" in name and name.endswith(".weight"))
        partial = {name: t for name, t in weights.items() if name not in (dropped_linear, dropped_norm)}
        for name in os.listdir(folder):
            if name != "model.safetensors":
                with open(os.path.join(folder, name), "rb") as src, open(tmp_path / name, "wb") as dst:
                    dst.write(src.read())
        save_file(partial, tmp_path / "model.safetensors", metadata={"format": "pt"})

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
        input_ids = tester.input_ids()
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            embeddings = model.get_input_embeddings()
            assert isinstance(embeddings, nn.Embedding)
            assert embeddings.weight.shape == (config.vocab_size, config.hidden_size)
            before = tester.logits_of(model, input_ids=input_ids)

            replacement = nn.Embedding(config.vocab_size, config.hidden_size)
            model.set_input_embeddings(replacement)
            assert model.get_input_embeddings() is replacement
            after = tester.logits_of(model, input_ids=input_ids)
            assert not torch.allclose(after, before), "the new input embeddings are not used"
            assert_close(after, tester.logits_of(model, inputs_embeds=replacement(input_ids)))

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
            logits = model(input_ids=input_ids).logits
            assert logits.shape[-1] == config.vocab_size + 5

    def test_inputs_embeds_matches_input_ids(self, tester):
        config = tester.get_config()
        input_ids = tester.input_ids()
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            inputs_embeds = model.get_input_embeddings()(input_ids)
            assert_close(
                tester.logits_of(model, inputs_embeds=inputs_embeds),
                tester.logits_of(model, input_ids=input_ids),
                atol=0,
                what=model_class.__name__,
            )

    def test_hidden_states_output(self, tester):
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
                assert_close(trunk.norm(hidden_states[-1]), last_hidden_state, atol=1e-6)
            assert model(input_ids=input_ids).hidden_states is None

    def test_eager_matches_sdpa_inference(self, tester, saved_models):
        rows = [tester.input_ids(1, length)[0] for length in (tester.seq_length, 5, tester.seq_length - 2)]
        left_ids, left_mask = tester.left_padded_batch(rows)
        right_ids, right_mask = tester.right_padded_batch(rows)
        cases = [
            ("no padding", tester.input_ids(), None),
            ("left padding", left_ids, left_mask),
            ("right padding", right_ids, right_mask),
        ]
        for model_class, (folder, _) in saved_models.items():
            eager = model_class.from_pretrained(folder, attn_implementation="eager")
            sdpa = model_class.from_pretrained(folder, attn_implementation="sdpa")
            assert eager.config._attn_implementation == "eager"
            assert sdpa.config._attn_implementation == "sdpa"
            for name, input_ids, mask in cases:
                inputs = dict(input_ids=input_ids, attention_mask=mask)
                eager_out = tester.logits_of(eager, **inputs)
                sdpa_out = tester.logits_of(sdpa, **inputs)
                if mask is not None and eager_out.dim() == 3:  # per-token outputs: padding is garbage
                    eager_out, sdpa_out = eager_out[mask.bool()], sdpa_out[mask.bool()]
                assert_close(eager_out, sdpa_out, what=f"{model_class.__name__} eager vs sdpa, {name}")

    # ---------------------------------------------------------------- causal LM and cache ----
    def test_past_key_values_equivalence(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        input_ids = tester.input_ids()
        length = input_ids.shape[1]
        full = model(input_ids=input_ids, use_cache=False).logits

        def run_in_chunks(chunk_sizes, attention_mask=None):
            cache, logits, done = DynamicCache(config=model.config), [], 0
            for size in chunk_sizes:
                inputs = dict(input_ids=input_ids[:, done : done + size], past_key_values=cache, use_cache=True)
                if attention_mask is not None:
                    inputs["attention_mask"] = attention_mask[:, : done + size]
                outputs = model(**inputs)
                assert outputs.past_key_values is cache
                logits.append(outputs.logits)
                done += size
            assert cache.get_seq_length() == length
            return torch.cat(logits, dim=1)

        prefill = 5
        token_by_token = [prefill] + [1] * (length - prefill)
        assert_close(run_in_chunks(token_by_token), full, what="prefill + token-by-token vs full forward")
        assert_close(run_in_chunks([1] * length), full, what="one token at a time vs full forward")
        chunks = [7, 3, 1, length - 11]  # chunk borders fall inside windows
        assert_close(run_in_chunks(chunks), full, what="chunked prefill vs full forward")
        mask = torch.ones_like(input_ids)
        assert_close(run_in_chunks(token_by_token, mask), full, what="with an explicit attention mask")

        # Left-padded batch, decoded one token at a time, against the padded full forward.
        rows = [input_ids[0], input_ids[1, :9]]
        padded_ids, padded_mask = tester.left_padded_batch(rows)
        padded_full = model(input_ids=padded_ids, attention_mask=padded_mask, use_cache=False).logits
        cache, steps = DynamicCache(config=model.config), []
        start = padded_ids.shape[1] - 4
        for begin, end in [(0, start)] + [(t, t + 1) for t in range(start, padded_ids.shape[1])]:
            inputs = dict(input_ids=padded_ids[:, begin:end], attention_mask=padded_mask[:, :end])
            steps.append(model(**inputs, past_key_values=cache).logits)
        stepped = torch.cat(steps, dim=1)
        real = padded_mask.bool()
        assert_close(stepped[real], padded_full[real], what="left-padded incremental decoding vs full forward")

    def test_causal_lm_future_independence(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        folder, _ = saved_models[tester.causal_lm_class]
        t = tester.seq_length // 2
        input_ids = tester.input_ids()
        changed = input_ids.clone()
        changed[:, t + 1 :] = tester.input_ids(seq_length=tester.seq_length - t - 1)
        changed[:, t + 1] = (input_ids[:, t + 1] + 1 - tester.first_regular_token_id) % (
            tester.vocab_size - tester.first_regular_token_id
        ) + tester.first_regular_token_id  # certainly different
        for implementation in ("sdpa", "eager"):
            model = tester.causal_lm_class.from_pretrained(folder, attn_implementation=implementation)
            logits = model(input_ids=input_ids).logits
            changed_logits = model(input_ids=changed).logits
            what = f"logits up to the change ({implementation})"
            assert_close(changed_logits[:, : t + 1], logits[:, : t + 1], atol=1e-6, what=what)
            assert (changed_logits[:, t + 1 :] - logits[:, t + 1 :]).abs().amax(-1).min() > 1e-4, (
                "a later position did not react to its own input"
            )

            # Gradient version: no path at all from a future input to the logits at t (exact zeros).
            embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
            model(inputs_embeds=embeds).logits[:, t].sum().backward()
            assert torch.count_nonzero(embeds.grad[:, t + 1 :]) == 0, f"future tokens leak into position {t}"
            assert embeds.grad[:, : t + 1].abs().sum(-1).min() > 0, "some past token does not influence position t"

    def test_bidirectional_heads_see_the_future(self, tester, saved_models):
        """The masked-LM / classifier trunk is bidirectional: later tokens change earlier outputs."""
        self.require(tester.masked_lm_class, "masked LM head")
        _, model = saved_models[tester.masked_lm_class]
        input_ids = tester.input_ids()
        changed = input_ids.clone()
        changed[:, -1] = (input_ids[:, -1] - tester.first_regular_token_id + 1) % (
            tester.vocab_size - tester.first_regular_token_id
        ) + tester.first_regular_token_id
        difference = (model(input_ids=changed).logits - model(input_ids=input_ids).logits).abs().amax(-1)
        assert difference[:, 0].min() > 1e-5, "the first token ignores the last one in a bidirectional model"

    def test_left_padding_compatibility(self, tester, saved_models):
        lengths = (tester.seq_length, 9, 1, tester.seq_length - 4)
        rows = [tester.input_ids(1, length)[0] for length in lengths]
        # RoPE only sees relative positions, so a padding shift would go unnoticed with it; learned
        # absolute positions check that every row counts its positions from its first real token.
        learned = tester.get_config(position_embedding_type="learned")
        models = [(cls, model, "rope") for cls, (_, model) in saved_models.items()]
        models += [(cls, self.fresh_model(cls, learned), "learned") for cls in tester.all_model_classes]
        for model_class, model, positions in models:
            for side in ("left", "right"):
                padded_ids, mask = tester.padded_batch(rows, pad_token_id=0, side=side)
                padded = tester.logits_of(model, input_ids=padded_ids, attention_mask=mask)
                for i, row in enumerate(rows):
                    alone = tester.logits_of(model, input_ids=row[None])[0]
                    ours = padded[i][mask[i].bool()] if padded.dim() == 3 else padded[i]
                    what = f"{model_class.__name__} ({positions}) {side}-padded row {i} (length {row.numel()})"
                    assert_close(ours, alone, what=what)

    # ----------------------------------------------------------------------------- generate ----
    def generation_kwargs(self, model, new_tokens):
        # Suppress EOS so every run has exactly `new_tokens` tokens and runs are comparable.
        return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=model.config.pad_token_id)

    def test_generate_greedy(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        input_ids, new_tokens = tester.input_ids(seq_length=9), 8  # generation crosses window borders
        kwargs = self.generation_kwargs(model, new_tokens)
        with_cache = model.generate(input_ids, do_sample=False, use_cache=True, **kwargs)
        without_cache = model.generate(input_ids, do_sample=False, use_cache=False, **kwargs)
        assert with_cache.shape == (input_ids.shape[0], input_ids.shape[1] + new_tokens)
        assert torch.equal(with_cache, without_cache)

        # Greedy decoding written out: argmax of a full forward at every step.
        sequence = input_ids
        for _ in range(new_tokens):
            logits = model(input_ids=sequence, use_cache=False).logits[:, -1]
            logits[:, model.config.eos_token_id] = -math.inf
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(with_cache, sequence)

    def test_generate_sample(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        input_ids = tester.input_ids(seq_length=9)
        kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, **self.generation_kwargs(model, 8))
        torch.manual_seed(1)
        with_cache = model.generate(input_ids, use_cache=True, **kwargs)
        torch.manual_seed(1)
        without_cache = model.generate(input_ids, use_cache=False, **kwargs)
        torch.manual_seed(2)
        other_seed = model.generate(input_ids, use_cache=True, **kwargs)
        assert torch.equal(with_cache, without_cache)
        assert not torch.equal(with_cache, other_seed), "sampling ignores the random seed"
        assert torch.equal(with_cache[:, : input_ids.shape[1]], input_ids)

    def test_generate_beam_search(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        input_ids, new_tokens = tester.input_ids(seq_length=7), 6
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
        with_cache = model.generate(input_ids, use_cache=True, **kwargs)
        without_cache = model.generate(input_ids, use_cache=False, **kwargs)
        sequences = with_cache.sequences
        assert sequences.shape == (input_ids.shape[0] * 2, input_ids.shape[1] + new_tokens)
        assert torch.equal(sequences, without_cache.sequences)

        # Recompute each returned beam's score with one full forward.
        log_probs = model(input_ids=sequences, use_cache=False).logits.log_softmax(-1)
        prompt = input_ids.shape[1]
        chosen = log_probs[:, prompt - 1 : -1].gather(-1, sequences[:, prompt:, None]).squeeze(-1)
        assert_close(chosen.sum(-1), with_cache.sequences_scores, atol=1e-4, what="beam scores")
        # Returned beams are sorted best first, and distinct.
        scores = with_cache.sequences_scores.view(input_ids.shape[0], 2)
        assert (scores[:, 0] >= scores[:, 1]).all()
        assert not torch.equal(sequences[0], sequences[1])

    def test_generate_left_padded_batch(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        learned = self.fresh_model(tester.causal_lm_class, tester.get_config(position_embedding_type="learned"))
        rows = [tester.input_ids(1, length)[0] for length in (5, 11, 8)]
        input_ids, attention_mask = tester.left_padded_batch(rows)
        for model in (model, learned):  # learned absolute positions expose any padding shift
            kwargs = dict(do_sample=False, **self.generation_kwargs(model, 6))
            batched = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
            for i, row in enumerate(rows):
                alone = model.generate(row[None], **kwargs)[0]
                what = f"row {i} ({model.config.position_embedding_type} positions)"
                assert torch.equal(batched[i, input_ids.shape[1] :], alone[row.numel() :]), what

    def test_generate_from_inputs_embeds(self, tester, saved_models):
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        input_ids = tester.input_ids(seq_length=9)
        kwargs = dict(do_sample=False, **self.generation_kwargs(model, 6))
        from_ids = model.generate(input_ids, **kwargs)
        from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(input_ids), **kwargs)
        assert torch.equal(from_embeds, from_ids[:, input_ids.shape[1] :])  # only new tokens are returned

    def test_prompt_lookup_decoding_matches_greedy_search(self, tester, saved_models):
        """Candidate tokens are verified in chunks and rejected ones cropped from the cache."""
        self.require(tester.causal_lm_class, "causal LM head")
        _, model = saved_models[tester.causal_lm_class]
        prompt = tester.input_ids(batch_size=1, seq_length=6)
        input_ids = torch.cat([prompt, prompt], dim=1)  # repeats, so the lookup proposes candidates
        kwargs = dict(do_sample=False, **self.generation_kwargs(model, 8))
        greedy = model.generate(input_ids, **kwargs)
        assert torch.equal(model.generate(input_ids, prompt_lookup_num_tokens=3, **kwargs), greedy)

    # ----------------------------------------------------------------------------- training ----
    def loss_and_grads(self, model, inputs):
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    def test_training_gradient_checkpointing(self, tester):
        input_ids = tester.input_ids()
        for model_class in tester.classes_with_labels:
            plain = model_class(tester.get_config()).train()
            checkpointed = model_class(tester.get_config()).train()  # own config: enabling must not leak
            checkpointed.load_state_dict(plain.state_dict())
            enable_checkpointing(checkpointed)
            assert is_checkpointing(checkpointed)

            inputs = dict(input_ids=input_ids, labels=tester.labels_for(model_class, input_ids))
            loss, grads = self.loss_and_grads(plain, inputs)
            # transformers checkpoints `forward` (hooks stay outside), so count a linear layer inside it.
            first_layer = next(m for m in checkpointed.modules() if isinstance(m, GradientCheckpointingLayer))
            calls, handle = count_calls(next(m for m in first_layer.modules() if isinstance(m, nn.Linear)))
            checkpointed_loss, checkpointed_grads = self.loss_and_grads(checkpointed, inputs)
            handle.remove()
            assert len(calls) == 2, f"expected forward + recomputation in backward, got {len(calls)} calls"

            assert torch.equal(checkpointed_loss, loss)
            assert grads.keys() == checkpointed_grads.keys()
            assert len(grads) == len(list(plain.parameters()))
            for name, grad in grads.items():
                assert_close(checkpointed_grads[name], grad, atol=1e-6, what=f"{model_class.__name__} grad of {name}")

    def test_loss_kwargs_gradient_accumulation(self, tester):
        """HF_GUIDE §7: with `num_items_in_batch`, summed micro-batch losses equal the big-batch loss."""
        token_classes = [(cls, cls is tester.causal_lm_class) for cls in tester.lm_classes]
        if not token_classes:
            pytest.skip("this variant has no token-level loss")
        input_ids = tester.input_ids(batch_size=4)
        labels = input_ids.clone()
        # Very uneven numbers of labelled tokens per micro-batch, so a mean of means would be wrong.
        labels[0, 3:] = -100
        labels[1, :] = -100
        labels[1, 5] = input_ids[1, 5]
        labels[3, ::2] = -100
        halves = (slice(0, 2), slice(2, 4))
        for model_class, shifts in token_classes:
            model = model_class(tester.get_config(**tester.exact_loss_config_kwargs())).train()
            counted = labels[:, 1:] if shifts else labels
            num_items = torch.tensor(int((counted != -100).sum()))
            big_loss, big_grads = self.loss_and_grads(model, dict(input_ids=input_ids, labels=labels))

            model.zero_grad()
            micro_losses = []
            for rows in halves:
                loss = model(input_ids=input_ids[rows], labels=labels[rows], num_items_in_batch=num_items).loss
                loss.backward()
                micro_losses.append(loss.detach())
            assert_close(sum(micro_losses), big_loss, atol=1e-6, what="summed micro-batch losses")
            for name, param in model.named_parameters():
                assert_close(param.grad, big_grads[name], atol=1e-6, what=f"accumulated grad of {name}")

            mean_of_means = sum(model(input_ids=input_ids[r], labels=labels[r]).loss.detach() for r in halves) / 2
            assert (mean_of_means - big_loss).abs() > 1e-3, "test data too even to tell the two losses apart"

    # peft itself still reads the deprecated `is_gradient_checkpointing` property.
    @pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
    def test_peft_lora_wrap(self, tester):
        peft = pytest.importorskip("peft")
        input_ids = tester.input_ids()
        # q/v targets on every class; "all-linear" (whose name resolution skips the output head) on one.
        all_linear_class = tester.causal_lm_class or tester.all_model_classes[0]
        cases = [(cls, ["q_proj", "v_proj"]) for cls in tester.all_model_classes] + [(all_linear_class, "all-linear")]
        for model_class, target_modules in cases:
            model = self.fresh_model(model_class, tester.get_config())
            reference = tester.logits_of(model, input_ids=input_ids)
            if target_modules == "all-linear":
                head = model.get_output_embeddings()
                expected = sum(isinstance(m, nn.Linear) and m is not head for m in model.modules())
            else:
                expected = sum(name.endswith(("q_proj", "v_proj")) for name, _ in model.named_modules())
            wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules))
            what = f"{model_class.__name__} LoRA on {target_modules}"

            lora_layers = [m for m in wrapped.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
            assert len(lora_layers) == expected, f"{what}: {len(lora_layers)} LoRA layers, expected {expected}"
            trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
            assert trainable and all("lora_" in name for name in trainable), f"{what}: {trainable}"

            # LoRA B starts at zero, so the wrapped model computes exactly the original function.
            output = tester.logits_of(wrapped, input_ids=input_ids)
            assert_close(output, reference, atol=1e-6, what=f"{what} at initialisation")
            output.float().pow(2).mean().backward()
            assert all(p.grad is None for name, p in wrapped.named_parameters() if "lora_" not in name)
            assert any(p.grad.abs().sum() > 0 for name, p in wrapped.named_parameters() if "lora_B" in name)

    # ------------------------------------------------------------------------ input errors ----
    def test_bad_inputs(self, tester):
        config = tester.get_config()
        input_ids = tester.input_ids()
        batch, length = input_ids.shape
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, config)
            embeds = model.get_input_embeddings()(input_ids)
            with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
                model(input_ids=input_ids, inputs_embeds=embeds)
            with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
                model()
            for bad_id in (config.vocab_size, -1):
                bad = input_ids.clone()
                bad[0, 3] = bad_id
                with pytest.raises(ValueError, match="input_ids"):
                    model(input_ids=bad)
            bad_masks = (torch.ones(batch, length - 1), torch.ones(batch + 1, length), torch.ones(batch, 1, length))
            for bad_mask in bad_masks:
                with pytest.raises(ValueError, match="attention_mask"):
                    model(input_ids=input_ids, attention_mask=bad_mask)
            if model_class in tester.classes_with_labels:
                labels = tester.labels_for(model_class, input_ids)
                bad_labels = labels[:, :-1] if labels.dim() == 2 else labels[:-1]
                with pytest.raises(ValueError, match="labels"):
                    model(input_ids=input_ids, labels=bad_labels)

        limit = 16
        learned = tester.get_config(position_embedding_type="learned", max_position_embeddings=limit)
        for model_class in tester.all_model_classes:
            model = self.fresh_model(model_class, learned)
            model(input_ids=tester.input_ids(seq_length=limit))  # exactly at the limit is fine
            with pytest.raises(ValueError, match="max_position_embeddings"):
                model(input_ids=tester.input_ids(seq_length=limit + 1))
        if tester.causal_lm_class is not None:  # also when the limit is crossed while decoding
            model = self.fresh_model(tester.causal_lm_class, learned)
            cache = model(input_ids=tester.input_ids(seq_length=limit - 2), use_cache=True).past_key_values
            with pytest.raises(ValueError, match="max_position_embeddings"):
                model(input_ids=tester.input_ids(seq_length=3), past_key_values=cache, use_cache=True)

    # ---------------------------------------------------------------- dtypes and placement ----
    def test_bf16_forward(self, tester, saved_models):
        input_ids = tester.input_ids()
        for model_class, (folder, model) in saved_models.items():
            bf16 = model_class.from_pretrained(folder, dtype=torch.bfloat16)
            assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
            output = tester.logits_of(bf16, input_ids=input_ids)
            assert output.dtype == torch.bfloat16, f"{model_class.__name__} returned {output.dtype}"
            assert torch.isfinite(output).all()
            reference = tester.logits_of(model, input_ids=input_ids)
            scale = reference.abs().max().item()
            assert_close(output, reference, atol=0.05 * scale + 0.05, what=f"{model_class.__name__} bf16 vs fp32")

    def test_device_map_auto(self, tester, saved_models, tmp_path):
        pytest.importorskip("accelerate")
        input_ids = tester.input_ids()
        for model_class, (folder, model) in saved_models.items():
            mapped = model_class.from_pretrained(folder, device_map="auto")
            assert mapped.device.type == "cpu"
            reference = tester.logits_of(model, input_ids=input_ids)
            assert torch.equal(tester.logits_of(mapped, input_ids=input_ids), reference), model_class.__name__

        # Too little CPU memory: part of the model is offloaded to disk and still gives the same logits.
        model_class = tester.causal_lm_class or tester.all_model_classes[0]
        folder, model = saved_models[model_class]
        budget = int(model.get_memory_footprint() * tester.offload_memory_fraction)
        offloaded = model_class.from_pretrained(
            folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path / "offload")
        )
        assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}, offloaded.hf_device_map
        assert_close(
            tester.logits_of(offloaded, input_ids=input_ids),
            tester.logits_of(model, input_ids=input_ids),
            atol=1e-6,
            what="disk-offloaded model",
        )

    # ---------------------------------------------------------------------- configurations ----
    def test_config_variants_forward(self, tester):
        input_ids = tester.input_ids()
        for overrides in tester.config_variants():
            config = tester.get_config(**overrides)
            for model_class in tester.classes_with_labels:
                model = model_class(config).train()
                loss = model(input_ids=input_ids, labels=tester.labels_for(model_class, input_ids)).loss
                assert torch.isfinite(loss), f"{model_class.__name__} {overrides}: loss {loss}"
                loss.backward()
                for name, param in model.named_parameters():
                    assert param.grad is not None, f"{model_class.__name__} {overrides}: no gradient for {name}"
                    assert torch.isfinite(param.grad).all(), f"{model_class.__name__} {overrides}: {name}"
