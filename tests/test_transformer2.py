"""Transformer² expert training and two-pass inference (slam_hf/adapters/transformer2.py) on tiny models built from
config.

The toy world: a word-level tokenizer and a 2-layer Llama (hidden 64) pretrained from scratch for 300 steps on
* "up d = x" and "down d = x" with x = d + 1 or d - 1 at random: the model learns the format and that the answer
  is a neighbour of d, but not which neighbour the task word asks for (that is what the experts add);
* filler sentences ("the cat sat on a mat"), the prompts that fit no expert ("other");
* the default classification prompt of each kind of prompt followed by its right label.
A "classify" expert is trained on a second classification template (B) that the base model never saw.

Covers: next-token experts through Trainer (`train_svf_expert`) lower held-out loss on their domain; REINFORCE
(`SVFReinforceTrainer`) raises the reward, its KL to the base is exactly 0 at the start and finite >= 0 after,
its loss equals the formula recomputed by hand, and the base weights stay untouched; dispatch by the prompt
strategy and by the classification expert; "other" generates exactly like the base model, an expert exactly like
the PeftModel with that adapter set, a mixed batch exactly like each label's rows generated alone (Llama and
SLAM v1); CEM finds a known optimum and `fit_mixture` beats uniform weights; experts load from folders; the bad
inputs fail naming the argument or expert.

Everything runs on one torch thread, so numbers reproduce; thresholds were measured (values in comments).
"""

import ast
import logging
import math
import os
import random
import sys

import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from slam_common import single_threaded_torch
from slam_tester import SlamV1ModelTester
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from training_common import training_args as shared_training_args
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from slam_hf import SlamV1ForCausalLM
from slam_hf.adapters.svf import SVFConfig, get_z_vectors, mix_z_vectors, set_z_vectors, svf_target_modules
from slam_hf.adapters.transformer2 import (
    DEFAULT_CLASSIFICATION_TEMPLATE,
    SelfAdaptiveModel,
    SVFReinforceTrainer,
    add_svf_expert,
    cem_search,
    train_svf_expert,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)

FILLER = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "hello", "world"]
TASKS = ["up", "down", "other"]
# A second classification prompt, never seen in pretraining: only the classification expert learns it.
TEMPLATE_B = "{prompt} ? kind of task : {labels} . task :"
PRETRAIN_STEPS = 300


# ---------------------------------------------------------------------------------------- the toy world ----
def make_tokenizer():
    template_words = [
        "classify",
        "task",
        "of",
        "following",
        "prompt",
        "into",
        "one",
        "these",
        "categories",
        "category",
        ":",
        ".",
        ",",
        "kind",
        "?",
    ]
    words = ["[PAD]", "[UNK]", "[EOS]", *map(str, range(10)), "=", *TASKS, *FILLER, *template_words]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(dict.fromkeys(words))}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(cleanup=False)  # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def answer(task, digit):
    return (digit + 1) % 10 if task == "up" else (digit - 1) % 10


def task_prompt(task, rng):
    if task == "other":
        return " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 5)))
    return f"{task} {rng.randrange(10)} ="


def digit_of(prompt):
    return int(prompt.split()[1])


def labelled_prompts(seed, per_task=20):
    rng = random.Random(seed)
    tasks = TASKS * per_task
    return [task_prompt(task, rng) for task in tasks], tasks


