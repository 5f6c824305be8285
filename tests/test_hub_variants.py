"""Everything a user pushes to and pulls from the Hub, against the local Hub (tests/hub_server.py).

1. Every variant round-trips by repo id: SLAM v1, v2 and the latent loop (causal LM + the default tokenizer; the
   loop with its adaptive exit on, which must spend the same core iterations in generate()) and SLAM v3 (the
   image-text model + SlamProcessor) are pushed with `push_to_hub`, then loaded in a fresh interpreter that cannot
   import slam_hf (empty HF_HOME, trust_remote_code=True) through the head Auto class(es), bare `AutoModel`,
   `AutoTokenizer` and `AutoProcessor`. Logits, trunk states, token ids, processor tensors and a greedy
   `generate()` are identical to the in-process originals. One fresh process per variant does every check.
2. `Trainer(push_to_hub=True, hub_strategy="end")` + `trainer.push_to_hub()`: the repo gives the trained logits.
3. A LoRA adapter on a pushed base: the adapter repo holds only the adapter (pointing at the base repo id) and
   `PeftModel.from_pretrained(base by repo id, adapter repo)` reproduces the in-process PEFT logits.
4. `datasets`: `push_to_hub` (two splits, sharded, a second config, a re-push that drops shards, a branch) and
   `load_dataset` (default, config, revision pin, branch, streaming) return the pushed rows.
5. Transfer faults fail loudly: a truncated download raises the size check and leaves no file in the cache (the
   next load, fault gone, works); a dropped connection is retried (huggingface_hub 2.x) or raises (1.5), never
   leaving a short file; Range reads get exact slices (206); the "corrupt" fault really serves different bytes of
   the same size (the hook the checksum-manifest tests use); a truncated safetensors file committed to the repo
   raises an error naming the file, with or without slam_hf's checksums.json.

Every test also checks that no request hit an endpoint the local Hub lacks (`hub_server.unrouted`).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_helpers import is_remote_module, run_fresh
from huggingface_hub import HfApi, hf_hub_download
from PIL import Image
from safetensors.torch import load_file
from slam_common import single_threaded_torch
from slam_tester import SlamLoopModelTester, SlamV1ModelTester, SlamV2ModelTester, SlamV3ModelTester
from transformers import AutoModelForCausalLM

import slam_hf
from slam_hf.data import load_default_tokenizer
from slam_hf.processing_slam import train_bpe_tokenizer

USER = "slam-tester"
TOKEN = "hf_dummy_local_test_token"
TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler"]
PROMPT = "O Romeo, Romeo,"
NEW_TOKENS = 6

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


@pytest.fixture(autouse=True)
def every_request_has_an_endpoint(hub_server):
    """No client call (in this process or a fresh one) hit an API the local Hub lacks."""
    yield
    assert hub_server.unrouted == []


def api_for(hub):
    return HfApi(endpoint=hub.url, token=TOKEN)


def greedy(new_tokens=NEW_TOKENS):
    """Exactly `new_tokens` greedy tokens (EOS suppressed until then)."""
    return dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)


def assert_equal(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(actual, expected), f"{what}: max |diff| {(actual - expected).abs().max().item()}"


def read_json(repo_id, filename, **kwargs):
    with open(hf_hub_download(repo_id, filename, **kwargs)) as f:
        return json.load(f)


# ------------------------------------------------------------------------ 1. every variant, by repo id ----
CAUSAL_LOADER = """
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
repo = ARGS["repo"]
results = {}
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
batch = tokenizer(ARGS["texts"], padding=True, return_tensors="pt")
prompt = tokenizer(ARGS["prompt"], return_tensors="pt")
results["tokenizer_class"] = type(tokenizer).__name__
results["batch_ids"], results["batch_mask"], results["prompt_ids"] = (
    batch["input_ids"], batch["attention_mask"], prompt["input_ids"])
results["special_ids"] = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
results["vocab_size"] = len(tokenizer)

model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
results["head"] = (type(model).__name__, module_of(model))
with torch.no_grad():
    results["logits"] = model(**batch).logits
