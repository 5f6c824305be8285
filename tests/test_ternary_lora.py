"""LoRA on a BitNet b1.58 ternary SLAM v1 (slam_hf/adapters/ternary_lora.py) and the `slam-hf train` LoRA recipe
(configs/slam-v1-ternary-lora.yaml).

Covers: `peft.get_peft_model` with `ternary_lora_config` (and `get_ternary_peft_model`) wraps every targeted
TernaryLinear in TernaryLoraLinear whose adapter runs in full precision (checked against y = ternary base + s*B A x
computed here); only the adapters train and a few steps lower held-out loss on generated sequences while every base
weight stays bit-identical; merging is refused by default (merge_and_unload, merge_adapter) and leaves the model
intact, while PEFT's plain layer would merge silently; the explicit merge adds s*B A to the master weights, changes
ternary values, and reports a logit change equal to the one measured here; the adapter file round-trips with equal
logits (and a plain PeftModel.from_pretrained loses the refusal, as documented); DoRA, transformers' packed BitLinear
and a full-precision model are refused with their messages; the YAML section's errors; `slam-hf train` end to end on a
saved ternary base writes an adapter folder and leaves the base folder untouched.

Models are tiny and run on one torch thread. Thresholds were measured (value in the comment) and leave headroom.
"""

import hashlib
import json
import logging
from pathlib import Path

import peft
import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from slam_common import single_threaded_torch

from slam_hf import SlamV1Config, SlamV1ForCausalLM
from slam_hf.adapters.ternary_lora import (
    TernaryLoraLinear,
    TernaryMergeError,
    get_ternary_peft_model,
    load_ternary_adapter,
    merge_ternary_lora,
    ternary_lora_config,
)
from slam_hf.slam_ternary import TernaryLinear, ternary_weight

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "slam-v1-ternary-lora.yaml"
VOCAB = 64
TINY_TERNARY_V1 = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    ef_cycles=1,
    ef_segment_length=8,
    ef_segment_overlap=2,
    max_position_embeddings=64,
    ternary_linear=True,
    # Large enough for logits a frozen random lm_head can sharpen (at 0.02 they span < 1 nat and LoRA-only training
    # plateaus near ln 64).
    initializer_range=0.2,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
PROJECTIONS_PER_LAYER = len(TARGETS)  # gelu MLP: no gate_proj
LAYERS = 4  # full, EF blocks A and B (one cycle), full

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


def ternary_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return SlamV1ForCausalLM(SlamV1Config(**{**TINY_TERNARY_V1, **overrides})).eval()


def lora_kwargs(**overrides):
    return {"task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": TARGETS, **overrides}


def random_adapter_model(seed=0):
    """A PeftModel whose B matrices are random (init_lora_weights=False), so the adapter changes the outputs."""
    model = ternary_model(seed)
    torch.manual_seed(seed + 1)
    return get_ternary_peft_model(model, **lora_kwargs(init_lora_weights=False))


def successor_rows(n_rows, length=32, seed=0):
    """Generated sequences with a fixed rule: next = (5 * token + 3) mod VOCAB, from random starting tokens."""
    start = torch.randint(0, VOCAB, (n_rows, 1), generator=torch.Generator().manual_seed(seed))
    rows = [start]
    for _ in range(length - 1):
        rows.append((5 * rows[-1] + 3) % VOCAB)
    return torch.cat(rows, dim=1)


def base_state(peft_model):
    return {k: v.clone() for k, v in peft_model.named_parameters() if "lora_" not in k}


# --------------------------------------------------------------------------------------------------------------
# wrapping and the full-precision adapter


@pytest.mark.parametrize("through", ["peft.get_peft_model", "get_ternary_peft_model"])
def test_ternary_projections_get_full_precision_adapters(through):
    model = ternary_model()
    torch.manual_seed(1)
    if through == "peft.get_peft_model":
        wrapped = get_peft_model(model, ternary_lora_config(**lora_kwargs(init_lora_weights=False)))
    else:
        wrapped = get_ternary_peft_model(model, **lora_kwargs(init_lora_weights=False))
    layers = {name: m for name, m in wrapped.named_modules() if isinstance(m, TernaryLoraLinear)}
    assert len(layers) == LAYERS * PROJECTIONS_PER_LAYER
    assert all(isinstance(layer.get_base_layer(), TernaryLinear) for layer in layers.values())
    assert not [m for m in wrapped.modules() if type(m) is peft.tuners.lora.Linear]  # no plain LoRA layer

    # Only the adapters train: r * (in + out) per projection.
    trainable = {name: p for name, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in layers.values())
    assert sum(p.numel() for p in trainable.values()) == expected

    # The adapter is full precision: y = TernaryLinear(x) + (alpha / r) * B A x with float A, B and float x.
    layer = layers["base_model.model.model.layers.0.self_attn.q_proj"]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.dtype == b.dtype == torch.float32 and a.unique().numel() > 3 and b.unique().numel() > 3
    x = torch.randn(3, 5, 32)
    expected_out = layer.get_base_layer()(x) + 2.0 * (x @ a.T @ b.T)  # alpha / r = 8 / 4
    torch.testing.assert_close(layer(x), expected_out, rtol=1e-5, atol=1e-6)