def tiny_llama(vocab_size, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def pretraining_texts(rng, count):
    texts = []
    for _ in range(count):
        task = rng.choice(TASKS)
        prompt = task_prompt(task, rng)
        if rng.random() < 0.5:  # the classification prompt, labelled
            texts.append(DEFAULT_CLASSIFICATION_TEMPLATE.format(labels="up, down, other", prompt=prompt) + " " + task)
        elif task == "other":
            texts.append(prompt)
        else:  # either neighbour: which one the task word means is left to the experts
            texts.append(f"{prompt} {(digit_of(prompt) + rng.choice([1, -1])) % 10}")
    return [text + "[EOS]" for text in texts]


def training_args(output_dir, **overrides):
    """The shared test settings (training_common) with a constant learning rate and 32 rows a batch."""
    return shared_training_args(
        output_dir, **{"lr_scheduler_type": "constant", "per_device_train_batch_size": 32, **overrides}
    )


@pytest.fixture(scope="module", autouse=True)
def quiet_transformers():
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    yield
    transformers_logging.set_verbosity(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def base_state(tokenizer):
    """The base model: pretrained in full (plain AdamW loop, ~6 s)."""
    rng = random.Random(0)
    model = tiny_llama(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(PRETRAIN_STEPS):
        batch = tokenizer(pretraining_texts(rng, 32), padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def base_model(tokenizer, base_state):
    model = tiny_llama(len(tokenizer))
    model.load_state_dict(base_state)
    return model.eval()


def domain_dataset(tokenizer, task, seed, count):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = task_prompt(task, rng)
        rows.append({"input_ids": tokenizer(f"{prompt} {answer(task, digit_of(prompt))}[EOS]")["input_ids"]})
    return Dataset.from_list(rows)


def few_shot_examples(task, seed, count):
    rng = random.Random(seed)
    prompts = [task_prompt(task, rng) for _ in range(count)]
    return [(prompt, f" {answer(task, digit_of(prompt))}") for prompt in prompts]


@pytest.fixture(scope="module")
def experts(tokenizer, base_state, tmp_path_factory):
    """ "up" and "down" experts trained with next-token loss (train_svf_expert), MLP + attention targets."""
    model = base_model(tokenizer, base_state)
    targets = svf_target_modules(model, attention=True)
    losses = {}
    for task, seed in (("up", 1), ("down", 2)):
        held_out = domain_dataset(tokenizer, task, seed=100 + seed, count=64)
        trainer = train_svf_expert(
            model,
            domain_dataset(tokenizer, task, seed=seed, count=256),
            training_args(tmp_path_factory.mktemp(task), max_steps=30, learning_rate=0.1),
            processing_class=tokenizer,
            adapter_name=task,
            eval_dataset=held_out,
            svf_config=SVFConfig(task_type="CAUSAL_LM", target_modules=targets),
        )
        with trainer.model.disable_adapter():
            before = trainer.evaluate()["eval_loss"]
        losses[task] = (before, trainer.evaluate()["eval_loss"])
        model = trainer.model  # a PeftModel now: the next expert is added to it
    model.eval()
    return {"peft_model": model, "losses": losses, "z": {task: get_z_vectors(model, task) for task in ("up", "down")}}


# --------------------------------------------------------------------------- 1. next-token experts ----
def test_train_svf_expert_lowers_held_out_loss(experts):
    # Measured: up 0.7832 -> 0.7067, down 0.8448 -> 0.7307. The base model guesses which neighbour is meant, a loss
    # of up to ln 2 on the answer, one of the 5 predicted tokens of a row; the prompt's digit is not predictable.
    for task, (before, after) in experts["losses"].items():
        print(f"\n{task} expert: held-out loss {before:.4f} -> {after:.4f}")
        assert before - after > 0.05, (task, before, after)
    peft_model = experts["peft_model"]
    assert isinstance(peft_model, PeftModel) and {"up", "down"} <= set(peft_model.peft_config)


# ------------------------------------------------------------------------------------- 2. REINFORCE ----
def reinforce_dataset(count=256, target="7"):
    rng = random.Random(0)
    return Dataset.from_list([{"prompt": task_prompt("up", rng), "target": target} for _ in range(count)])


def first_word_reward(prompts, completions, completion_ids, target):
    return [1.0 if completion.split()[:1] == [wanted] else -1.0 for completion, wanted in zip(completions, target)]


def small_reinforce_trainer(peft_model, reward_fn, tokenizer, tmp_path, **settings):
    """A trainer over two prompts, two samples each: for calling compute_loss directly."""
    return SVFReinforceTrainer(
        peft_model,
        reward_fn,
        training_args(tmp_path),
        processing_class=tokenizer,
        train_dataset=reinforce_dataset(2),
        num_samples_per_prompt=2,
        **settings,
    )


def test_reinforce_raises_reward_with_exact_zero_kl_at_start(tokenizer, base_state, tmp_path):
    model = base_model(tokenizer, base_state)
    targets = svf_target_modules(model, attention=True)
    peft_model = add_svf_expert(model, "seven", SVFConfig(task_type="CAUSAL_LM", target_modules=targets))
    start_z = get_z_vectors(peft_model, "seven")
    trainer = SVFReinforceTrainer(
        peft_model,
        first_word_reward,
        training_args(tmp_path, per_device_train_batch_size=8, max_steps=60, learning_rate=0.1, logging_steps=1),
        train_dataset=reinforce_dataset(),
        processing_class=tokenizer,
        kl_coef=0.01,
        num_samples_per_prompt=4,
        max_new_tokens=2,
        baseline="mean",
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    rewards, kls = [entry["reward"] for entry in logs], [entry["kl"] for entry in logs]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(
        f"\nREINFORCE: mean reward, first 10 steps {first:.3f} -> last 10 steps {last:.3f}; "
        f"KL {kls[0]} at step 1, {kls[-1]:.3f} at step {len(kls)}"
    )
    assert len(logs) == 60 and all(1.0 <= entry["completion_length"] <= 2.0 for entry in logs)
    assert last - first > 0.3, (first, last)  # measured -0.662 -> -0.019
    assert kls[0] == 0.0  # the adapter starts exactly at the base model
    assert all(math.isfinite(kl) and kl >= 0 for kl in kls) and kls[-1] > 0

    # Only the z vectors moved; every base weight is bit-identical.
    trained = peft_model.get_base_model().state_dict()
    unwrapped = {key.replace(".base_layer.", "."): value for key, value in trained.items() if "svf_" not in key}
    assert unwrapped.keys() == base_state.keys()
    assert all(torch.equal(unwrapped[key], value) for key, value in base_state.items())
    assert all(not torch.equal(z, start_z[name]) for name, z in get_z_vectors(peft_model, "seven").items())


def test_reinforce_loss_is_the_formula(tokenizer, base_state, tmp_path):
    """compute_loss = mean(-(r - b)·Σ log πθ) + kl_coef · mean(Σ KL), recomputed row by row without padding."""
    peft_model = add_svf_expert(base_model(tokenizer, base_state), "expert")
    generator = torch.Generator().manual_seed(0)
    set_z_vectors(
        peft_model,
        {
            name: z + 0.5 * torch.randn(z.shape, generator=generator)
            for name, z in get_z_vectors(peft_model, "expert").items()
        },
        adapter_name="expert",
    )
    seen = {}

    def spy_reward(prompts, completions, completion_ids, target):
        seen.update(prompts=prompts, completion_ids=completion_ids, target=target)
        return [1.0, -1.0, 0.5, -0.25][: len(prompts)]

    trainer = small_reinforce_trainer(
        peft_model, spy_reward, tokenizer, tmp_path, kl_coef=0.5, max_new_tokens=4, baseline="mean"
    )
    rows = [{"prompt": "up 3 =", "target": "4"}, {"prompt": "the cat sat on a", "target": "mat"}]
    loss = trainer.compute_loss(peft_model, trainer.data_collator(rows))

    assert seen["prompts"] == ["up 3 =", "up 3 =", "the cat sat on a", "the cat sat on a"]
    assert seen["target"] == ["4", "4", "mat", "mat"]
    # a completion ends at its first EOS; the padding after it is neither scored nor passed on
    assert any(ids[-1] == tokenizer.eos_token_id and len(ids) < 4 for ids in seen["completion_ids"])
    rewards = torch.tensor([1.0, -1.0, 0.5, -0.25])
    advantages = rewards - rewards.view(2, 2).mean(-1).repeat_interleave(2)
    expected = []
    for prompt, completion, advantage in zip(seen["prompts"], seen["completion_ids"], advantages):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = torch.tensor([prompt_ids + completion])
        with torch.no_grad():
            log_probs = peft_model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
            with peft_model.disable_adapter():
                base_log_probs = peft_model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        sequence_log_prob = log_probs.gather(-1, torch.tensor(completion)[:, None]).sum()
        kl = (log_probs.exp() * (log_probs - base_log_probs)).sum()
        expected.append(-advantage * sequence_log_prob + 0.5 * kl)
    expected = torch.stack(expected).mean()
    print(f"\nREINFORCE loss {loss.item():.6f}, by hand {expected.item():.6f}")
    assert abs(loss.item() - expected.item()) < 1e-4, (loss.item(), expected.item())


# --------------------------------------------------------------------------------------- 3. dispatch ----
def test_prompt_strategy_dispatch(tokenizer, base_state):
    peft_model = get_peft_model(base_model(tokenizer, base_state), SVFConfig(task_type="CAUSAL_LM"), adapter_name="up")
    peft_model.add_adapter("down", SVFConfig(task_type="CAUSAL_LM"))
    model = SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "down": "down"}, strategy="prompt")
    assert model.labels == ["up", "down", "other"]
    assert model.classification_prompt("up 3 =").endswith(
        "one of these categories: up, down, other.\nPrompt: up 3 =\nCategory:"
    )
    prompts, tasks = labelled_prompts(seed=1)
    scores = model.label_scores(prompts)
    assert scores.shape == (len(prompts), 3) and (scores < 0).all()
    accuracy = sum(got == task for got, task in zip(model.dispatch(prompts), tasks)) / len(tasks)
    print(f"\nprompt strategy: dispatch accuracy {accuracy:.3f} on {len(tasks)} prompts")
    assert accuracy == 1.0  # measured 1.0


def test_classifier_strategy_dispatch(tokenizer, base_state, tmp_path):
    model = base_model(tokenizer, base_state)
    rng = random.Random(0)
    rows = []
    for _ in range(512):
        task = rng.choice(TASKS)
        context = tokenizer(TEMPLATE_B.format(labels="up, down, other", prompt=task_prompt(task, rng)))["input_ids"]
        label = tokenizer(f" {task}[EOS]", add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": context + label, "labels": [-100] * len(context) + label})  # loss on the label
    trainer = train_svf_expert(  # rows with labels: train_svf_expert pads them with -100
        model,
        Dataset.from_list(rows),
        training_args(tmp_path, max_steps=100, learning_rate=0.1),
        processing_class=tokenizer,
        adapter_name="classify",
        svf_config=SVFConfig(task_type="CAUSAL_LM", target_modules=svf_target_modules(model, attention=True)),
    )
    peft_model = trainer.model.eval()
    peft_model.add_adapter("up", SVFConfig(task_type="CAUSAL_LM"))
    peft_model.add_adapter("down", SVFConfig(task_type="CAUSAL_LM"))
    experts = {"up": "up", "down": "down"}
    prompts, tasks = labelled_prompts(seed=1)

    def accuracy(strategy, **kwargs):
        model = SelfAdaptiveModel(
            peft_model, tokenizer, experts, strategy=strategy, classification_template=TEMPLATE_B, **kwargs
        )
        return sum(got == task for got, task in zip(model.dispatch(prompts), tasks)) / len(tasks)

    with_expert, base_alone = accuracy("classifier", classifier="classify"), accuracy("prompt")
    print(
        f"\ntemplate B: dispatch accuracy {base_alone:.3f} by the base model, {with_expert:.3f} with the "
        "classification expert"
    )
    assert with_expert >= 0.95 and base_alone <= 0.6  # measured 1.0 and 0.333
    assert peft_model.active_adapters == ["classify"]  # dispatch restored the active adapter


# ---------------------------------------------------------------------------------------- 4. pass 2 ----
def random_experts(model, names, seed=0, **config):
    """A PeftModel with SVF adapters whose z vectors are moved away from the start, so each changes the model."""
    peft_model = None
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        if peft_model is None:
            peft_model = get_peft_model(model, SVFConfig(task_type="CAUSAL_LM", **config), adapter_name=name)
        else:
            peft_model.add_adapter(name, SVFConfig(task_type="CAUSAL_LM", **config))
        set_z_vectors(
            peft_model,
            {
                module: z + 2.0 * torch.randn(z.shape, generator=generator)
                for module, z in get_z_vectors(peft_model, name).items()
            },
            adapter_name=name,
        )
    return peft_model.eval()


def tiny_slam_v1(vocab_size):
    torch.manual_seed(0)
    config = SlamV1ModelTester().get_config()
    assert config.vocab_size >= vocab_size
    return SlamV1ForCausalLM(config).eval()


PROMPTS = [
    "up 3 =",
    "the cat sat on a mat",
    "down 7 =",
    "hello cat world",
]  # "other" rows: 3-5 filler words, as in pretraining
GREEDY = dict(do_sample=False, max_new_tokens=6)


@pytest.mark.parametrize("model_name", ["llama", "slam_v1"])
def test_pass_two_equals_plain_generate(model_name, tokenizer, base_state):
    build = {"llama": lambda: base_model(tokenizer, base_state), "slam_v1": lambda: tiny_slam_v1(len(tokenizer))}
    reference = build[model_name]()  # the base model, never wrapped
    peft_model = random_experts(build[model_name](), ["up", "down"])
    model = SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "down": "down"})
    batch = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")

    # "other": adapters disabled, exactly the base model
    other = model.generate(**batch, labels=["other"] * len(PROMPTS), **GREEDY)
    assert torch.equal(other, reference.generate(**batch, **GREEDY))
    # an expert: exactly the PeftModel with that adapter set
    for expert in ("up", "down"):
        peft_model.set_adapter(expert)
        expected = peft_model.generate(**batch, **GREEDY)
        peft_model.set_adapter("up")
        assert torch.equal(model.generate(**batch, labels=[expert] * len(PROMPTS), **GREEDY), expected), expert
    with torch.no_grad(), model.using("down"):  # the experts do change the model
        assert not torch.equal(peft_model(**batch).logits, reference(**batch).logits)

    # a mixed batch: each label's rows generate as if they had been batched (and padded) on their own
    labels = ["up", "other", "down", "up"]
    mixed = model.generate(**batch, labels=labels, **GREEDY)
    assert model.last_labels == labels and mixed.shape[0] == len(PROMPTS)
    for label in ("up", "other", "down"):
        rows = [row for row, row_label in enumerate(labels) if row_label == label]
        alone = tokenizer([PROMPTS[row] for row in rows], padding=True, padding_side="left", return_tensors="pt")
        with model.using(label):
            expected = peft_model.generate(**alone, **GREEDY)
        new_tokens = expected[:, alone["input_ids"].shape[1] :]
        got = mixed[rows, batch["input_ids"].shape[1] :][:, : new_tokens.shape[1]]
        assert torch.equal(got, new_tokens), label
        assert torch.equal(mixed[rows, : batch["input_ids"].shape[1]], batch["input_ids"][rows])
    assert peft_model.active_adapters == ["up"]


def test_generate_dispatches_each_row(tokenizer, base_state):
    peft_model = random_experts(base_model(tokenizer, base_state), ["up", "down"])
    model = SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "down": "down"})
    batch = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    dispatched = model.generate(**batch, **GREEDY)
    assert model.last_labels == ["up", "other", "down", "other"]
    assert torch.equal(dispatched, model.generate(**batch, labels=["up", "other", "down", "other"], **GREEDY))