generated = model.generate(**prompt, **ARGS["generate"])
results["generated"] = generated
results["decoded"] = tokenizer.decode(generated[0], skip_special_tokens=True)
results["loop_statistics"] = getattr(model, "loop_statistics", None)  # the latent loop's core iterations
try:
    trunk = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    results["trunk"] = (type(trunk).__name__, module_of(trunk))
    with torch.no_grad():
        results["last_hidden_state"] = trunk(**batch).last_hidden_state
except Exception as err:  # reported (with the reason) by the test, after every other check
    results["trunk_error"] = f"{type(err).__name__}: {err}"
finish(results)
"""


def tiny_causal(tester, tokenizer):
    torch.manual_seed(0)
    # init std 0.2 (not 0.02): greedy decoding of the random model moves between tokens
    config = tester.get_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    return tester.causal_lm_class(config).eval()


@pytest.mark.parametrize(
    "tester_class",
    [SlamV1ModelTester, SlamV2ModelTester, SlamLoopModelTester],
    ids=["slam_v1", "slam_v2", "slam_loop"],
)
def test_causal_lm_and_tokenizer_round_trip_by_repo_id(hub_server, tmp_path, tester_class):
    tester = tester_class()
    tokenizer = load_default_tokenizer()
    model = tiny_causal(tester, tokenizer)
    model_type = model.config.model_type
    repo_id = f"{USER}/{model_type.replace('_', '-')}-tiny"
    model_commit = model.push_to_hub(repo_id)
    tokenizer_commit = tokenizer.push_to_hub(repo_id)
    assert model_commit.oid != tokenizer_commit.oid

    api = api_for(hub_server)
    files = set(api.list_repo_files(repo_id))
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "modeling_slam.py",
        "configuration_slam.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files
    auto_map = read_json(repo_id, "config.json")["auto_map"]
    assert auto_map["AutoConfig"] == f"configuration_slam.{type(model.config).__name__}"
    assert auto_map["AutoModelForCausalLM"] == f"modeling_slam.{type(model).__name__}"

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    prompt = tokenizer(PROMPT, return_tensors="pt")
    assert batch["attention_mask"].min() == 0  # the rows differ in length: padding is exercised
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.base_model(**batch).last_hidden_state
    generated = model.generate(**prompt, **greedy())
    assert generated.shape == (1, prompt["input_ids"].shape[1] + NEW_TOKENS)
    assert len(set(generated[0, -NEW_TOKENS:].tolist())) > 1  # not one token repeated: a real comparison
    loop_statistics = getattr(model, "loop_statistics", None)
    if loop_statistics is not None:  # the latent loop exited some tokens early and ran others deeper
        assert 1 < loop_statistics["new_mean_iterations"] < loop_statistics["max_iterations"], loop_statistics

    out = run_fresh(
        hub_server, tmp_path, CAUSAL_LOADER, dict(repo=repo_id, texts=TEXTS, prompt=PROMPT, generate=greedy())
    )
    # the tokenizer
    assert out["tokenizer_class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert_equal(out["batch_ids"], batch["input_ids"], "token ids")
    assert_equal(out["batch_mask"], batch["attention_mask"], "attention mask")
    assert_equal(out["prompt_ids"], prompt["input_ids"], "prompt ids")
    assert out["special_ids"] == [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert out["vocab_size"] == len(tokenizer) == model.config.vocab_size
    # the causal LM, from the repo's code
    assert out["head"][0] == type(model).__name__ and is_remote_module(out["head"][1]), out["head"]
    assert_equal(out["logits"], logits, "logits")
    assert_equal(out["generated"], generated, "greedy generate")
    assert out["decoded"] == tokenizer.decode(generated[0], skip_special_tokens=True)
    assert out["loop_statistics"] == loop_statistics
    # the bare trunk through AutoModel (needs "AutoModel" in the pushed config's auto_map)
    assert "trunk_error" not in out, (
        f"AutoModel.from_pretrained({repo_id!r}, trust_remote_code=True) failed in a fresh process: "
        f"{out['trunk_error']}; pushed auto_map = {auto_map}"
    )
    assert out["trunk"][0] == type(model.base_model).__name__ and is_remote_module(out["trunk"][1]), out["trunk"]
    assert_equal(out["last_hidden_state"], hidden, "AutoModel last_hidden_state")


V3_LOADER = """
from transformers import AutoModel, AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoProcessor, AutoTokenizer
repo = ARGS["repo"]
results = {}
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
results["processor"] = (type(processor).__name__, module_of(processor), type(processor.image_processor).__name__,
                        module_of(processor.image_processor))