def test_adapter_starts_as_identity():
    model = ternary_model()
    ids = successor_rows(2)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        wrapped = get_ternary_peft_model(model, **lora_kwargs())
        assert torch.equal(wrapped(input_ids=ids).logits, before)  # B = 0 at PEFT's default init


def test_only_adapters_train_and_held_out_loss_falls():
    wrapped = get_ternary_peft_model(ternary_model(), **lora_kwargs(r=8, lora_alpha=16))
    frozen = base_state(wrapped)
    adapters = {k: v.clone() for k, v in wrapped.named_parameters() if "lora_" in k}
    train, held_out = successor_rows(256, seed=1), successor_rows(32, seed=2)

    def held_out_loss():
        wrapped.eval()
        with torch.no_grad():
            return wrapped(input_ids=held_out, labels=held_out).loss.item()

    loss_before = held_out_loss()
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    wrapped.train()
    for step in range(30):
        batch = train[(step * 16) % 256 :][:16]
        loss = wrapped(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    loss_after = held_out_loss()
    assert loss_before > 4.0  # ln 64 = 4.16 for a uniform guess; measured 5.24
    assert loss_after < loss_before - 2.5, (loss_before, loss_after)  # measured 5.24 -> 0.88
    for name, value in base_state(wrapped).items():
        assert torch.equal(value, frozen[name]), f"base weight {name} changed"
    assert all(not torch.equal(p, adapters[k]) for k, p in wrapped.named_parameters() if "lora_B" in k)


# --------------------------------------------------------------------------------------------------------------
# merging


def test_merge_is_refused_by_default_and_changes_nothing():
    wrapped = random_adapter_model()
    ids = successor_rows(2)
    with torch.no_grad():
        logits = wrapped(input_ids=ids).logits
    weights = {k: v.clone() for k, v in wrapped.state_dict().items()}
    for merge in (wrapped.merge_and_unload, wrapped.merge_adapter, wrapped.base_model.merge_and_unload):
        with pytest.raises(TernaryMergeError) as err:
            merge()
        message = str(err.value)
        assert isinstance(err.value, ValueError)
        for fragment in ("re-quantises", "different ternary values", "outputs differ", "merge_ternary_lora("):
            assert fragment in message
    assert all(not layer.merged for layer in wrapped.modules() if isinstance(layer, TernaryLoraLinear))
    assert all(torch.equal(v, weights[k]) for k, v in wrapped.state_dict().items())
    with torch.no_grad():
        assert torch.equal(wrapped(input_ids=ids).logits, logits)


def test_plain_lora_would_merge_silently():
    """Why the refusal exists: PEFT's own LoRA layer merges into the master weight and the outputs change."""
    model = ternary_model()
    torch.manual_seed(1)
    wrapped = get_peft_model(model, LoraConfig(**lora_kwargs(init_lora_weights=False)))
    ids = successor_rows(2)
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        merged = wrapped.merge_and_unload()(input_ids=ids).logits
    assert (merged - adapted).abs().max() > 0.5  # measured 4.16


def test_explicit_merge_requantises_and_reports(caplog):
    wrapped = random_adapter_model()
    ids = successor_rows(2, seed=3)
    layers = {name.removeprefix("base_model.model."): m for name, m in wrapped.named_modules()}
    layers = {name: m for name, m in layers.items() if isinstance(m, TernaryLoraLinear)}
    masters = {name: layer.get_base_layer().weight.detach().clone() for name, layer in layers.items()}
    deltas = {
        name: 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight for name, layer in layers.items()
    }
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        with wrapped.disable_adapter():
            base = wrapped(input_ids=ids).logits

    with caplog.at_level(logging.WARNING, logger="slam_hf.adapters.ternary_lora"):
        merged, report = merge_ternary_lora(wrapped, input_ids=ids)

    assert isinstance(merged, SlamV1ForCausalLM)
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())
    changed = total = 0
    for name, master in masters.items():
        layer = merged.get_submodule(name)
        assert type(layer) is TernaryLinear  # still quantises in its forward: re-quantised by construction
        torch.testing.assert_close(layer.weight, master + deltas[name], rtol=0, atol=1e-6)
        codes_after = ternary_weight(layer.weight)[0]
        changed += int((codes_after != ternary_weight(master)[0]).sum())
        total += master.numel()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert report.layers == len(masters) == LAYERS * PROJECTIONS_PER_LAYER
    assert (report.ternary_values, report.ternary_values_changed) == (total, changed)
    assert changed > 0
    assert report.max_logit_change == pytest.approx((merged_logits - adapted).abs().max().item(), rel=1e-6)
    assert report.mean_logit_change == pytest.approx((merged_logits - adapted).abs().mean().item(), rel=1e-6)
    assert report.max_adapter_logit_change == pytest.approx((adapted - base).abs().max().item(), rel=1e-6)
    assert report.max_logit_change > 0.5  # measured 4.06 (the adapter itself moved them by 5.36)
    assert report.probe_tokens == ids.numel()
    assert 0.0 <= report.top1_agreement <= 1.0
    assert "re-quantised" in caplog.text and f"{report.max_logit_change:.4g}" in caplog.text