def test_experts_load_from_folders(tokenizer, base_state, experts, tmp_path):
    experts["peft_model"].save_pretrained(tmp_path, selected_adapters=["up", "down"])  # -> tmp_path/<adapter>
    model = SelfAdaptiveModel(
        base_model(tokenizer, base_state), tokenizer, {"up": str(tmp_path / "up"), "down": str(tmp_path / "down")}
    )
    assert isinstance(model.model, PeftModel) and model.experts == {"up": "up", "down": "down"}
    for task in ("up", "down"):
        loaded = get_z_vectors(model.model, task)
        assert all(torch.equal(loaded[name], z) for name, z in experts["z"][task].items())
    assert all(not param.requires_grad for param in model.model.parameters())  # loaded for inference


# -------------------------------------------------------------------------------- 5. few-shot mixing ----
def test_cem_search_finds_a_known_optimum(caplog):
    target = torch.tensor([0.7, 0.2, 0.5], dtype=torch.float64)
    calls = []

    def score(alphas):
        calls.append(alphas)
        return -((alphas - target) ** 2).sum().item()

    with caplog.at_level(logging.INFO, logger="slam_hf.adapters.cem"):
        result = cem_search(score, 3, seed=0)  # defaults: 10 iterations of 16 candidates
    error = (result.alphas.double() - target).abs().max().item()
    print(
        f"\nCEM: alphas {[round(a, 4) for a in result.alphas.tolist()]} (target {target.tolist()}), "
        f"max error {error:.4f}, score {result.score:.2e}, best per iteration "
        f"{[f'{s:.1e}' for s in result.best_scores]}"
    )
    assert error < 0.02, result
    assert len(calls) == 160 and torch.equal(calls[0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert all(((a >= 0) & (a <= 1)).all() for a in calls)  # candidates stay within bounds
    assert result.best_scores == sorted(result.best_scores)
    progress = [record.getMessage() for record in caplog.records if record.name == "slam_hf.adapters.cem"]
    assert progress == [
        f"CEM iteration {i}/10: best score {score:.6g}" for i, score in enumerate(result.best_scores, start=1)
    ]
    again = cem_search(score, 3, seed=0)
    assert torch.equal(again.alphas, result.alphas)  # seeded: a search repeats exactly
    errors = [(cem_search(score, 3, seed=seed).alphas.double() - target).abs().max().item() for seed in range(1, 6)]
    print(f"CEM: max error with seeds 1-5: {[round(e, 4) for e in errors]}")
    assert max(errors) < 0.05, errors


def test_fit_mixture_beats_uniform_weights(tokenizer, experts):
    peft_model = experts["peft_model"]
    model = SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "down": "down"}, strategy="few_shot")
    examples, held_out = few_shot_examples("up", seed=7, count=6), few_shot_examples("up", seed=9, count=20)
    uniform = model.few_shot_score(examples, [0.5, 0.5])
    assert model.alphas is None  # scoring given weights loads them for that call only
    alphas = model.fit_mixture(examples, iterations=5, population_size=8, num_elites=3)
    fitted = model.few_shot_score(examples)
    held_out_uniform, held_out_fitted = model.few_shot_score(held_out, [0.5, 0.5]), model.few_shot_score(held_out)
    print(
        f"\nfit_mixture: alphas {alphas.tolist()}; answer log-likelihood {uniform:.4f} (uniform) -> {fitted:.4f} "
        f"on the 6 examples, {held_out_uniform:.4f} -> {held_out_fitted:.4f} on 20 held-out ones"
    )
    # measured -0.915 -> -0.535 on the examples, -0.966 -> -0.576 on the held-out ones
    assert fitted - uniform > 0.2 and held_out_fitted - held_out_uniform > 0.2
    assert alphas[0] > alphas[1]  # the "up" expert carries the mixture
    assert torch.equal(model.alphas, alphas) and model.few_shot_score(examples) == fitted  # score restored α
    # z' = Σ αₖ zₖ sits in its own adapter slot, and pass 2 generates with exactly it
    mixed = get_z_vectors(peft_model, model.mixture_adapter_name)
    expected = mix_z_vectors(experts["z"], alphas)
    assert all(torch.equal(mixed[name], z) for name, z in expected.items())
    batch = tokenizer([prompt for prompt, _ in examples], padding=True, padding_side="left", return_tensors="pt")
    with model.using_adapter(model.mixture_adapter_name):
        expected_tokens = peft_model.generate(**batch, **GREEDY)
    assert torch.equal(model.generate(**batch, **GREEDY), expected_tokens)

    # a user metric instead of the log-likelihood: exact-match accuracy of greedy answers
    def accuracy(peft_model):
        output = peft_model.generate(**batch, do_sample=False, max_new_tokens=1)[:, -1]
        return sum(tokenizer.decode([token]) == want.strip() for token, (_, want) in zip(output, examples)) / 6

    model.fit_mixture(examples, score_fn=accuracy, iterations=2, population_size=4, num_elites=2)
    assert model.mixture_search.score >= model.mixture_search.best_scores[0] and model.mixture_search.score > 0.5


