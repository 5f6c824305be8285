"""Writes the two JSONL files of the lm-eval tasks in this folder from the Shakespeare corpus the project ships.

The files are committed, so lm-eval needs neither this script nor the corpus; rerun it only to change the data:
    python tests/clients/make_data.py
Lines come from Macbeth, a validation work (slam_hf.data.VALIDATION_WORKS): models trained by slam-hf never saw them.
"""

import json
import os
import random

from slam_hf.data import play_lines, read_works

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CHOICE_DOCS, NUM_GENERATE_DOCS, NUM_CHOICES = 20, 10, 4


def split_lines(count, rng):
    """`count` (first half, second half) pairs of distinct dialogue lines of at least 8 words."""
    lines = [line for line in play_lines(read_works()["macbeth"]) if len(line.split()) >= 8]
    pairs = []
    for line in rng.sample(lines, count):
        words = line.split()
        half = len(words) // 2
        pairs.append((" ".join(words[:half]), " ".join(words[half:])))
    return pairs


def write(name, docs):
    with open(os.path.join(HERE, name), "w") as out:
        out.writelines(json.dumps(doc) + "\n" for doc in docs)


def main():
    rng = random.Random(0)
    pairs = split_lines(NUM_CHOICE_DOCS + NUM_GENERATE_DOCS, rng)
    choice_pairs, generate_pairs = pairs[:NUM_CHOICE_DOCS], pairs[NUM_CHOICE_DOCS:]
    choice_docs = []
    for i, (context, ending) in enumerate(choice_pairs):
        # Distractors are the endings of other lines of the same task, so every choice is real verse.
        others = [other for j, (_, other) in enumerate(choice_pairs) if j != i]
        choices = rng.sample(others, NUM_CHOICES - 1)
        label = rng.randrange(NUM_CHOICES)
        choices.insert(label, ending)
        choice_docs.append({"context": context, "choices": choices, "label": label})
    write("shakespeare_choice.jsonl", choice_docs)
    write("shakespeare_generate.jsonl", [{"prompt": p, "target": t} for p, t in generate_pairs])


if __name__ == "__main__":
    main()
