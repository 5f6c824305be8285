"""Offline data for slam_hf's recipes, tests and demos; nothing here is remote code.

- `shakespeare`: the Shakespeare LM corpus (whole works held out), causal-LM packing, Folio genre passages and the
  default tokenizer;
- `digits`: MNIST digit tiles for SLAM v3, their processor, collator and exact-match metric;
- `domains`: the three Transformer² domains (verse, code, sums) and the "other" corpus.

The names of `shakespeare` and `digits` are re-exported here (`from slam_hf.data import load_digit_tiles`).
"""

from .digits import (  # noqa: F401
    DEFAULT_DIGIT_TILE_SIZES,
    DIGIT_IMAGE_MEAN,
    DIGIT_IMAGE_STD,
    DIGIT_PROMPT,
    DIGIT_SIZE,
    DIGIT_SOURCE_SPLIT,
    DIGIT_SPLITS,
    DIGIT_TOKENIZER_MAX_VOCAB,
    DigitTileCollator,
    answer_labels,
    digit_exact_match,
    digit_exact_match_chance,
    digit_prompt_text,
    digit_source_split,
    digit_tile_processor,
    load_digit_tiles,
    load_mnist_digits,
    preprocess_digit_tiles,
    train_digit_tokenizer,
)
from .shakespeare import (  # noqa: F401
    DEFAULT_TOKENIZER_DIR,
    FOLIO_GENRES,
    GENRE_LABELS,
    GENRE_TEST_WORKS,
    GENRE_VALIDATION_WORKS,
    NUM_WORKS,
    VALIDATION_WORKS,
    clean_text,
    group_texts_for_causal_lm,
    id2label,
    label2id,
    load_default_tokenizer,
    load_genre_dataset,
    load_shakespeare_corpus,
    majority_class_rate,
    play_lines,
    read_works,
)
