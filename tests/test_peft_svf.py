"""Transformer² SVF as a PEFT method (slam_hf/adapters/svf.py), on SLAM v1 and on in-library Llama and BERT models.

Covers: the PeftType extension and the registrations it enables; the adapted model equals the base model bit for
bit at initialisation (both published forms); the layer matches the published formulas (float64 reference) and
gets gradients at the start; the trainable parameters are exactly the singular-value counts; the adapter file
holds the z vectors and nothing else; save -> load in a fresh process (which must `import slam_hf`, or
slam_hf.adapters.svf; the error without it is pinned) reproduces the logits; merge/unmerge/merge_and_unload; named
adapters and set_adapter; the z-vector API; Trainer on real text changes only z; push_to_hub and load by repo id; the
bad inputs (a non-Linear target, a wrong-length z in an adapter file, an adapter of another base model, bad z
vectors, bad configs) fail naming the module or argument; the remote-code model files never import peft.

Models are tiny and built from config; everything runs on one torch thread, so results reproduce bit for bit.
Thresholds were measured (value in the comment next to each) and leave headroom.
"""

import ast
import copy
import enum
import json
import os
import subprocess
import sys
import textwrap

import peft
import pytest
import torch
from huggingface_hub import HfApi
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType
from safetensors.torch import load_file, save_file
from slam_common import single_threaded_torch
from slam_tester import SlamV1ModelTester
from torch import nn
from training_common import TINY_V1_FIELDS, training_args
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    set_seed,
)

from slam_hf import SlamV1Config, SlamV1ForCausalLM, data
from slam_hf.adapters import svf as peft_svf
from slam_hf.adapters.svf import (
    SVFConfig,
    SVFLinear,
    SVFModel,
    check_z_vectors,
    get_z_vectors,
    load_z_vectors,
    set_z_vectors,
    svf_layers,
    svf_target_modules,
    z_vector_lengths,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "slam-tester"
VOCAB = 99
SCALINGS = ("sigmoid_renorm", "plain")
single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


# ---------------------------------------------------------------------------------------- helpers ----
def tiny_slam_v1(seed=0):
    torch.manual_seed(seed)
    return SlamV1ForCausalLM(SlamV1ModelTester().get_config()).eval()  # hidden 32, MLP 37, two EF cycles


def tiny_llama(seed=0, hidden_size=32, num_hidden_layers=2):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=3,
        initializer_range=0.2,
    )  # 0.02 gives ~1e-2 logits
    return BertForSequenceClassification(config).eval()


MODELS = {"slam_v1": (tiny_slam_v1, "CAUSAL_LM"), "llama": (tiny_llama, "CAUSAL_LM"), "bert": (tiny_bert, "SEQ_CLS")}


def expected_mlp_names(model) -> list[str]:
    """The MLP projections, found by the models' own layer structure (not by SVF's target table)."""
    names = []
    for name, module in model.named_modules():
        if hasattr(module, "up_proj") and hasattr(module, "down_proj"):  # SlamMLP, LlamaMLP
            names += [f"{name}.{proj}" for proj in ("gate_proj", "up_proj", "down_proj") if hasattr(module, proj)]
        if hasattr(module, "intermediate") and hasattr(module, "output"):  # BertLayer
            names += [f"{name}.intermediate.dense", f"{name}.output.dense"]
    return sorted(names)


def token_ids(rows=2, length=15, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (rows, length), generator=generator)


@torch.no_grad()
def logits_of(model, input_ids):
    return model(input_ids=input_ids).logits


def randomise_z(peft_model, adapter_name=None, seed=0, scale=0.5):
    """Move every z away from its start value, so the adapter changes the model."""
    generator = torch.Generator().manual_seed(seed)
    z = get_z_vectors(peft_model, adapter_name)
    set_z_vectors(
        peft_model,
        {name: v + scale * torch.randn(v.shape, generator=generator) for name, v in z.items()},
        adapter_name=adapter_name,
    )


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def singular_value_count(model, names):
    return sum(min(model.get_submodule(name).weight.shape) for name in names)