images = [image.numpy() for image in ARGS["images"]]  # (H, W, 3) uint8, as np.asarray(PIL image)
inputs = processor(images=images, text=ARGS["texts"], padding=True, return_tensors="pt")
results["inputs"] = dict(inputs)
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
results["answer_ids"] = tokenizer(ARGS["answers"], padding=True, return_tensors="pt")["input_ids"]

decoder_input_ids = ARGS["decoder_input_ids"]
for name, auto in (("image_text", AutoModelForImageTextToText), ("seq2seq", AutoModelForSeq2SeqLM)):
    model = auto.from_pretrained(repo, trust_remote_code=True).eval()
    results[name] = (type(model).__name__, module_of(model))
    with torch.no_grad():
        results[name + "_logits"] = model(**inputs, decoder_input_ids=decoder_input_ids).logits
results["generated"] = model.generate(**inputs, **ARGS["generate"])
try:
    trunk = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    results["trunk"] = (type(trunk).__name__, module_of(trunk))
    with torch.no_grad():
        results["last_hidden_state"] = trunk(**inputs, decoder_input_ids=decoder_input_ids).last_hidden_state
except Exception as err:
    results["trunk_error"] = f"{type(err).__name__}: {err}"
finish(results)
"""


def test_slam_v3_model_and_processor_round_trip_by_repo_id(hub_server, tmp_path):
    tester = SlamV3ModelTester()
    corpus = [f"the digit {d} is drawn in {c} on the left" for d in range(10) for c in ("red", "green", "blue")]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=300)
    processor = slam_hf.SlamProcessor(
        slam_hf.SlamImageProcessor(
            size={"height": tester.image_size, "width": tester.image_size}, patch_size=tester.patch_size
        ),
        tokenizer,
    )
    torch.manual_seed(0)
    model = tester.conditional_generation_class(tester.get_config(vocab_size=len(tokenizer))).eval()
    assert processor.image_token_id == model.config.image_token_id

    repo_id = f"{USER}/slam-v3-tiny"
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)
    files = set(api_for(hub_server).list_repo_files(repo_id))
    assert {
        "config.json",
        "model.safetensors",
        "modeling_slam.py",
        "processor_config.json",
        "processing_slam.py",
        "image_processing_slam.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files
    auto_map = read_json(repo_id, "config.json")["auto_map"]
    processor_map = read_json(repo_id, "processor_config.json")["auto_map"]
    assert processor_map == {"AutoProcessor": "processing_slam.SlamProcessor"}

    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(12, 16, 3) * 255).astype("uint8")) for _ in range(2)]
    texts = ["which digit is <image> here", "<image> colour"]
    answers = ["the digit 3", "red"]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [4, 4]
    assert inputs["attention_mask"].min() == 0
    decoder_input_ids = torch.tensor([[1, 7, 8, 9, 10], [1, 11, 12, 13, 14]])
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=decoder_input_ids).logits
        hidden = model.model(**inputs, decoder_input_ids=decoder_input_ids).last_hidden_state
    generated = model.generate(**inputs, **greedy(5))
    assert generated.shape == (2, 6) and not torch.equal(generated[0], generated[1])

    out = run_fresh(
        hub_server,
        tmp_path,
        V3_LOADER,
        dict(
            repo=repo_id,
            images=[torch.from_numpy(np.asarray(image)) for image in images],
            texts=texts,
            answers=answers,
            decoder_input_ids=decoder_input_ids,
            generate=greedy(5),
        ),
    )
    name, module, image_name, image_module = out["processor"]
    assert (name, image_name) == ("SlamProcessor", "SlamImageProcessor")
    assert is_remote_module(module) and is_remote_module(image_module), out["processor"]
    assert sorted(out["inputs"]) == sorted(inputs.keys())
    for key in inputs:
        assert_equal(out["inputs"][key], inputs[key], f"processor output {key}")
    assert_equal(out["answer_ids"], tokenizer(answers, padding=True, return_tensors="pt")["input_ids"], "answer ids")
    for head in ("image_text", "seq2seq"):
        assert out[head][0] == "SlamV3ForConditionalGeneration" and is_remote_module(out[head][1]), out[head]
        assert_equal(out[head + "_logits"], logits, f"{head} logits")
    assert_equal(out["generated"], generated, "greedy generate")
    assert "trunk_error" not in out, (
        f"AutoModel.from_pretrained({repo_id!r}, trust_remote_code=True) failed in a fresh process: "
        f"{out['trunk_error']}; pushed auto_map = {auto_map}"
    )
    assert out["trunk"][0] == "SlamV3Model" and is_remote_module(out["trunk"][1]), out["trunk"]
    assert_equal(out["last_hidden_state"], hidden, "AutoModel last_hidden_state")


# ------------------------------------------------------------------------------------- 2. Trainer ----
LOGITS_LOADER = """
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(ARGS["repo"], trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(input_ids=ARGS["input_ids"]).logits
results = {"head": (type(model).__name__, module_of(model)), "logits": logits}
if ARGS.get("adapter_repo"):
    from peft import PeftModel
    peft_model = PeftModel.from_pretrained(model, ARGS["adapter_repo"]).eval()
    with torch.no_grad():
        results["peft_logits"] = peft_model(input_ids=ARGS["input_ids"]).logits
    results["peft_class"] = type(peft_model).__name__
    results["peft_base"] = peft_model.peft_config["default"].base_model_name_or_path
finish(results)
"""


def tiny_v1(seed=0):
    torch.manual_seed(seed)
    return SlamV1ModelTester().causal_lm_class(SlamV1ModelTester().get_config())


def token_rows(rows=16, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, SlamV1ModelTester.vocab_size, (rows, length), generator=generator)


def test_trainer_push_to_hub_end(hub_server, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny_v1()
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rows = token_rows()
    dataset = Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()})
    repo_id = f"{USER}/slam-v1-trained"
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        push_to_hub=True,
        hub_model_id=repo_id,
        hub_strategy="end",
        hub_token=TOKEN,
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    commit = trainer.push_to_hub(commit_message="end of training")
    trained = trainer.model.eval()
    assert not torch.equal(trained.state_dict()["lm_head.weight"], initial["lm_head.weight"])

    api = api_for(hub_server)
    assert api.model_info(repo_id).sha == commit.oid
    files = set(api.list_repo_files(repo_id))
    assert {
        "config.json",
        "model.safetensors",
        "modeling_slam.py",
        "configuration_slam.py",
        "README.md",
        "training_args.bin",
    } <= files
    card = Path(hf_hub_download(repo_id, "README.md")).read_text()
    assert "generated_from_trainer" in card and "training_steps: 4" in card  # Trainer's own model card

    input_ids = token_rows(rows=2, length=15, seed=1)
    with torch.no_grad():
        trained_logits = trained(input_ids=input_ids).logits
        initial_model = tiny_v1()
        assert not torch.equal(initial_model(input_ids=input_ids).logits, trained_logits)
    out = run_fresh(hub_server, tmp_path, LOGITS_LOADER, dict(repo=repo_id, input_ids=input_ids))
    assert out["head"][0] == "SlamV1ForCausalLM" and is_remote_module(out["head"][1]), out["head"]
    assert_equal(out["logits"], trained_logits, "logits of the Trainer-pushed model")


# ---------------------------------------------------------------------------------------- 3. PEFT ----
def test_lora_adapter_on_pushed_base(hub_server, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_repo, adapter_repo = f"{USER}/slam-v1-base", f"{USER}/slam-v1-lora"
    tiny_v1(seed=3).push_to_hub(base_repo)
    base = AutoModelForCausalLM.from_pretrained(base_repo).eval()  # by repo id, as a user would
    assert base.name_or_path == base_repo
    input_ids = token_rows(rows=2, length=15, seed=2)
    with torch.no_grad():
        base_logits = base(input_ids=input_ids).logits

    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    )
    lora_b = [param for name, param in peft_model.named_parameters() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(param) == 0 for param in lora_b)  # LoRA starts as the identity
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in lora_b:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=input_ids).logits
    assert not torch.equal(peft_logits, base_logits)
    peft_model.push_to_hub(adapter_repo)

    api = api_for(hub_server)
    files = set(api.list_repo_files(adapter_repo))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert files <= {"adapter_config.json", "adapter_model.safetensors", "README.md", ".gitattributes"}, files
    adapter_config = read_json(adapter_repo, "adapter_config.json")
    assert adapter_config["base_model_name_or_path"] == base_repo
    assert adapter_config["peft_type"] == "LORA" and sorted(adapter_config["target_modules"]) == [
        "down_proj",
        "q_proj",
        "v_proj",
    ]
    weights = load_file(hf_hub_download(adapter_repo, "adapter_model.safetensors"))
    assert weights and all("lora_A" in key or "lora_B" in key for key in weights), sorted(weights)
    adapted_layers = sum(1 for name, _ in base.named_modules() if name.endswith(("q_proj", "v_proj", "down_proj")))
    assert len(weights) == 2 * adapted_layers

    out = run_fresh(
        hub_server, tmp_path, LOGITS_LOADER, dict(repo=base_repo, adapter_repo=adapter_repo, input_ids=input_ids)
    )
    assert is_remote_module(out["head"][1]), out["head"]
    assert_equal(out["logits"], base_logits, "base logits")
    assert out["peft_class"] == "PeftModelForCausalLM" and out["peft_base"] == base_repo
    assert_equal(out["peft_logits"], peft_logits, "PEFT logits")


# ------------------------------------------------------------------------------------ 4. datasets ----
def test_datasets_push_and_load(hub_server, tmp_path):
    from datasets import Dataset, DatasetDict, load_dataset

    repo_id = f"{USER}/slam-rows"
    api = api_for(hub_server)
    train = {
        "input_ids": [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14], [15, 16]],
        "text": ["to be", "or not", "to be", "that is", "the question"],
        "label": [0, 1, 0, 1, 2],
    }
    test = {"input_ids": [[20, 21], [22]], "text": ["whether 'tis", "nobler"], "label": [2, 0]}
    first = DatasetDict(train=Dataset.from_dict(train), test=Dataset.from_dict(test)).push_to_hub(
        repo_id, num_shards={"train": 2, "test": 1}
    )
    first_sha = api.dataset_info(repo_id).sha
    assert {f"data/train-0000{i}-of-00002.parquet" for i in range(2)} <= set(
        api.list_repo_files(repo_id, repo_type="dataset")
    )
    extra = {"score": [0.5, 1.5, -2.0]}
    Dataset.from_dict(extra).push_to_hub(repo_id, config_name="extra")
    new_train = {"input_ids": [[30], [31, 32]], "text": ["once more", "unto the breach"], "label": [1, 1]}
    Dataset.from_dict(new_train).push_to_hub(repo_id, split="train")  # one shard now: the two old ones go
    dev_rows = {"input_ids": [[40]], "text": ["dev"], "label": [0]}
    Dataset.from_dict(dev_rows).push_to_hub(repo_id, split="train", revision="dev")
    assert first.oid == first_sha

    files = set(api.list_repo_files(repo_id, repo_type="dataset"))
    assert {
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
        "extra/train-00000-of-00001.parquet",
    } <= files
    assert not any("of-00002" in name for name in files), files  # the re-push deleted the old shards
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    assert sorted(branch.name for branch in refs.branches) == ["dev", "main"]
    card_text = Path(hf_hub_download(repo_id, "README.md", repo_type="dataset")).read_text()
    assert "dataset_info:" in card_text and "config_name: extra" in card_text
    info = api.dataset_info(repo_id)
    assert {config["config_name"] for config in info.card_data.get("configs")} == {"default", "extra"}
    # expand=True (last commit + security status per file) and paths-info, as HfFileSystem and the Hub UI use
    entries = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, repo_type="dataset", path_in_repo="data", expand=True)
    }
    assert entries["data/test-00000-of-00001.parquet"].last_commit.oid == first_sha
    assert entries["data/train-00000-of-00001.parquet"].last_commit.oid != first_sha
    assert entries["data/train-00000-of-00001.parquet"].security["safe"] is True
    paths = api.get_paths_info(repo_id, ["README.md", "extra", "missing.txt"], repo_type="dataset", expand=True)
    assert [(type(p).__name__, p.path) for p in paths] == [("RepoFile", "README.md"), ("RepoFolder", "extra")]

    loaded = load_dataset(repo_id)
    assert sorted(loaded) == ["test", "train"]
    assert loaded["train"].to_dict() == new_train and loaded["test"].to_dict() == test
    assert load_dataset(repo_id, "extra", split="train").to_dict() == extra
    assert load_dataset(repo_id, split="train", revision="dev").to_dict() == dev_rows
    pinned = load_dataset(repo_id, split="train", revision=first_sha)
    assert pinned.to_dict() == train  # both shards of the first push, in order
    streamed = list(load_dataset(repo_id, split="test", streaming=True))
    assert streamed == [dict(zip(test, values)) for values in zip(*test.values())]
    downloads = [
        path
        for method, path in hub_server.request_log
        if method == "GET" and path.startswith(f"/datasets/{repo_id}/resolve/") and path.endswith(".parquet")
    ]
    assert len(downloads) >= 5  # every row above came from the server


# ------------------------------------------------------------------------------ 5. transfer faults ----
def cached_weights(repo_id):
    """Files named model.safetensors in the repo's cache snapshots, and complete blobs."""
    root = os.path.join(os.environ["HF_HUB_CACHE"], f"models--{repo_id.replace('/', '--')}")
    snapshots = [
        os.path.join(dirpath, name)
        for dirpath, _, names in os.walk(os.path.join(root, "snapshots"))
        for name in names
        if name == "model.safetensors"
    ]
    blobs_dir = os.path.join(root, "blobs")
    blobs = (
        [name for name in os.listdir(blobs_dir) if not name.endswith(".incomplete")] if os.path.isdir(blobs_dir) else []
    )
    return snapshots, blobs


def test_truncated_download_fails_loudly_and_leaves_nothing(hub_server):
    repo_id = f"{USER}/slam-v1-truncated-transfer"
    model = tiny_v1(seed=4).eval()
    model.push_to_hub(repo_id)
    weights_sha = api_for(hub_server).model_info(repo_id, files_metadata=True)
    lfs_sha = next(s.lfs.sha256 for s in weights_sha.siblings if s.rfilename == "model.safetensors")
    input_ids = token_rows(rows=1, length=15, seed=5)
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits

    hub_server.faults[(repo_id, "model.safetensors")] = "truncate"
    with pytest.raises(OSError, match="Consistency check failed") as err:
        AutoModelForCausalLM.from_pretrained(repo_id)
    assert "model.safetensors" in str(err.value)
    assert hub_server.fault_log == [(repo_id, "model.safetensors", "truncate")]
    snapshots, blobs = cached_weights(repo_id)
    assert snapshots == [] and lfs_sha not in blobs  # no half file where the next load would find it

    del hub_server.faults[(repo_id, "model.safetensors")]
    loaded = AutoModelForCausalLM.from_pretrained(repo_id).eval()  # no force_download needed
    with torch.no_grad():
        assert_equal(loaded(input_ids=input_ids).logits, expected, "logits after the fault is gone")
    assert len(cached_weights(repo_id)[0]) == 1


def test_dropped_connection_retries_or_fails_loudly(hub_server):
    """A connection that hangs up half-way through model.safetensors (once). huggingface_hub 2.x retries the body
    (RemoteProtocolError is in its retry list) and must end with the exact file; 1.5 does not retry it and must
    raise, with no weights file cached. Either way the next load gives the exact model."""
    repo_id = f"{USER}/slam-v1-dropped"
    model = tiny_v1(seed=6).eval()
    model.push_to_hub(repo_id)
    input_ids = token_rows(rows=1, length=15, seed=7)
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
    hub_server.faults[(repo_id, "model.safetensors")] = ("drop", 1)  # the first GET hangs up half-way
    try:
        loaded = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    except Exception as err:
        assert "peer closed connection without sending complete message body" in str(err), repr(err)
        assert cached_weights(repo_id)[0] == []
        loaded = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    with torch.no_grad():
        assert_equal(loaded(input_ids=input_ids).logits, expected, "logits after the dropped connection")
    assert hub_server.fault_log == [(repo_id, "model.safetensors", "drop")]
    weights_gets = [
        status
        for method, path, status in hub_server.response_log
        if method == "GET" and "/resolve/" in path and path.endswith("/model.safetensors")
    ]
    assert len(weights_gets) == 2 and set(weights_gets) <= {200, 206}, weights_gets


def upload_tiny(hub, tmp_path, repo_id, seed):
    """Save a tiny v1 and upload the folder; return the bytes of its model.safetensors."""
    tiny_v1(seed=seed).save_pretrained(tmp_path / "saved")
    api = api_for(hub)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "saved")
    return (tmp_path / "saved" / "model.safetensors").read_bytes()


