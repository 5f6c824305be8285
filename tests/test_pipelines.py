"""transformers pipelines on SLAM v1, v2 and the latent loop, batched: every item of a batch equals the item run alone.

`text-generation` (left-padded batches through `generate()` with the KV cache) must give the continuation that
uncached greedy decoding gives each prompt alone (the latent loop with its adaptive exit on: a padded, cached batch
must stop each token at the depth it stops at alone); `text-classification`, `fill-mask` and
`zero-shot-classification` with `batch_size=2` (pipelines split every output tensor by rows, so no output may be a
0-dim tensor) must give the scores of `batch_size=1`. SLAM v3's `image-text-to-text` pipeline is tested in
test_modeling_slam_v3.py.
"""

import pytest
import torch
from slam_common import assert_context_sensitive, single_threaded_torch
from slam_tester import SlamLoopModelTester, SlamV1ModelTester, SlamV2ModelTester
from transformers import pipeline

from slam_hf import (
    SlamLoopConfig,
    SlamLoopForCausalLM,
    SlamV1Config,
    SlamV1ForCausalLM,
    SlamV1ForMaskedLM,
    SlamV1ForSequenceClassification,
    SlamV2Config,
    SlamV2ForCausalLM,
    SlamV2ForMaskedLM,
    SlamV2ForSequenceClassification,
)
from slam_hf.data import load_default_tokenizer

single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)

VARIANTS = {  # config, causal LM, masked LM, classifier (None: the variant has no such head), tester
    "slam_v1": (SlamV1Config, SlamV1ForCausalLM, SlamV1ForMaskedLM, SlamV1ForSequenceClassification, SlamV1ModelTester),
    "slam_v2": (SlamV2Config, SlamV2ForCausalLM, SlamV2ForMaskedLM, SlamV2ForSequenceClassification, SlamV2ModelTester),
    "slam_loop": (SlamLoopConfig, SlamLoopForCausalLM, None, None, SlamLoopModelTester),
}
CLASSIFYING_VARIANTS = [variant for variant, (_, _, masked, *_) in VARIANTS.items() if masked is not None]
PROMPTS = ["To be, or not to be", "Friends, Romans", "All the world's a stage, and all the men and women", "O"]
LABELS = ["comedy", "history", "tragedy"]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = load_default_tokenizer()
    tokenizer.padding_side = "left"  # generation pads on the left
    return tokenizer


def build(variant, head, tokenizer, **overrides):
    config_class, *heads, tester_class = VARIANTS[variant]
    tester = tester_class()
    kwargs = {**tester.shared_config_kwargs(), **tester.variant_config_kwargs(), "vocab_size": len(tokenizer)}
    kwargs.update(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )
    torch.manual_seed(0)
    return heads[head](config_class(**kwargs)).eval()


@pytest.mark.contract
@pytest.mark.parametrize("variant", VARIANTS)
def test_text_generation_pipeline_batched(variant, tokenizer):
    model = build(variant, 0, tokenizer)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = []
    for prompt in PROMPTS:  # alone, no padding, no cache: the reference
        ids = tokenizer(prompt, return_tensors="pt")
        sequence = model.generate(**ids, use_cache=False, **kwargs)
        if len(ids["input_ids"][0]) > 1:
            assert_context_sensitive(model, ids, sequence, SlamV1ModelTester(), what=prompt)
        expected.append(tokenizer.decode(sequence[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    assert len(set(expected)) > 1

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    results = pipe(PROMPTS, batch_size=2, return_full_text=False, **kwargs)
    assert [result[0]["generated_text"] for result in results] == expected
    if variant == "slam_loop":  # the last batch exited some tokens early and ran others deeper
        stats = model.loop_statistics
        assert stats["new_tokens"] and 1 < stats["new_mean_iterations"] < stats["max_iterations"], stats


@pytest.mark.parametrize("variant", CLASSIFYING_VARIANTS)
def test_classification_pipelines_batched(variant, tokenizer):
    """text-classification, zero-shot-classification (an NLI-style head with an "entailment" label) and fill-mask,
    with batch_size=2 vs 1, padded on the right as encoder pipelines do."""
    tokenizer = load_default_tokenizer()  # right padding
    classifier = build(
        variant,
        2,
        tokenizer,
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    nli = build(
        variant,
        2,
        tokenizer,
        num_labels=3,
        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
        label2id={"entailment": 0, "neutral": 1, "contradiction": 2},
    )
    masked = build(variant, 1, tokenizer)
    cases = [
        (pipeline("text-classification", model=classifier, tokenizer=tokenizer), PROMPTS, dict(top_k=None)),
        (
            pipeline("zero-shot-classification", model=nli, tokenizer=tokenizer),
            PROMPTS,
            dict(candidate_labels=["love", "war", "a stage play"]),
        ),
        (pipeline("fill-mask", model=masked, tokenizer=tokenizer), [p + " <mask>" for p in PROMPTS], dict(top_k=3)),
    ]
    for pipe, inputs, kwargs in cases:
        alone = pipe(inputs, batch_size=1, **kwargs)
        batched = pipe(inputs, batch_size=2, **kwargs)
        assert len(batched) == len(inputs)
        for one, two in zip(alone, batched):
            assert scores_of(one) == pytest.approx(scores_of(two), abs=1e-5), pipe.task


def scores_of(result):
    """(label or token, score) pairs of one pipeline result, whatever the task's result layout."""
    if isinstance(result, dict) and "labels" in result:  # zero-shot
        return dict(zip(result["labels"], result["scores"]))
    return {item.get("label", item.get("token_str")): item["score"] for item in result}
