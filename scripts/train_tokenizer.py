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

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from slam_hf.data import DEFAULT_TOKENIZER_DIR, load_shakespeare_corpus  # noqa: E402

VOCAB_SIZE = 8192
# Order fixes the ids 0..5; model configs and the multimodal model rely on them.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>", "<image>"]
MODEL_MAX_LENGTH = 1024


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes up front, so no input ever needs <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=MODEL_MAX_LENGTH,
        # Cleanup would turn "a ." into "a." and break exact round trips.
        clean_up_tokenization_spaces=False,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=DEFAULT_TOKENIZER_DIR)
    args = parser.parse_args(argv)
    texts = load_shakespeare_corpus()["train"]["text"]
    tokenizer = train_tokenizer(texts)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved {len(tokenizer)}-token tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
