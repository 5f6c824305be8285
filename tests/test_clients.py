"""lm-evaluation-harness against a saved SLAM causal LM, offline (issue 15). Opt-in: `pytest -m clients`.

`python -m lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` runs the two tasks of
tests/clients/ (a loglikelihood one and a generate_until one, data in the repo) in a clean subprocess: no network,
an empty HF_HOME, another cwd, so the model loads as Hub remote code. Every number lm-eval reports is recomputed
here from the same model: loglikelihoods and accuracy from one unpadded forward per choice, generations from
`model.generate` one prompt at a time. Batch size 4 pads (right for scoring, left with an attention mask for
generation) and must give what batch size 1 gives.

Needs `pip install -e '.[clients]'` (scripts/run_clients.sh); without lm_eval the tests skip, or fail when
SLAM_REQUIRE_CLIENTS=1 (the CI job), so a broken install cannot pass as a skip.
"""

import importlib.util
import json
import math
import os

import pytest
import torch
from hub_helpers import run_offline
from slam_common import single_threaded_torch

import slam_hf
from slam_hf.data import load_default_tokenizer

pytestmark = pytest.mark.clients

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clients")
CHOICE_TASK, GENERATE_TASK = "slam_shakespeare_choice", "slam_shakespeare_generate"
DATA_FILES = {CHOICE_TASK: "shakespeare_choice.jsonl", GENERATE_TASK: "shakespeare_generate.jsonl"}
UNTIL, MAX_GEN_TOKS = "\n", 8  # as in tests/clients/slam_shakespeare_generate.yaml
BATCH_SIZES = (1, 4)
# Scores of 4-8 tokens summed in float32; padded batches reorder the arithmetic, nothing more.
LOGLIKELIHOOD_ATOL = 1e-4

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)


@pytest.fixture(scope="module", autouse=True)
def lm_eval_installed():
    if importlib.util.find_spec("lm_eval") is None:
        message = "lm_eval is not installed: pip install -e '.[clients]' (or run scripts/run_clients.sh)"
        if os.environ.get("SLAM_REQUIRE_CLIENTS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def read_docs(task):
    with open(os.path.join(TASKS_DIR, DATA_FILES[task])) as lines:
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny SLAM v1 causal LM (init std 0.2, so scores and generations differ from doc to doc) saved with the
    project tokenizer; save_pretrained writes auto_map and the remote-code files."""
    tokenizer = load_default_tokenizer()
    torch.manual_seed(0)
    config = slam_hf.SlamV1Config(
        vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, intermediate_size=48, initializer_range=0.2
    )
    model = slam_hf.SlamV1ForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("clients") / "slam-v1"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def lm_eval_results(saved_model, tmp_path_factory):
    """batch size -> (results JSON, {task: samples by doc_id}); each batch size runs once, both tasks together."""
    folder = saved_model[0]
    runs = {}

    def run(batch_size):
        if batch_size not in runs:
            runs[batch_size] = run_lm_eval(folder, batch_size, tmp_path_factory.mktemp(f"lm_eval_bs{batch_size}"))
        return runs[batch_size]

    return run


def run_lm_eval(folder, batch_size, root):
    (root / "cwd").mkdir()
    command = [
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={folder},trust_remote_code=True",
        "--include_path",
        TASKS_DIR,
        "--tasks",
        f"{CHOICE_TASK},{GENERATE_TASK}",
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(root / "out"),
        "--log_samples",
    ]
    run_offline(command, root / "hf_home", cwd=root / "cwd", timeout=600, HF_HUB_DISABLE_TELEMETRY="1")
    # lm-eval writes <output_path>/<model name>/results_<time>.json and samples_<task>_<time>.jsonl
    (results_file,) = (root / "out").rglob("results_*.json")
    samples = {}
    for task in (CHOICE_TASK, GENERATE_TASK):
        (samples_file,) = (root / "out").rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
        samples[task] = {row["doc_id"]: row for row in rows}
    return json.loads(results_file.read_text()), samples


def continuation_score(model, tokenizer, context, continuation):
    """(sum of log p(continuation tokens | context), whether each of them is the argmax), one unpadded forward."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    # The continuation starts with a space, where byte-level BPE starts a new token: the split is clean.
    assert ids[: len(context_ids)] == context_ids, (context, continuation)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0, len(context_ids) - 1 : -1].float().log_softmax(-1)
    target = torch.tensor(ids[len(context_ids) :])
    score = logprobs.gather(-1, target[:, None]).sum().item()
    return score, bool((logprobs.argmax(-1) == target).all())