# ------------------------------------------------------------------------------------- 6. bad input ----
def test_bad_rewards_name_reward_fn(tokenizer, base_state, tmp_path):
    peft_model = add_svf_expert(base_model(tokenizer, base_state))

    rows = [{"prompt": "up 1 =", "target": "2"}]
    cases = [
        (
            lambda *args, **kwargs: [2.0, 1.0],
            ValueError,
            r"reward_fn returned 2.0 for completion 0 \('.*'\): rewards "
            r"must be finite and lie in \[-1, 1\]",
        ),
        (lambda *args, **kwargs: [1.0, float("nan")], ValueError, r"reward_fn returned nan for completion 1"),
        (
            lambda *args, **kwargs: [1.0],
            ValueError,
            r"reward_fn returned 1 value\(s\) of shape \(1,\) for 2 completions",
        ),
        (lambda *args, **kwargs: None, TypeError, r"reward_fn must return one number per completion \(2 here"),
    ]
    for reward_fn, error, message in cases:
        trainer = small_reinforce_trainer(peft_model, reward_fn, tokenizer, tmp_path, max_new_tokens=2)
        with pytest.raises(error, match=message):
            trainer.compute_loss(peft_model, trainer.data_collator(rows))


def test_bad_trainer_arguments_are_named(tokenizer, base_state, tmp_path):
    model = base_model(tokenizer, base_state)
    args = training_args(tmp_path)
    with pytest.raises(TypeError, match=r"SVFReinforceTrainer\(model=...\) must be a PeftModel, got LlamaForCausalLM"):
        SVFReinforceTrainer(model, first_word_reward, args, processing_class=tokenizer)
    peft_model = add_svf_expert(model)
    cases = [
        (dict(kl_coef=-1.0), r"kl_coef=-1.0\) must be a finite number >= 0"),
        (dict(num_samples_per_prompt=0), r"num_samples_per_prompt=0\) must be an integer >= 1"),
        (dict(baseline="mean", num_samples_per_prompt=1), r"baseline='mean'\) .* num_samples_per_prompt >= 2"),
        (dict(baseline="median"), r"baseline='median'\) must be one of \('none', 'mean'\)"),
        (dict(generation_kwargs={"max_new_tokens": 5}), r"must not set \['max_new_tokens'\]: use .*max_new_tokens="),
        (dict(prompt_column="question"), r"train_dataset has no prompt column 'question'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            SVFReinforceTrainer(
                peft_model,
                first_word_reward,
                args,
                train_dataset=reinforce_dataset(2),
                processing_class=tokenizer,
                **kwargs,
            )
    with pytest.raises(
        ValueError,
        match=r"train_svf_expert: train_dataset has no 'labels' column, so pass "
        r"processing_class=tokenizer",
    ):
        train_svf_expert(peft_model, domain_dataset(tokenizer, "up", 0, 4), args)


def test_bad_mixtures_are_named(tokenizer, base_state):
    peft_model = random_experts(base_model(tokenizer, base_state), ["up", "down"])
    model = SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "down": "down"}, strategy="few_shot")
    with pytest.raises(
        ValueError,
        match=r"alphas has 3 weight\(s\) but there are 2 experts \(up, down\): pass one "
        r"mixing weight per expert",
    ):
        model.set_mixture([0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match=r"alphas: the weight of expert 'down' is nan; mixing weights must be finite"):
        model.set_mixture(torch.tensor([0.5, float("nan")]))
    with pytest.raises(
        ValueError,
        match=r"alphas names experts \['music', 'up'\], but the experts are "
        r"\['up', 'down'\]; unknown: \['music'\]; missing: \['down'\]",
    ):
        model.set_mixture({"up": 1.0, "music": 0.0})
    with pytest.raises(ValueError, match=r"call fit_mixture\(examples\) or set_mixture\(alphas\) before generate"):
        model.generate(**tokenizer(["up 1 ="], return_tensors="pt"))
    with pytest.raises(ValueError, match=r"score_fn returned nan for alphas \[0.5, 0.5\]: it must return a finite"):
        model.fit_mixture([("up 1 =", " 2")], score_fn=lambda _: float("nan"))
    with pytest.raises(
        ValueError,
        match=r"examples\[0\] is 'up 1 = 2': each few-shot example must be a "
        r"\(prompt, answer\) pair",
    ):
        model.fit_mixture(["up 1 = 2"])
    with pytest.raises(ValueError, match=r"strategy='few_shot'\) does not classify prompts"):
        model.dispatch(["up 1 ="])


def test_experts_that_do_not_fit_together_are_named(tokenizer, base_state):
    """Experts that adapt other modules, come from another base model or use another SVF form cannot be mixed."""
    peft_model = random_experts(base_model(tokenizer, base_state), ["up", "down"])
    peft_model.add_adapter("attention", SVFConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"]))
    with pytest.raises(
        ValueError,
        match=r"Expert 'attn' cannot be mixed with expert 'up': it adapts other modules "
        r"\(it has 4 module\(s\) expert 'up' lacks \(model.layers.0.self_attn.q_proj",
    ):
        SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "attn": "attention"}, strategy="few_shot")
    up_z = get_z_vectors(peft_model, "up")
    shorter = {name: z[:-1] for name, z in up_z.items()}
    with pytest.raises(
        ValueError,
        match=r"Expert 'small' cannot be mixed with expert 'up': its z vector for "
        r"model.layers.0.mlp.\w+ has shape \(\d+,\), expert 'up''s has \(\d+,\)",
    ):
        mix_z_vectors({"up": up_z, "small": shorter}, [0.5, 0.5])
    peft_model.add_adapter("plain", SVFConfig(task_type="CAUSAL_LM", scaling="plain"))
    with pytest.raises(
        ValueError,
        match=r"Expert 'paper' \(adapter 'plain'\) uses SVF scaling 'plain' but expert "
        r"'up' uses 'sigmoid_renorm'",
    ):
        SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "paper": "plain"}, strategy="few_shot")