# ---------------------------------------------------------------------------- 1. PeftType extension ----
def test_peft_type_extension_and_registration_are_in_place():
    member = PeftType.SVF
    assert PeftType("SVF") is member and PeftType["SVF"] is member and member.value == member.name == "SVF"
    assert "SVF" in list(PeftType) and member == "SVF" and hash(member) == hash("SVF")
    assert list(PeftType)[-1] is member  # appended after peft's own members, which keep their order
    # adapter_config.json stores the plain string; PEFT looks its classes up with it
    assert PEFT_TYPE_TO_CONFIG_MAPPING["SVF"] is SVFConfig and PEFT_TYPE_TO_TUNER_MAPPING["SVF"] is SVFModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == SVFModel.prefix == "svf_"
    assert SVFConfig().peft_type is member and SVFConfig(peft_type="SVF").peft_type is member
    assert copy.deepcopy(member) is member
    peft_svf.register_svf()  # idempotent
    assert peft_svf._ensure_peft_type() is member
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is SVFConfig


def test_peft_type_extension_fails_loudly_if_internals_change(monkeypatch):
    class FrozenNames(str, enum.Enum):  # an enum whose member list cannot grow, as a future Python might have
        A = "A"

    FrozenNames._member_names_ = tuple(FrozenNames._member_names_)
    with pytest.raises(RuntimeError) as err:
        peft_svf._ensure_peft_type("SVF", FrozenNames)
    message = str(err.value)
    assert f"peft {peft.__version__}" in message and "FrozenNames" in message and "Python" in message, message
    assert "tested with peft" in message

    class Other:  # a PEFT release that brings its own method called SVF
        pass

    monkeypatch.setitem(PEFT_TYPE_TO_CONFIG_MAPPING, PeftType.SVF, Other)
    with pytest.raises(RuntimeError, match=rf"peft {peft.__version__} already has a PEFT method 'SVF'"):
        peft_svf.register_svf()


# -------------------------------------------------------------------------- 2. identity at the start ----
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_adapted_model_equals_base_model_at_init(model_name, scaling, capsys):
    build, task_type = MODELS[model_name]
    model = build()
    input_ids = token_ids()
    base_logits = logits_of(model, input_ids)
    mlp = expected_mlp_names(model)
    expected_trainable = singular_value_count(model, mlp)
    if task_type == "SEQ_CLS":  # PEFT trains (and saves) the fresh classification head in full
        expected_trainable += sum(p.numel() for p in model.classifier.parameters())

    peft_model = get_peft_model(model, SVFConfig(task_type=task_type, scaling=scaling))
    assert sorted(svf_layers(peft_model)) == mlp  # default targets: the MLP projections
    assert torch.equal(logits_of(peft_model, input_ids), base_logits)  # exactly, not approximately

    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == expected_trainable, (trainable, expected_trainable)
    peft_model.print_trainable_parameters()
    assert f"trainable params: {expected_trainable:,} " in capsys.readouterr().out
    z_names = {name for name, p in peft_model.named_parameters() if p.requires_grad and ".svf_z." in name}
    assert len(z_names) == len(mlp)
    # the SVD bases are buffers that never reach a state dict
    assert not [key for key in peft_model.state_dict() if "svf_U" in key or "svf_S" in key or "svf_Vh" in key]
    print(f"\n{model_name}/{scaling}: {len(mlp)} MLP projections, {expected_trainable} trainable")


@pytest.mark.parametrize("scaling", SCALINGS)
def test_identity_survives_bfloat16(scaling):
    # PEFT casts a new z to the base layer's dtype and back to float32, so 0.1 becomes 0.10009765625: the start
    # must be exact for whatever value z ends up holding, not only for the configured one.
    model = tiny_llama().to(torch.bfloat16)
    input_ids = token_ids()
    base_logits = logits_of(model, input_ids)
    peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM", scaling=scaling))
    layer = next(iter(svf_layers(peft_model).values()))
    assert layer.svf_z["default"].dtype == torch.float32 and layer.svf_U.dtype == torch.bfloat16
    assert torch.count_nonzero(layer.singular_value_change("default")) == 0
    assert torch.equal(logits_of(peft_model, input_ids), base_logits)