def test_explicit_merge_default_probe_and_wrong_input():
    merged, report = merge_ternary_lora(random_adapter_model())
    assert report.probe_tokens == 2 * 64 and report.max_logit_change > 0
    with pytest.raises(TypeError, match="PeftModel"):
        merge_ternary_lora(merged)
    plain = get_peft_model(ternary_model(), LoraConfig(**lora_kwargs()))
    with pytest.raises(ValueError, match="no LoRA layer on a TernaryLinear"):
        merge_ternary_lora(plain)


# --------------------------------------------------------------------------------------------------------------
# save and load


def test_adapter_round_trip(tmp_path):
    wrapped = random_adapter_model()
    ids = successor_rows(3, seed=4)
    with torch.no_grad():
        logits = wrapped(input_ids=ids).logits
    wrapped.save_pretrained(tmp_path / "adapter")
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(tensors) == 2 * LAYERS * PROJECTIONS_PER_LAYER
    assert all(".lora_A." in key or ".lora_B." in key for key in tensors)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    loaded = load_ternary_adapter(ternary_model(), tmp_path / "adapter")  # same seed: the same base weights
    assert sum(isinstance(m, TernaryLoraLinear) for m in loaded.modules()) == LAYERS * PROJECTIONS_PER_LAYER
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, logits)
    assert not any(p.requires_grad for p in loaded.parameters())  # is_trainable=False: inference
    with pytest.raises(TernaryMergeError):
        loaded.merge_and_unload()

    # The registration is not in adapter_config.json: a plain load gets PEFT's layer (documented caveat).
    plain = PeftModel.from_pretrained(ternary_model(), tmp_path / "adapter")
    assert not any(isinstance(m, TernaryLoraLinear) for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, logits)

    trainable = load_ternary_adapter(ternary_model(), tmp_path / "adapter", is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


# --------------------------------------------------------------------------------------------------------------
# refusals


def test_dora_is_refused():
    with pytest.raises(ValueError, match="DoRA"):
        ternary_lora_config(**lora_kwargs(use_dora=True))
    wrapped = get_ternary_peft_model(ternary_model(), **lora_kwargs())
    with pytest.raises(ValueError, match="DoRA"):  # a second adapter with a plain DoRA config on the same layers
        wrapped.add_adapter("dora", LoraConfig(**lora_kwargs(use_dora=True)))


def test_deployed_formats_are_refused(tmp_path):
    """transformers' packed BitLinear (an export_ternary folder through the bitnet quantizer) and Int8TernaryLinear
    (load_ternary) hold buffers only: PEFT refuses them, and the helpers say why first."""
    from transformers import AutoModelForCausalLM

    from slam_hf.export import export_ternary, load_ternary

    export_ternary(ternary_model(), tmp_path / "export")
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert any(type(m).__name__ == "BitLinear" for m in packed.modules())
    with pytest.raises(ValueError, match="Target module BitLinear.* is not supported"):  # PEFT's own refusal
        get_peft_model(packed, LoraConfig(**lora_kwargs()))
    for model, layer in ((packed, "BitLinear"), (load_ternary(tmp_path / "export"), "Int8TernaryLinear")):
        with pytest.raises(ValueError, match=f"deployed ternary layers \\({layer}\\).*full-precision master"):
            get_ternary_peft_model(model, **lora_kwargs())
    with pytest.raises(ValueError, match="deployed ternary layers"):
        load_ternary_adapter(packed, tmp_path / "no-adapter")


def test_full_precision_model_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="no TernaryLinear"):
        get_ternary_peft_model(ternary_model(ternary_linear=False), **lora_kwargs())
    with pytest.raises(TypeError, match="not both"):
        get_ternary_peft_model(ternary_model(), LoraConfig(**lora_kwargs()), r=2)


