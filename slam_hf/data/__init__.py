"""Offline data for slam_hf's recipes, tests and demos; nothing here is remote code.

- `shakespeare`: the Shakespeare LM corpus (whole works held out), causal-LM packing, Folio genre passages and the
  default tokenizer;
- `digits`: MNIST digit tiles for SLAM v3, their processor, collator and exact-match metric;
- `domains`: the three Transformer² domains (verse, code, sums) and the "other" corpus.

The names of `shakespeare` and `digits` are re-exported here (`from slam_hf.data import load_digit_tiles`).
"""

from .shakespeare import (  # noqa: F401
    GENRE_VALIDATION_WORKS,
    GENRE_TEST_WORKS,
    VALIDATION_WORKS,
    GENRE_LABELS,
    label2id,
    id2label,
    FOLIO_GENRES,
    NUM_WORKS,
    DEFAULT_TOKENIZER_DIR,
    clean_text,
    read_works,
    load_shakespeare_corpus,
    group_texts_for_causal_lm,
    play_lines,
    load_genre_dataset,
    majority_class_rate,
    load_default_tokenizer,
)
from .digits import (  # noqa: F401
    DIGIT_SIZE,
    DIGIT_PROMPT,
    DIGIT_SOURCE_SPLIT,
    DIGIT_SPLITS,
    DEFAULT_DIGIT_TILE_SIZES,
    load_mnist_digits,
    digit_source_split,
    load_digit_tiles,
    digit_exact_match_chance,
    DIGIT_IMAGE_MEAN,
    DIGIT_IMAGE_STD,
    DIGIT_TOKENIZER_MAX_VOCAB,
    train_digit_tokenizer,
    digit_tile_processor,
    digit_prompt_text,
    answer_labels,
    preprocess_digit_tiles,
    DigitTileCollator,
    digit_exact_match,
)
