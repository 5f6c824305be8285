"""The config contract (issue 17): a SLAM config either builds a model whose forward is finite, or fails AT
CONSTRUCTION with a ValueError/TypeError whose message names a field. Nothing else: no other exception, no failure
when the model is built or run, no NaN, no hang.

`test_random_configs_keep_the_contract` draws hundreds of configs per variant from a fixed seed, each a tiny valid
config with one to three fields replaced by a valid value, a boundary value or nonsense (wrong types, "false",
inf/nan, negatives, out-of-vocabulary token ids, huge sizes). The explicit cases below it pin each defect the issue
lists. Valid sizes are drawn small so every accepted config builds in milliseconds; the upper bounds of sizes are
exercised by drawing just above them (which must be rejected).
"""

import inspect
import json
import math
import random
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from slam_hf import (
    SlamLoopConfig,
    SlamLoopForCausalLM,
    SlamV1Config,
    SlamV1ForCausalLM,
    SlamV1ForMaskedLM,
    SlamV2Config,
    SlamV2ForCausalLM,
    SlamV2ForMaskedLM,
    SlamV3Config,
    SlamV3ForConditionalGeneration,
    SlamV3VisionConfig,
)
from slam_hf.slam_validation import VISION_SPECS

SEED = 17
DRAWS = {"slam_v1": 500, "slam_v2": 500, "slam_v3": 400, "slam_v3_vision": 400, "slam_loop": 500}
VISION = dict(patch_size=2, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
TEXT = dict(
    vocab_size=32,
    hidden_size=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=24,
    max_position_embeddings=64,
)
BASE_KWARGS = {
    "slam_v1": dict(TEXT, ef_cycles=1, ef_segment_length=6, ef_segment_overlap=2),
    "slam_v2": dict(TEXT, ef_cycles=2, ef_num_blocks=2, ef_segment_length=4, moa_num_experts=3, moa_top_k=2),
    "slam_v3": dict(
        TEXT,
        encoder_layers=1,
        decoder_layers=1,
        kv_lora_rank=8,
        qk_nope_head_dim=4,
        qk_rope_head_dim=4,
        v_head_dim=4,
        vision_config=VISION,
    ),
    # The exit is on (a confidence threshold), so accepted configs run the per-token exit and row gathering.
    "slam_loop": dict(
        TEXT, prelude_layers=1, core_layers=1, coda_layers=1, loop_max_iterations=2, loop_exit_threshold=0.5
    ),
}
CONFIG_CLASSES = {
    "slam_v1": SlamV1Config,
    "slam_v2": SlamV2Config,
    "slam_v3": SlamV3Config,
    "slam_loop": SlamLoopConfig,
}

# Valid values of the size fields, kept small so that an accepted config builds and runs in milliseconds.
SMALL_VALUES = {
    "vocab_size": [8, 16, 64],
    "hidden_size": [8, 12, 16, 32],
    "num_attention_heads": [1, 2, 4, 8],
    "num_key_value_heads": [None, 1, 2, 4],
    "head_dim": [None, 2, 4, 6, 8],
    "intermediate_size": [1, 8, 24],
    "max_position_embeddings": [16, 64],
    "num_hidden_layers": [None, 1, 3, 4],
    "ef_cycles": [1, 2, 3],
    "ef_segment_length": [1, 4, 6, 16],
    "ef_segment_overlap": [0, 1, 2, 5],
    "ef_num_blocks": [1, 2, 4],
    "moa_num_experts": [1, 2, 4],
    "moa_top_k": [1, 2],
    "moa_expert_heads": [None, 1, 2, 4],
    "encoder_layers": [1, 2],
    "decoder_layers": [1, 2],
    "fusion_num_latents": [0, 1, 3],
    "aux_dim": [None, 1, 3],
    "kv_lora_rank": [1, 4, 8],
    "q_lora_rank": [None, 1, 4],
    "qk_nope_head_dim": [None, 1, 4],
    "qk_rope_head_dim": [2, 4, 6],
    "v_head_dim": [None, 1, 4],
    "patch_size": [1, 2, 3],
    "num_channels": [1, 3],
    "num_labels": [1, 2, 5],
    "chunk_size_feed_forward": [0, 1],
    "prelude_layers": [0, 1, 2],
    "core_layers": [1, 2],
    "coda_layers": [0, 1, 2],
    "loop_max_iterations": [1, 2, 3],
    "loop_backprop_iterations": [1, 2, 4],
    "loop_sampling_mean": [None, 1.0, 1.5, 3.0],  # 3.0: above loop_max_iterations=2 unless that is drawn too
}
LAST_ID, PAST_VOCAB = object(), object()  # token ids resolved against the drawn vocab_size


def valid_values(name, spec):
    if name in SMALL_VALUES:
        return SMALL_VALUES[name]
    if spec.kind == "bool":
        return [True, False] + ([None] if spec.optional else [])
    if spec.kind == "enum":
        return list(spec.choices) + ([None] if spec.optional else [])
    if spec.kind == "names":
        return [list(spec.choices[:1]), list(spec.choices[-3:]), list(spec.choices)] + ([None] if spec.optional else [])
    if spec.kind == "token_id":
        return [0, 1, LAST_ID] + ([None] if spec.optional else []) + ([[1, 2]] if spec.many else [])
    low = spec.low + 1e-6 if spec.low_open else spec.low
    high = spec.high - 1e-6 if spec.high_open else spec.high
    return [low, high, low + (high - low) / 100, math.ceil(low)]  # boundaries, and an int where a float is due


def invalid_values(spec):
    """Values the field's spec rules out, whatever the other fields hold."""
    nonsense = ["false", "1", 2.5 if spec.kind != "float" else "0.5"] + ([] if spec.optional else [None])
    nonsense += [[1, -1]] if spec.many else [[1]]  # eos_token_id may hold a list, of valid ids
    if spec.kind == "bool":
        return nonsense + [1, 0, 1.0, "no"]
    if spec.kind == "enum":
        return nonsense + ["nonsense", 1, True]
    if spec.kind == "names":
        return nonsense + [[], ["nonsense"], [spec.choices[0]] * 2, spec.choices[0], [spec.choices[0], 1]]
    if spec.kind == "token_id":
        return nonsense + [-1, PAST_VOCAB, 10**9, True, 1.0]
    numbers = [math.inf, -math.inf, math.nan, True, spec.low - 1, spec.high + 1, 10**9 + spec.high, -(10**9)]
    if spec.kind == "int":
        numbers += [4.0]
    return (
        nonsense
        + numbers
        + [value for value, is_open in ((spec.low, spec.low_open), (spec.high, spec.high_open)) if is_open]
    )


def resolve_token_ids(values, vocab_size):
    vocab_size = vocab_size if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) else 32
    for name, value in values.items():
        if value is LAST_ID:
            values[name] = vocab_size - 1
        elif value is PAST_VOCAB:
            values[name] = vocab_size