# ---------------------------------------------------------------------- 3. the published formulas ----
@pytest.mark.parametrize("scaling", SCALINGS)
def test_layer_matches_published_formula_and_gets_gradients(scaling):
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    layer = SVFLinear(linear, "default", SVFConfig(scaling=scaling), module_name="proj")
    z = layer.svf_z["default"]
    x = torch.randn(5, 12)

    # At the start z gets a gradient (the exact-zero trick must not cut it off).
    layer(x).square().sum().backward()
    assert z.grad is not None and z.grad.abs().max() > 1e-3, z.grad
    z.grad = None

    with torch.no_grad():
        z.add_(torch.randn(7) * 0.5)
    weight = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    z_ref = z.detach().double().requires_grad_()
    if scaling == "plain":  # the paper: W' = U diag(σ z) Vᵀ
        adapted = u @ torch.diag(s * z_ref) @ vh
    else:  # the released code: m = sigmoid(z), W' = U diag(σ m) Vᵀ · Σσ / Σσm
        m = torch.sigmoid(z_ref)
        adapted = u @ torch.diag(s * m) @ vh * (s.sum() / (s * m).sum())
    reference = x.double() @ adapted.T + linear.bias.detach().double()

    output = layer(x)  # 5 tokens < rank 7: the factored path
    assert max_diff(output, reference) < 1e-5, max_diff(output, reference)  # measured 4.2e-7 / 1.0e-6
    weights = torch.randn(reference.shape, dtype=torch.float64)
    (output.double() * weights).sum().backward()
    (reference * weights).sum().backward()
    grad_error = max_diff(z.grad, z_ref.grad)
    assert grad_error < 1e-5, grad_error  # measured 1.6e-6 / 3.4e-6
    # 20 tokens: the path that runs F.linear with W + ΔW; same output and the same gradient (4 × the above)
    z.grad = None
    many = layer(x.repeat(4, 1))
    assert max_diff(many, reference.repeat(4, 1)) < 1e-5, max_diff(many, reference.repeat(4, 1))
    (many.double() * weights.repeat(4, 1)).sum().backward()
    assert max_diff(z.grad, 4 * z_ref.grad) < 4e-5, max_diff(z.grad, 4 * z_ref.grad)
    # merging adds the same ΔW
    assert max_diff(layer.get_delta_weight("default"), adapted - weight) < 1e-5
    print(
        f"\n{scaling}: output vs float64 formula {max_diff(output, reference):.1e}, grad {grad_error:.1e}, "
        f"20-token grad {max_diff(z.grad, 4 * z_ref.grad):.1e}"
    )