def greedy_continuation(model, tokenizer, prompt):
    """What a generate_until request should return: greedy tokens of one unpadded prompt, cut at the stop string."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=MAX_GEN_TOKS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.split(UNTIL)[0]


def some_batch_is_padded(lengths, batch_size=4):
    """lm-eval sorts requests longest first and batches them in that order: does any batch mix lengths?"""
    ordered = sorted(lengths, reverse=True)
    return any(len(set(ordered[i : i + batch_size])) > 1 for i in range(0, len(ordered), batch_size))


@pytest.fixture(scope="module")
def expected_choice(saved_model):
    """Per doc: the four (score, is_greedy) pairs and whether the best-scored choice is the label."""
    _, model, tokenizer = saved_model
    expected = []
    for doc in read_docs(CHOICE_TASK):
        scores = [continuation_score(model, tokenizer, doc["context"], " " + choice) for choice in doc["choices"]]
        best = max(range(len(scores)), key=lambda i: scores[i][0])
        expected.append(dict(scores=scores, correct=best == doc["label"]))
    return expected


@pytest.fixture(scope="module")
def expected_generate(saved_model):
    _, model, tokenizer = saved_model
    return [greedy_continuation(model, tokenizer, doc["prompt"]) for doc in read_docs(GENERATE_TASK)]


def test_task_data_exercises_padding(saved_model, expected_choice, expected_generate):
    """Guards the other tests: at batch size 4 lm-eval must pad, and the model must not answer every doc alike."""
    _, _, tokenizer = saved_model
    texts = [doc["context"] + " " + choice for doc in read_docs(CHOICE_TASK) for choice in doc["choices"]]
    choice_lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    prompt_lengths = [len(ids) for ids in tokenizer([doc["prompt"] for doc in read_docs(GENERATE_TASK)])["input_ids"]]
    assert some_batch_is_padded(choice_lengths) and some_batch_is_padded(prompt_lengths)
    best_scores = {max(s for s, _ in doc["scores"]) for doc in expected_choice}
    assert len(best_scores) == len(expected_choice)
    assert len(set(expected_generate)) > len(expected_generate) // 2 and all(expected_generate), expected_generate


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_loglikelihood_task(lm_eval_results, expected_choice, batch_size):
    results, samples = lm_eval_results(batch_size)
    docs = read_docs(CHOICE_TASK)
    assert results["n-samples"][CHOICE_TASK] == {"original": len(docs), "effective": len(docs)}
    assert sorted(samples[CHOICE_TASK]) == list(range(len(docs)))
    for doc_id, expected in enumerate(expected_choice):
        sample = samples[CHOICE_TASK][doc_id]
        # lm-eval logs each response as [str(loglikelihood), str(is_greedy)]
        got = [(float(score), is_greedy == "True") for score, is_greedy in sample["filtered_resps"]]
        for (score, is_greedy), (want_score, want_greedy) in zip(got, expected["scores"], strict=True):
            assert abs(score - want_score) <= LOGLIKELIHOOD_ATOL, (doc_id, got, expected["scores"])
            assert is_greedy == want_greedy, (doc_id, got, expected["scores"])
        assert sample["acc"] == float(expected["correct"]), doc_id
    accuracy = sum(e["correct"] for e in expected_choice) / len(expected_choice)
    assert math.isfinite(results["results"][CHOICE_TASK]["acc,none"])
    assert results["results"][CHOICE_TASK]["acc,none"] == pytest.approx(accuracy, abs=1e-12)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_generate_until_task(lm_eval_results, expected_generate, batch_size):
    results, samples = lm_eval_results(batch_size)
    docs = read_docs(GENERATE_TASK)
    assert results["n-samples"][GENERATE_TASK] == {"original": len(docs), "effective": len(docs)}
    generated = [samples[GENERATE_TASK][doc_id]["filtered_resps"][0] for doc_id in range(len(docs))]
    assert generated == expected_generate
    exact_match = sum(text == doc["target"] for text, doc in zip(expected_generate, docs)) / len(docs)
    assert math.isfinite(results["results"][GENERATE_TASK]["exact_match,none"])
    assert results["results"][GENERATE_TASK]["exact_match,none"] == pytest.approx(exact_match, abs=1e-12)


def test_batch_size_does_not_change_results(lm_eval_results):
    """Padding (batch 4) against none (batch 1): the same metrics, scores and texts."""
    (results_1, samples_1), (results_4, samples_4) = (lm_eval_results(b) for b in BATCH_SIZES)
    for task, metric in ((CHOICE_TASK, "acc,none"), (GENERATE_TASK, "exact_match,none")):
        assert results_4["results"][task][metric] == results_1["results"][task][metric]
    for doc_id, sample in samples_1[CHOICE_TASK].items():
        scores_1 = [float(score) for score, _ in sample["filtered_resps"]]
        scores_4 = [float(score) for score, _ in samples_4[CHOICE_TASK][doc_id]["filtered_resps"]]
        assert max(abs(a - b) for a, b in zip(scores_1, scores_4)) <= LOGLIKELIHOOD_ATOL, doc_id
    for doc_id, sample in samples_1[GENERATE_TASK].items():
        assert samples_4[GENERATE_TASK][doc_id]["filtered_resps"] == sample["filtered_resps"], doc_id