def draw(rng, variant):
    """(config kwargs, mutated field names, whether some drawn value is invalid by its spec alone)."""
    text_variant = "slam_v3" if variant == "slam_v3_vision" else variant
    kwargs = dict(BASE_KWARGS[text_variant])
    specs = VISION_SPECS if variant == "slam_v3_vision" else CONFIG_CLASSES[variant].field_specs
    target = dict(VISION) if variant == "slam_v3_vision" else kwargs
    names = rng.sample(sorted(specs), rng.randint(1, 3))
    bad_name = rng.choice(names) if rng.random() < 0.5 else None  # half the draws hold one value ruled out
    for name in names:
        target[name] = rng.choice(invalid_values(specs[name]) if name == bad_name else valid_values(name, specs[name]))
    resolve_token_ids(kwargs, kwargs.get("vocab_size"))
    if variant == "slam_v3_vision":
        kwargs["vision_config"] = target
    return kwargs, names, bad_name is not None


def head_for(config):
    if isinstance(config, SlamV3Config):
        return SlamV3ForConditionalGeneration
    if isinstance(config, SlamLoopConfig):
        return SlamLoopForCausalLM
    causal = {SlamV1Config: SlamV1ForCausalLM, SlamV2Config: SlamV2ForCausalLM}[type(config)]
    masked = {SlamV1Config: SlamV1ForMaskedLM, SlamV2Config: SlamV2ForMaskedLM}[type(config)]
    return causal if config.is_causal else masked