# --------------------------------------------------------------------------------------------------------------
# `slam-hf train`: the YAML section and the recipe end to end


def recipe_doc(base_model):
    doc = yaml.safe_load(RECIPE.read_text())
    doc["base_model"] = str(base_model)
    return doc


def write_yaml(tmp_path, doc):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_recipe_yaml_loads():
    from slam_hf.training.run_config import load_run_config

    run = load_run_config(RECIPE)
    assert run["base_model"] == "outputs/slam-v1-ternary-tiny" and run["variant"] == "slam_v1"
    assert run["lora"]["target_modules"] == TARGETS and run["torch_threads"] == 1
    base = load_run_config(REPO / "configs" / "slam-v1-ternary-tiny.yaml")
    assert base["model"]["ternary_linear"] is True and base["lora"] is None and base["base_model"] is None


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: d.pop("base_model"), "`lora` trains adapters on a trained model: set `base_model:`"),
        (lambda d: d.pop("lora"), "`base_model` is the frozen base of a LoRA run"),
        (lambda d: d["model"].update(hidden_size=64), "`model.hidden_size`: a LoRA run takes the architecture"),
        (lambda d: d["model"].update(variant="slam_loop"), "support model.variant slam_v1 and slam_v2, not slam_loop"),
        (lambda d: d["lora"].pop("target_modules"), "`lora.target_modules` is required"),
        (lambda d: d["lora"].update(task_type="SEQ_CLS"), "`lora.task_type` cannot be set"),
        (lambda d: d["lora"].update(lora_alph=8), "did you mean `lora_alpha`"),
        (lambda d: d["lora"].update(use_dora=True), "DoRA"),
        (lambda d: d.update(generation={"do_sample": True}), "`generation`: a LoRA run saves an adapter"),
    ],
)
def test_recipe_yaml_errors(tmp_path, edit, fragment):
    from slam_hf.training.run_config import ConfigError, load_run_config

    doc = recipe_doc(tmp_path / "base")
    edit(doc)
    with pytest.raises(ConfigError) as err:
        load_run_config(write_yaml(tmp_path, doc))
    assert fragment in str(err.value)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_slam_hf_train_lora_on_a_ternary_base(tmp_path):
    from slam_hf.cli import main
    from slam_hf.data import load_default_tokenizer

    tokenizer = load_default_tokenizer()
    base_dir = tmp_path / "base"
    fields = {**TINY_TERNARY_V1, "vocab_size": len(tokenizer), "max_position_embeddings": 256}
    ternary_model(**fields).save_pretrained(base_dir)
    base_files = _digest(base_dir)
    out = tmp_path / "adapter"
    config = write_yaml(tmp_path, recipe_doc(base_dir))
    argv = ["train", "--config", str(config), "--output-dir", str(out), "--max-steps", "2"]
    assert main(argv + ["--max-train-rows", "32", "--max-eval-rows", "4"]) == 0

    files = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_metrics.json"} <= files
    assert "model.safetensors" not in files
    assert _digest(base_dir) == base_files  # the base folder is only read
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["train_steps"] == 2
    assert metrics["lora"]["base_model"] == str(base_dir)
    assert metrics["lora"]["config"]["r"] == 8
    expected = sum(8 * (a + b) for a, b in [(32, 32)] * 4 + [(32, 64), (64, 32)]) * LAYERS
    assert metrics["lora"]["trainable_parameters"] == expected
    assert metrics["val_loss_after"] < metrics["val_loss_before"]  # measured 9.6470 -> 9.6444 (2 warm-up steps)

    loaded = load_ternary_adapter(SlamV1ForCausalLM.from_pretrained(base_dir), out)
    b_weights = [m.lora_B["default"].weight for m in loaded.modules() if isinstance(m, TernaryLoraLinear)]
    assert len(b_weights) == LAYERS * PROJECTIONS_PER_LAYER and all(w.abs().max() > 0 for w in b_weights)


def test_slam_hf_train_refuses_an_exported_base(tmp_path, capsys):
    from slam_hf.cli import main
    from slam_hf.export import export_ternary

    export_ternary(ternary_model(vocab_size=8192), tmp_path / "export")
    config = write_yaml(tmp_path, recipe_doc(tmp_path / "export"))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "is a bitnet-quantized folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
