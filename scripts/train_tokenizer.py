"""Train the shipped byte-level BPE tokenizer on the Shakespeare TRAIN split.

    python scripts/train_tokenizer.py [--output-dir slam_hf/tokenizer]

Only training works are used, so validation text never shapes the merges.
Byte-level BPE with no normaliser means decode(encode(x)) == x for any string.
No post-processor adds <s>/</s> (GPT-2 style): packing for causal LM inserts
eos between works explicitly (see slam_hf.data.group_texts_for_causal_lm).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from slam_hf.data import DEFAULT_TOKENIZER_DIR, load_shakespeare_corpus  # noqa: E402
from slam_hf.processing_slam import train_bpe_tokenizer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=DEFAULT_TOKENIZER_DIR)
    args = parser.parse_args(argv)
    texts = load_shakespeare_corpus()["train"]["text"]
    tokenizer = train_bpe_tokenizer(texts)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved {len(tokenizer)}-token tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