def forward_inputs(config, generator):
    """A short batch of 2 for `config`: text for v1/v2 and the latent loop; for v3 a prompt with one 2 x 2-patch
    image, the answer as labels, and aux values when aux_dim is set."""
    ids = torch.randint(0, config.vocab_size, (2, min(10, config.max_position_embeddings)), generator=generator)
    if not isinstance(config, SlamV3Config):
        return {"input_ids": ids, "labels": ids}
    vision = config.vision_config
    text_ids = ids[:, :3].masked_fill(
        ids[:, :3] == config.image_token_id, (config.image_token_id + 1) % config.vocab_size
    )
    placeholders = torch.full((2, 4), config.image_token_id)
    side = 2 * vision.patch_size
    inputs = {
        "input_ids": torch.cat([text_ids[:, :1], placeholders, text_ids[:, 1:]], dim=1),
        "pixel_values": torch.randn(2, vision.num_channels, side, side, generator=generator),
    }
    answer = torch.randint(0, config.vocab_size, (2, 4), generator=generator)
    if config.decoder_start_token_id is None or config.pad_token_id is None:
        # Valid configs, but labels are shifted right with these ids: the forward names them (test_bad_inputs in
        # test_modeling_slam_v3.py), so run the answer as decoder inputs, without a loss.
        inputs["decoder_input_ids"] = answer
    else:
        inputs["labels"] = answer
    if config.aux_dim:
        inputs["aux_values"] = torch.randn(2, 2, config.aux_dim, generator=generator)
    return inputs


def check_one(variant, kwargs, names, must_reject, generator):
    """'built' or 'rejected'; fails the test on any other outcome."""
    config_class = SlamV3Config if variant == "slam_v3_vision" else CONFIG_CLASSES[variant]
    try:
        config = config_class(**kwargs)
    except (ValueError, TypeError) as error:
        mentioned = [name for name in names if name in str(error)]
        named_field = any(name in str(error) for name in ALL_FIELD_NAMES)
        assert named_field and (mentioned or not must_reject), f"{names}: the message names no drawn field: {error}"
        return "rejected"
    assert not must_reject, f"accepted a value its spec rules out: {names} in {kwargs}"
    model = head_for(config)(config).eval()
    with torch.no_grad():
        output = model(**forward_inputs(config, generator), return_dict=True)
    assert torch.isfinite(output.logits).all(), f"non-finite logits for {kwargs}"
    assert output.loss is None or torch.isfinite(output.loss), f"non-finite loss for {kwargs}"
    return "built"


