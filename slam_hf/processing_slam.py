"""Text processing for SLAM models: the special-token contract and the byte-level BPE tokenizer.

The tokenizer needs no custom class: it is a `PreTrainedTokenizerFast` over a `tokenizers` BPE, so
`AutoTokenizer` loads it everywhere, remote code or not. The multimodal `SlamProcessor` (SLAM v3)
builds on the `<image>` token reserved here.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# The order fixes ids 0..5, which model configs (pad/bos/eos_token_id) rely on.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>", "<image>")
DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MODEL_MAX_LENGTH = 1024


def train_bpe_tokenizer(
    texts, vocab_size: int = DEFAULT_VOCAB_SIZE, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (no normaliser, so decode(encode(x)) == x for any string).

    No post-processor inserts <s>/</s> (GPT-2 style); causal-LM packing adds eos between documents.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes up front, so no input ever needs <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=model_max_length,
        # Cleanup would turn "a ." into "a." and break exact round trips.
        clean_up_tokenization_spaces=False,
    )


__all__ = ["DEFAULT_VOCAB_SIZE", "SPECIAL_TOKENS", "train_bpe_tokenizer"]
