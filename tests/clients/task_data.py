"""Loads a task's JSONL file from this folder, for the tasks' `custom_dataset`.

`dataset_path: json` with `data_files` would resolve the file name against the current directory; a function
named with `!function` is found next to the YAML, so the tasks work from any directory.
"""

import json
import os

import datasets

HERE = os.path.dirname(os.path.abspath(__file__))


def load_docs(data_file, **_):  # lm-eval also passes the task metadata and --model_args here
    with open(os.path.join(HERE, data_file)) as lines:
        docs = [json.loads(line) for line in lines]
    return datasets.DatasetDict(test=datasets.Dataset.from_list(docs))