# -------------------------------------------------------------- 4. save, then load in a fresh process ----
FRESH_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    args = json.loads(sys.argv[1])
    results = {}
    # The SLAM base through its remote code: slam_hf is not imported yet.
    base = AutoModelForCausalLM.from_pretrained(args["base"], trust_remote_code=True).eval()
    results["base_module"] = type(base).__module__
    results["slam_hf_before"] = sorted(name for name in sys.modules if name.startswith("slam_hf"))
    try:
        PeftModel.from_pretrained(base, args["adapter"])
        results["unregistered_error"] = None
    except Exception as err:
        results["unregistered_error"] = f"{type(err).__name__}: {err}"

    import slam_hf  # its __init__ registers SVF with PEFT: nothing else is needed to load
    peft_model = PeftModel.from_pretrained(base, args["adapter"]).eval()
    import slam_hf.adapters.svf
    input_ids = torch.tensor(args["input_ids"])
    with torch.no_grad():
        results["logits"] = peft_model(input_ids=input_ids).logits
    layers = slam_hf.adapters.svf.svf_layers(peft_model)
    results["rebuild_error"] = max(  # the bases were recomputed from the loaded base weight
        (layer.svf_U.double() @ torch.diag(layer.svf_S.double()) @ layer.svf_Vh.double()
         - layer.get_base_layer().weight.double()).abs().max().item() for layer in layers.values())
    results["z"] = slam_hf.adapters.svf.get_z_vectors(peft_model)
    results["trainable"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    torch.save(results, args["out"])
    """
)


def run_fresh_process(tmp_path, script, args):
    """Run `script` in a new interpreter: one torch thread (bit-identical kernels), an empty HF_HOME."""
    path = tmp_path / "fresh.py"
    path.write_text(script)
    (tmp_path / "cwd").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        PYTHONPATH=REPO_ROOT,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
    )
    args = dict(args, out=str(tmp_path / "out.pt"))
    done = subprocess.run(
        [sys.executable, str(path), json.dumps(args)],
        cwd=tmp_path / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"fresh process failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return torch.load(tmp_path / "out.pt")


def test_save_and_load_in_fresh_process(tmp_path):
    model = tiny_slam_v1(seed=3)
    model.save_pretrained(tmp_path / "base")  # with its remote code
    input_ids = token_ids()
    peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM"))
    randomise_z(peft_model)
    logits = logits_of(peft_model, input_ids)
    peft_model.save_pretrained(tmp_path / "adapter")

    # The adapter file: one z per adapted module, nothing else (the bases are rebuilt on load).
    lengths = z_vector_lengths(peft_model)
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sorted(weights) == sorted(f"base_model.model.{name}.svf_z" for name in lengths)
    assert all(weights[f"base_model.model.{name}.svf_z"].shape == (n,) for name, n in lengths.items())
    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved_config["peft_type"] == "SVF" and saved_config["scaling"] == "sigmoid_renorm"
    assert saved_config["init_z"] == 0.1 and saved_config["requires_import"] == "slam_hf.adapters.svf"
    assert sorted(saved_config["target_modules"]) == ["down_proj", "gate_proj", "up_proj"]
    on_disk = load_z_vectors(str(tmp_path / "adapter"))
    assert on_disk.keys() == lengths.keys()
    assert all(torch.equal(on_disk[name], z) for name, z in get_z_vectors(peft_model).items())

    out = run_fresh_process(
        tmp_path,
        FRESH_LOADER,
        dict(base=str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), input_ids=input_ids.tolist()),
    )
    assert out["base_module"].startswith("transformers_modules.") and out["slam_hf_before"] == []
    # Without `import slam_hf` (or slam_hf.adapters.svf), PEFT cannot know the type named in adapter_config.json.
    assert out["unregistered_error"] == "KeyError: 'SVF'", out["unregistered_error"]
    assert torch.equal(out["logits"], logits), max_diff(out["logits"], logits)
    assert out["rebuild_error"] < 1e-5, out["rebuild_error"]
    print(f"\nfresh process: logits identical; |U diag(σ) Vᵀ - W| <= {out['rebuild_error']:.1e}")
    assert out["z"].keys() == lengths.keys() and out["trainable"] == 0  # loaded for inference
    assert all(torch.equal(out["z"][name], on_disk[name]) for name in lengths)


# ------------------------------------------------------------------------------------------ 5. merge ----
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_merge_unmerge_and_merge_and_unload(model_name):
    build, task_type = MODELS[model_name]
    model = build()
    input_ids = token_ids()
    base_logits = logits_of(model, input_ids)
    original = {name: model.get_submodule(name).weight.detach().clone() for name in expected_mlp_names(model)}
    peft_model = get_peft_model(model, SVFConfig(task_type=task_type))
    randomise_z(peft_model)
    adapted = logits_of(peft_model, input_ids)
    assert max_diff(adapted, base_logits) > 1e-3
    with peft_model.disable_adapter():
        assert torch.equal(logits_of(peft_model, input_ids), base_logits)

    peft_model.merge_adapter()
    merged_diff = max_diff(logits_of(peft_model, input_ids), adapted)
    peft_model.unmerge_adapter()
    restored = max(
        max_diff(peft_model.base_model.model.get_submodule(name).weight, weight) for name, weight in original.items()
    )
    assert merged_diff < 1e-5 and restored < 1e-6, (merged_diff, restored)  # measured <= 3.6e-7 and 6.0e-8

    merged = peft_model.merge_and_unload()
    assert not svf_layers(merged)
    assert all(type(merged.get_submodule(name)) is nn.Linear for name in original)  # plain layers again
    unloaded_diff = max_diff(logits_of(merged, input_ids), adapted)
    assert unloaded_diff < 1e-5, unloaded_diff
    print(f"\n{model_name}: merged vs unmerged logits {unloaded_diff:.2e}, weights after unmerge {restored:.2e}")


# ---------------------------------------------------------------- 6. named adapters and the z API ----
def test_named_adapters_set_adapter_and_z_vector_api():
    model = tiny_llama()
    input_ids = token_ids()
    peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM"))
    peft_model.add_adapter(
        "paper",
        SVFConfig(task_type="CAUSAL_LM", scaling="plain", target_modules=svf_target_modules(model, attention=True)),
    )
    assert len(z_vector_lengths(peft_model, "paper")) == 2 * 7 and len(z_vector_lengths(peft_model)) == 2 * 3
    randomise_z(peft_model, "default", seed=1)
    randomise_z(peft_model, "paper", seed=2)
    default_logits = logits_of(peft_model, input_ids)

    peft_model.set_adapter("paper")
    paper_logits = logits_of(peft_model, input_ids)
    assert max_diff(paper_logits, default_logits) > 1e-3
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(".svf_z.paper") for name in trainable)
    peft_model.set_adapter("default")
    assert torch.equal(logits_of(peft_model, input_ids), default_logits)

    # The z API: read, write back, and the errors a later expert-mixing helper relies on.
    z = get_z_vectors(peft_model, "paper")
    peft_model.base_model.set_adapter(["default", "paper"])  # both active: which one is meant must be said
    with pytest.raises(
        ValueError,
        match=r"Pass adapter_name=...: the model has SVF adapters \['default', 'paper'\] "
        r"and 2 of them are active",
    ):
        get_z_vectors(peft_model)
    peft_model.set_adapter("default")
    set_z_vectors(peft_model, {name: torch.ones_like(v) for name, v in z.items()}, adapter_name="paper")
    peft_model.set_adapter("paper")
    assert torch.equal(logits_of(peft_model, input_ids), logits_of(tiny_llama(), input_ids))  # plain z = 1 is W
    set_z_vectors(peft_model, z, adapter_name="paper")
    assert torch.equal(logits_of(peft_model, input_ids), paper_logits)

    name = "model.layers.1.mlp.down_proj"
    with pytest.raises(ValueError, match=rf"expert 'math': the z vector for {name} has shape \(31,\).*\(32,\)"):
        check_z_vectors(peft_model, {**z, name: torch.zeros(31)}, adapter_name="paper", source="expert 'math'")
    with pytest.raises(
        ValueError,
        match=r"names 1 module\(s\) that SVF adapter 'default' does not adapt: "
        r"model.layers.0.self_attn.q_proj",
    ):
        check_z_vectors(peft_model, {"model.layers.0.self_attn.q_proj": torch.zeros(32)}, adapter_name="default")
    with pytest.raises(ValueError, match=r"lacks z vectors for 1 module\(s\).*model.layers.0.mlp.up_proj"):
        set_z_vectors(
            peft_model,
            {k: v for k, v in get_z_vectors(peft_model, "default").items() if k != "model.layers.0.mlp.up_proj"},
            adapter_name="default",
        )
    with pytest.raises(ValueError, match=rf"z vector for {name} must hold finite floats"):
        check_z_vectors(peft_model, {name: torch.full((32,), float("nan"))}, adapter_name="paper", strict=False)
    with pytest.raises(ValueError, match=r"no SVF adapter 'music'; its SVF adapters are \['default', 'paper'\]"):
        get_z_vectors(peft_model, "music")
    peft_model.merge_adapter()
    with pytest.raises(ValueError, match=r"merged into .*unmerge_adapter\(\)"):
        set_z_vectors(peft_model, z, adapter_name="paper")


# ------------------------------------------------------------------------------------- 7. Trainer ----
PRETRAIN_STEPS = 40
SVF_STEPS = 30
TRAIN_BLOCKS = 16
# Measured loss on the 16 training blocks, before -> after 30 SVF steps (seed 0, one thread):
#   sigmoid_renorm, MLP targets, lr 0.1:            6.5760 -> 6.5719 (-0.0041)
#   plain, MLP + attention targets, lr 0.2:         6.5760 -> 6.5305 (-0.0455)
# 512 and 1,536 trainable numbers move a 660k-parameter model only a little; the thresholds are half of that.
SVF_RUNS = {
    "sigmoid_renorm": dict(learning_rate=0.1, attention=False, min_drop=0.002),
    "plain": dict(learning_rate=0.2, attention=True, min_drop=0.02),
}


@pytest.fixture(scope="module")
def text_blocks():
    tokenizer = data.load_default_tokenizer()
    play = data.load_shakespeare_corpus()["train"].select([0])
    blocks = data.group_texts_for_causal_lm(play, tokenizer, 64)
    return {"svf": blocks.select(range(TRAIN_BLOCKS)), "pretrain": blocks.select(range(TRAIN_BLOCKS, len(blocks)))}


def small_causal_lm():
    return SlamV1ForCausalLM(SlamV1Config(**TINY_V1_FIELDS))


@pytest.fixture(scope="module")
def pretrained_state(text_blocks, tmp_path_factory):
    """A SLAM v1 briefly trained in full, so its MLPs carry something for SVF to rescale."""
    set_seed(0)
    model = small_causal_lm()
    args = training_args(
        tmp_path_factory.mktemp("pretrain"),
        per_device_train_batch_size=8,
        max_steps=PRETRAIN_STEPS,
        learning_rate=3e-3,
        warmup_steps=3,
        logging_steps=1000,
    )
    Trainer(model=model, args=args, train_dataset=text_blocks["pretrain"]).train()
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("scaling", SCALINGS)
def test_trainer_trains_only_the_z_vectors(scaling, text_blocks, pretrained_state, tmp_path):
    run = SVF_RUNS[scaling]
    set_seed(0)
    model = small_causal_lm()
    model.load_state_dict(pretrained_state)
    targets = svf_target_modules(model, attention=run["attention"])
    peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM", scaling=scaling, target_modules=targets))
    start_z = get_z_vectors(peft_model)
    args = training_args(
        tmp_path,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=TRAIN_BLOCKS,
        max_steps=SVF_STEPS,
        learning_rate=run["learning_rate"],
        logging_steps=10,
    )
    trainer = Trainer(model=peft_model, args=args, train_dataset=text_blocks["svf"], eval_dataset=text_blocks["svf"])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"\nSVF {scaling}: loss {before:.4f} -> {after:.4f} ({sum(z.numel() for z in start_z.values())} z entries)")
    assert before - after > run["min_drop"], (before, after)

    # Every base weight is bit-identical; a wrapped Linear keeps its weights under `<module>.base_layer.`.
    wrapped = tuple(f"{name}." for name in svf_layers(peft_model))
    trained = peft_model.base_model.model.state_dict()

    def trained_key(key):
        module = next((prefix for prefix in wrapped if key.startswith(prefix)), None)
        return key if module is None else f"{module}base_layer.{key[len(module) :]}"

    changed = [key for key, value in pretrained_state.items() if not torch.equal(trained[trained_key(key)], value)]
    assert changed == [], f"base weights changed: {changed[:5]}"
    moved = [name for name, z in get_z_vectors(peft_model).items() if not torch.equal(z, start_z[name])]
    assert len(moved) == len(start_z)


# ---------------------------------------------------------------------------------------- 8. Hub ----
def test_push_to_hub_and_load_by_repo_id(hub_server, tmp_path):
    repo_id = f"{USER}/bert-svf-expert"
    input_ids = token_ids()
    peft_model = get_peft_model(tiny_bert(seed=5), SVFConfig(task_type="SEQ_CLS"))
    randomise_z(peft_model)
    with torch.no_grad():  # the classification head is trained in full and travels with the adapter
        peft_model.base_model.model.classifier.modules_to_save["default"].weight.mul_(2)
    logits = logits_of(peft_model, input_ids)
    peft_model.push_to_hub(repo_id)

    api = HfApi(endpoint=hub_server.url, token="hf_dummy_local_test_token")
    files = set(api.list_repo_files(repo_id))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files, files
    loaded = PeftModel.from_pretrained(tiny_bert(seed=5), repo_id).eval()
    assert type(loaded.peft_config["default"]) is SVFConfig
    assert torch.equal(logits_of(loaded, input_ids), logits)
    z = load_z_vectors(repo_id)
    assert z.keys() == set(expected_mlp_names(tiny_bert()))
    assert all(torch.equal(z[name], value) for name, value in get_z_vectors(peft_model).items())
    assert hub_server.unrouted == []


# ---------------------------------------------------------------------------------- 9. bad input ----
def test_non_linear_target_is_named():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    with pytest.raises(
        TypeError,
        match=r"nn.Linear layers only, but target module transformer.h.0.mlp.c_fc is "
        r"transformers.pytorch_utils.Conv1D",
    ):
        get_peft_model(model, SVFConfig(target_modules=["c_fc"]))
    with pytest.raises(
        ValueError,
        match=r"no default target modules for model_type 'gpt2': pass "
        r"SVFConfig\(target_modules=\[...\]\)",
    ):
        get_peft_model(GPT2LMHeadModel(model.config), SVFConfig())


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match=r"SVFConfig\(scaling='relu'\) is not a known form: use 'sigmoid_renorm'"):
        SVFConfig(scaling="relu")
    with pytest.raises(ValueError, match=r"SVFConfig\(scaling='plain', init_z=0.5\).*reproduces W only at z = 1"):
        SVFConfig(scaling="plain", init_z=0.5)
    with pytest.raises(ValueError, match=r"init_z=100.0\) is outside \[-30, 30\]"):
        SVFConfig(init_z=100)
    with pytest.raises(ValueError, match=r"no default SVF targets for model_type 'gpt2'"):
        svf_target_modules("gpt2")


@pytest.fixture
def saved_llama_adapter(tmp_path):
    peft_model = get_peft_model(tiny_llama(), SVFConfig(task_type="CAUSAL_LM"))
    randomise_z(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_wrong_length_z_in_adapter_file_is_named(saved_llama_adapter):
    path = saved_llama_adapter / "adapter_model.safetensors"
    weights = load_file(path)
    key = "base_model.model.model.layers.1.mlp.down_proj.svf_z"
    weights[key] = weights[key][:31].clone()
    save_file(weights, path, metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"SVF adapter 'default': the z vector loaded for model.layers.1.mlp.down_proj "
        r"has shape \(31,\), but this module has 32 singular values",
    ):
        PeftModel.from_pretrained(tiny_llama(), str(saved_llama_adapter))


def test_adapter_of_another_base_model_is_named(saved_llama_adapter):
    with pytest.raises(
        ValueError,
        match=r"the z vector loaded for model.layers.0.mlp.\w+_proj has shape \(32,\), "
        r"but this module has 37 singular values.*saved for another base model",
    ):
        PeftModel.from_pretrained(tiny_llama(hidden_size=48), str(saved_llama_adapter))
    with pytest.raises(
        ValueError,
        match=r"SVF adapter 'default' does not fit this model: it lacks z vectors for 3 "
        r"adapted module\(s\) \(model.layers.2.mlp.down_proj, ",
    ):
        PeftModel.from_pretrained(tiny_llama(num_hidden_layers=3), str(saved_llama_adapter))
    with pytest.raises(
        ValueError,
        match=r"it has z vectors for 3 module\(s\) this model has no SVF layer for "
        r"\(model.layers.1.mlp.down_proj, ",
    ):
        PeftModel.from_pretrained(tiny_llama(num_hidden_layers=1), str(saved_llama_adapter))


# --------------------------------------------------------------------------------- 10. import hygiene ----
def test_remote_code_never_imports_peft():
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    package = os.path.join(REPO_ROOT, "slam_hf")
    entries = ["configuration_slam.py", "modeling_slam.py", "processing_slam.py", "image_processing_slam.py"]
    remote = set()
    for entry in entries:
        path = os.path.join(package, entry)
        remote |= {path, *get_relative_import_files(path)}
    assert not [path for path in remote if os.sep + "adapters" + os.sep in path]
    for path in sorted(remote):
        assert not [name for name in get_imports(path) if name.split(".")[0] == "peft"], path

    # adapters/svf.py and its parts (svf_*.py) import torch, transformers and peft (besides the standard library)
    # and one another, nothing else
    adapters = os.path.join(package, "adapters")
    for filename in sorted(name for name in os.listdir(adapters) if name.startswith("svf")):
        absolute, relative = imports_of(os.path.join(adapters, filename))
        assert absolute - set(sys.stdlib_module_names) <= {"torch", "transformers", "peft"}, (filename, absolute)
        assert all(module.startswith("svf") for module in relative), (filename, relative)


def imports_of(path):
    """The top-level packages a file imports, and the sibling modules it imports relatively (`from .x import`)."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            relative.add(node.module or "")
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module.split(".")[0])
    return absolute, relative