ALL_FIELD_NAMES = set(VISION_SPECS).union(*(cls.field_specs for cls in CONFIG_CLASSES.values()))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread: on a busy machine extra threads only wait for each other (10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", sorted(DRAWS))
def test_random_configs_keep_the_contract(variant, one_thread):
    rng, generator = random.Random(f"{SEED}-{variant}"), torch.Generator().manual_seed(SEED)
    counts = {"built": 0, "rejected": 0}
    start = time.perf_counter()
    for index in range(DRAWS[variant]):
        kwargs, names, must_reject = draw(rng, variant)
        try:
            counts[check_one(variant, kwargs, names, must_reject, generator)] += 1
        except AssertionError:
            raise
        except Exception as error:  # any other exception breaks the contract: report the config that raised it
            raise AssertionError(f"draw {index}, fields {names}: {type(error).__name__}: {error}\n{kwargs}") from error
    elapsed = time.perf_counter() - start
    tried = f"{DRAWS[variant]} configs tried, {counts['built']} built, {counts['rejected']} rejected"
    print(f"\n{variant}: {tried} ({elapsed:.1f} s)")
    # Both branches must be well exercised, or the draw has drifted into testing only one side.
    assert min(counts.values()) >= DRAWS[variant] // 5, counts


# ---------------------------------------------------------------------------------- the issue, one by one ----
REGRESSIONS = [
    (SlamV1Config, dict(tie_word_embeddings="false"), TypeError, r"`tie_word_embeddings` must be True or False"),
    (SlamV2Config, dict(attention_bias="no"), TypeError, r"`attention_bias` must be True or False, got 'no'"),
    (SlamV3Config, dict(use_cache="no"), TypeError, r"`use_cache` must be True or False"),
    (SlamV1Config, dict(pad_token_id=-1), ValueError, r"`pad_token_id` must be a token id in \[0, vocab_size=8192\)"),
    (SlamV1Config, dict(pad_token_id=8192), ValueError, r"`pad_token_id`.*got 8192"),
    (SlamV2Config, dict(bos_token_id=8192), ValueError, r"`bos_token_id`"),
    (SlamV2Config, dict(eos_token_id=-2), ValueError, r"`eos_token_id`"),
    (SlamV1Config, dict(eos_token_id=[2, 9000]), ValueError, r"`eos_token_id`"),
    (SlamV3Config, dict(decoder_start_token_id=8192), ValueError, r"`decoder_start_token_id`"),
    (SlamV3Config, dict(decoder_start_token_id=-1), ValueError, r"`decoder_start_token_id`"),
    (SlamV1Config, dict(norm_eps=math.inf), ValueError, r"`norm_eps` must be a finite number in \(0, 1\], got inf"),
    (SlamV2Config, dict(router_aux_loss_coef=math.inf), ValueError, r"`router_aux_loss_coef`.*got inf"),
    (SlamV2Config, dict(router_aux_loss_coef=math.nan), ValueError, r"`router_aux_loss_coef`.*got nan"),
    (SlamV1Config, dict(hidden_size="256"), TypeError, r"`hidden_size` must be a positive integer.*got '256'"),
    (SlamV2Config, dict(num_attention_heads=8.0), TypeError, r"`num_attention_heads`"),
    (SlamV3Config, dict(rope_theta="1e4"), TypeError, r"`rope_theta` must be a number"),
    (SlamV2Config, dict(moa_num_experts=10**6), ValueError, r"`moa_num_experts` must be a positive integer \(at most"),
    (SlamV1Config, dict(ef_cycles=10**7), ValueError, r"`ef_cycles` must be a positive integer \(at most 1024\)"),
    (SlamV1Config, dict(hidden_size=65536 * 2), ValueError, r"`hidden_size`"),
    (SlamV1Config, dict(output_hidden_states="yes"), TypeError, r"`output_hidden_states`"),
    (SlamV1Config, dict(num_labels=10**9), ValueError, r"`num_labels`"),
    (SlamLoopConfig, dict(loop_max_iterations=10**6), ValueError, r"`loop_max_iterations` .*\(at most 256\)"),
    (SlamLoopConfig, dict(loop_exit_threshold=math.nan), ValueError, r"`loop_exit_threshold` .*got nan"),
    (SlamLoopConfig, dict(loop_exit_threshold=2.0), ValueError, r"`loop_exit_threshold` \(2.0\) compares with a conf"),
    (SlamLoopConfig, dict(loop_sampling_sigma=math.inf), ValueError, r"`loop_sampling_sigma`.*got inf"),
    (SlamLoopConfig, dict(core_layers=2.0), TypeError, r"`core_layers` must be a positive integer"),
    (SlamLoopConfig, dict(loop_iteration_sampling=None), TypeError, r"`loop_iteration_sampling` must be set"),
] + [
    (SlamV3VisionConfig, {name: value}, ValueError, rf"`vision_config.{name}`.*got {value}")
    for name in ("norm_eps", "rope_theta", "initializer_range", "attention_dropout", "hidden_dropout")
    for value in (math.inf, math.nan)
]


@pytest.mark.parametrize(("config_class", "kwargs", "error", "match"), REGRESSIONS, ids=lambda v: str(v)[:40])
def test_each_listed_defect_fails_at_construction(config_class, kwargs, error, match):
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        config_class(**kwargs)
    assert time.perf_counter() - start < 1.0  # absurd sizes fail at once, they do not start building


def test_loop_kl_exit_config_runs_or_is_refused():
    """The "kl" exit with a threshold (what `calibrate_exit_threshold(criterion="kl")` writes into the config) is
    either refused at construction, naming the exit and the cache, or the model it builds runs its default forward
    and `generate()` (use_cache defaults to True, and the "kl" exit refuses a cache at the forward)."""
    kwargs = dict(BASE_KWARGS["slam_loop"], loop_exit_criterion="kl", loop_exit_threshold=0.1)
    try:
        config = SlamLoopConfig(**kwargs)
    except ValueError as error:
        assert "loop_exit_criterion" in str(error) and "use_cache" in str(error), error
        return
    model = SlamLoopForCausalLM(config).eval()
    ids = torch.randint(3, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False).shape == (2, 12)


def test_json_values_and_ints_for_floats_are_accepted():
    saved = json.loads('{"tie_word_embeddings": false, "use_cache": false, "rope_theta": 10000, "norm_eps": 1}')
    config = SlamV1Config(**saved, pad_token_id=None, eos_token_id=[1, 2])
    assert config.tie_word_embeddings is False and config.rope_theta == 10000 and config.pad_token_id is None


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "slam_hf" / "preset_configs").glob("*.json")))
def test_shipped_presets_load_and_round_trip(path, tmp_path):
    fields = json.loads(path.read_text())
    config = CONFIG_CLASSES[fields["model_type"]].from_dict(fields)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path).to_dict()
    assert {**reloaded, "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}  # loading adds the path


def test_from_pretrained_overrides_are_checked_and_rederive(tmp_path):
    """transformers applies `from_pretrained(..., field=value)` with setattr after __init__; the SLAM configs hand
    them to __init__ instead, so they are checked and the fields derived from them follow."""
    SlamV1Config(**BASE_KWARGS["slam_v1"]).save_pretrained(tmp_path / "v1")
    with pytest.raises(TypeError, match="`use_cache` must be True or False"):
        SlamV1Config.from_pretrained(tmp_path / "v1", use_cache="no")
    with pytest.raises(ValueError, match="`pad_token_id`"):
        AutoConfig.from_pretrained(tmp_path / "v1", pad_token_id=-1)
    with pytest.raises(ValueError, match="`norm_eps`"):
        SlamV1ForCausalLM.from_pretrained(tmp_path / "v1", norm_eps=math.inf)  # fails on the config, before weights
    reloaded = SlamV1Config.from_pretrained(tmp_path / "v1", ef_cycles=3)
    assert (reloaded.ef_cycles, reloaded.num_hidden_layers) == (3, 8)  # 2 + 2 * ef_cycles, not the saved 4

    SlamV3Config(**BASE_KWARGS["slam_v3"]).save_pretrained(tmp_path / "v3")
    reloaded = SlamV3Config.from_pretrained(tmp_path / "v3", vision_config={"patch_size": 4})
    assert (reloaded.vision_config.patch_size, reloaded.vision_config.hidden_size) == (4, VISION["hidden_size"])
    with pytest.raises(ValueError, match="`vision_config.norm_eps`"):
        SlamV3Config.from_pretrained(tmp_path / "v3", vision_config={"norm_eps": math.nan})
    SlamV3VisionConfig(**VISION).save_pretrained(tmp_path / "vision")
    with pytest.raises(TypeError, match="`vision_config.mlp_bias`"):
        SlamV3VisionConfig.from_pretrained(tmp_path / "vision", mlp_bias="false")
    assert SlamV3VisionConfig.from_pretrained(tmp_path / "vision", num_hidden_layers=3).num_hidden_layers == 3


def test_values_assigned_after_construction_fail_at_save(tmp_path):
    config = SlamV2Config(**BASE_KWARGS["slam_v2"])
    config.use_cache = "no"
    with pytest.raises(TypeError, match="`use_cache`"):
        config.save_pretrained(tmp_path)
    vision = SlamV3VisionConfig()
    vision.rope_theta = math.inf
    with pytest.raises(ValueError, match="`vision_config.rope_theta`"):
        vision.validate()


@pytest.mark.parametrize("config_class", [*CONFIG_CLASSES.values(), SlamV3VisionConfig], ids=lambda cls: cls.__name__)
def test_every_argument_has_a_field_spec(config_class):
    """A field added to a config's signature without a spec would go unchecked: the table must name it."""
    arguments = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs", "vision_config"}
    assert arguments - set(config_class.field_specs) == set()