def test_range_reads_get_exact_slices(hub_server, tmp_path):
    from huggingface_hub import HfFileSystem

    repo_id = f"{USER}/slam-v1-ranges"
    original = upload_tiny(hub_server, tmp_path, repo_id, seed=7)
    fs = HfFileSystem(endpoint=hub_server.url, token=TOKEN)
    with fs.open(f"{repo_id}/model.safetensors", "rb", block_size=64) as handle:
        handle.seek(1000)
        assert handle.read(100) == original[1000:1100]
        handle.seek(len(original) - 10)
        assert handle.read() == original[-10:]
    ranged = [
        status
        for method, path, status in hub_server.response_log
        if method == "GET" and path.endswith("/model.safetensors")
    ]
    assert ranged and set(ranged) == {206}, ranged  # only the blocks asked for, never the whole file


def test_corrupt_fault_serves_same_size_different_bytes(hub_server, tmp_path):
    """The hook a checksum test builds on: huggingface_hub itself cannot notice (sizes agree)."""
    repo_id = f"{USER}/slam-v1-corrupt"
    original = upload_tiny(hub_server, tmp_path, repo_id, seed=8)
    hub_server.faults[(repo_id, "model.safetensors")] = ("corrupt", 1)
    served = Path(hf_hub_download(repo_id, "model.safetensors", cache_dir=tmp_path / "c1")).read_bytes()
    assert len(served) == len(original)
    differing = [i for i, (a, b) in enumerate(zip(served, original)) if a != b]
    assert differing == [len(original) // 2]
    clean = Path(hf_hub_download(repo_id, "model.safetensors", cache_dir=tmp_path / "c2")).read_bytes()
    assert clean == original  # ("corrupt", 1): only the first GET was corrupted


@pytest.mark.parametrize("manifest", [True, False], ids=["as_saved", "without_checksum_manifest"])
def test_truncated_safetensors_in_repo_raises_naming_the_file(hub_server, tmp_path, manifest):
    """A model.safetensors cut short in the repo itself (its header promises 1000 bytes more than there are): the
    load fails with an error that names the file, whether or not the repo carries slam_hf's checksum manifest
    (a repo written by other tools, or by an older slam_hf, has none)."""
    repo_id = f"{USER}/slam-v1-truncated-file"
    model = tiny_v1(seed=9)
    model.save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    if not manifest:
        for name in os.listdir(tmp_path / "saved"):
            if name.startswith("checksum"):
                os.remove(tmp_path / "saved" / name)
    api = api_for(hub_server)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "saved")
    with pytest.raises(Exception) as err:
        AutoModelForCausalLM.from_pretrained(repo_id)
    assert "model.safetensors" in str(err.value), f"{type(err.value).__name__}: {err.value}"