def test_unknown_experts_labels_and_strategies_are_named(tokenizer, base_state, tmp_path):
    peft_model = random_experts(base_model(tokenizer, base_state), ["up", "down"])
    missing = str(tmp_path / "no_such_adapter")  # not a folder, and no valid repo id: fails without a network call
    with pytest.raises(
        ValueError,
        match=r"expert 'math': '.*no_such_adapter' is neither an adapter of the model "
        r"\(its adapters: \[.*'up'\]\) nor a loadable adapter folder or Hub repo id",
    ):
        SelfAdaptiveModel(peft_model, tokenizer, {"math": missing})
    dispatcher = SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "down": "down"})
    with pytest.raises(
        ValueError,
        match=r"labels\[1\] = 'music' is not an expert of this SelfAdaptiveModel; use one "
        r"of \['up', 'down', 'other'\]",
    ):
        dispatcher.generate(**tokenizer(["up 1 =", "down 2 ="], return_tensors="pt"), labels=["up", "music"])
    with pytest.raises(ValueError, match=r"'other' is reserved for prompts that fit no expert"):
        SelfAdaptiveModel(peft_model, tokenizer, {"up": "up", "other": "down"})
    with pytest.raises(ValueError, match=r"strategy='classifier'\) needs classifier=<the classification expert"):
        SelfAdaptiveModel(peft_model, tokenizer, {"up": "up"}, strategy="classifier")
    with pytest.raises(ValueError, match=r"strategy='mixture'\) must be one of \('prompt', 'classifier', 'few_shot'\)"):
        SelfAdaptiveModel(peft_model, tokenizer, {"up": "up"}, strategy="mixture")


def test_bad_cem_arguments_are_named():
    def score(alphas):
        return 0.0

    with pytest.raises(ValueError, match=r"cem_search\(num_elites=5\) cannot exceed population_size=4"):
        cem_search(score, 2, population_size=4, num_elites=5)
    with pytest.raises(ValueError, match=r"cem_search\(bounds=\(1.0, 0.0\)\) must be two finite numbers"):
        cem_search(score, 2, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"cem_search\(init_mean=...\) must hold 2 finite numbers"):
        cem_search(score, 2, init_mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"cem_search\(num_experts=0\) must be an integer >= 1"):
        cem_search(score, 0)


# --------------------------------------------------------------------------------- 7. import hygiene ----
def test_transformer2_imports_only_torch_transformers_peft_and_svf():
    # transformer2.py and its parts: torch, transformers and peft (besides the standard library), svf and one another
    siblings = {".svf", ".experts", ".reinforce", ".cem"}
    for module in ("transformer2", "experts", "reinforce", "cem"):
        tree = ast.parse(open(os.path.join(REPO_ROOT, "slam_hf", "adapters", f"{module}.py")).read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {
            "." * node.level + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        third_party = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
        assert third_party <= {"torch", "transformers", "peft", "__future__", *siblings}, (module, third_party)
