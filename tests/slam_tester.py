"""Tiny configs and inputs for the SLAM model tests (the role of transformers' `CausalLMModelTester`).

`SlamModelTester` holds what every variant shares: the tiny shapes, the input builders and the
config checks that apply to all SLAM configs. A variant subclass names its config and model classes,
adds its own config fields (`variant_config_kwargs`) and its own invalid configs
(`variant_bad_config_cases`). `SlamModelTesterMixin` (slam_common.py) runs every shared test on it.
"""

import torch

from slam_hf import (
    SlamV1Config,
    SlamV1ForCausalLM,
    SlamV1ForMaskedLM,
    SlamV1ForSequenceClassification,
    SlamV1Model,
    SlamV2Config,
    SlamV2ForCausalLM,
    SlamV2ForMaskedLM,
    SlamV2ForSequenceClassification,
    SlamV2Model,
)


class SlamModelTester:
    # Filled in by each variant. Any model class may be None when a variant lacks that head.
    config_class = None
    base_model_class = None
    causal_lm_class = None
    masked_lm_class = None
    sequence_classification_class = None

    # Shapes in the spirit of transformers' testers (hidden 32, vocab 99, intermediate 37).
    batch_size = 2
    seq_length = 15  # long enough for several overlapping windows of the variant's short geometry
    vocab_size = 99
    hidden_size = 32
    num_attention_heads = 4
    num_key_value_heads = 2  # GQA, so the key/value head repetition is exercised too
    intermediate_size = 37
    num_labels = 3
    # Ids below this are special tokens (pad 0, bos 1, eos 2); random inputs avoid them so padding
    # and generation stopping never happen by accident.
    first_regular_token_id = 3
    # CPU budget of the disk-offload test, as a share of the model's memory: enough for the embeddings and
    # the largest no-split module that accelerate reserves room for, too little for everything.
    offload_memory_fraction = 0.5

    # ---- configs -------------------------------------------------------------------------------
    def shared_config_kwargs(self) -> dict:
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            num_labels=self.num_labels,
        )

    def variant_config_kwargs(self) -> dict:
        """Variant fields (window sizes, cycles, ...) chosen so the variant's special paths run at seq ~15."""
        return {}

    def get_config(self, **overrides):
        kwargs = {**self.shared_config_kwargs(), **self.variant_config_kwargs(), **overrides}
        return self.config_class(**kwargs)

    def shared_bad_config_cases(self) -> list[tuple[dict, str]]:
        """(invalid overrides, a word the ValueError must contain) that every SLAM config rejects."""
        return [
            (dict(hidden_size=30), "hidden_size"),  # 4 heads do not divide 30
            (dict(num_key_value_heads=3), "num_key_value_heads"),  # 3 does not divide 4 heads
            (dict(mlp_type="relu"), "mlp_type"),
            (dict(norm_type="batchnorm"), "norm_type"),
            (dict(norm_position="middle"), "norm_position"),
            (dict(position_embedding_type="alibi"), "position_embedding_type"),
            (dict(vocab_size=0), "vocab_size"),
            (dict(hidden_size=-32), "hidden_size"),
            (dict(num_attention_heads=0), "num_attention_heads"),
            (dict(intermediate_size=0), "intermediate_size"),
            (dict(max_position_embeddings=0), "max_position_embeddings"),
        ]

    def variant_bad_config_cases(self) -> list[tuple[dict, str]]:
        return []

    def exact_loss_config_kwargs(self) -> dict:
        """Overrides under which the loss is a plain sum over labelled tokens (no batch-level auxiliary
        terms), so gradient accumulation must reproduce the big-batch loss exactly."""
        return {}

    def bad_config_cases(self) -> list[tuple[dict, str]]:
        return self.shared_bad_config_cases() + self.variant_bad_config_cases()

    def non_default_config_kwargs(self) -> dict:
        """Non-default values that must survive a save/load round trip (variants add their own fields)."""
        return dict(mlp_type="swiglu", norm_type="rmsnorm", norm_position="pre", rope_theta=500.0)

    def config_variants(self) -> list[dict]:
        """Structural options that must all train. Not the full product (36 models): every value of every
        option appears, every (norm type, position type) pair appears, and each mlp meets both norm positions."""
        rows = [
            # mlp_type, norm_type, norm_position, position_embedding_type
            ("gelu", "layernorm", "pre", "rope"),
            ("geglu", "rmsnorm", "pre", "learned"),
            ("swiglu", "layernorm", "post", "none"),
            ("gelu", "rmsnorm", "post", "rope"),
            ("geglu", "layernorm", "post", "learned"),
            ("swiglu", "rmsnorm", "pre", "none"),
            ("gelu", "layernorm", "post", "learned"),
            ("swiglu", "rmsnorm", "post", "rope"),
            ("geglu", "layernorm", "pre", "none"),
        ]
        names = ("mlp_type", "norm_type", "norm_position", "position_embedding_type")
        return [dict(zip(names, row)) for row in rows]

    def expected_num_hidden_states(self, config) -> int:
        """Entries of `output_hidden_states`: the embeddings plus one per entry of `model.layers`."""
        raise NotImplementedError

    # ---- model classes -------------------------------------------------------------------------
    @property
    def all_model_classes(self) -> list:
        classes = (
            self.base_model_class,
            self.causal_lm_class,
            self.masked_lm_class,
            self.sequence_classification_class,
        )
        return [cls for cls in classes if cls is not None]

    @property
    def lm_classes(self) -> list:
        """Classes with a vocabulary head (and tied embeddings)."""
        return [cls for cls in (self.causal_lm_class, self.masked_lm_class) if cls is not None]

    @property
    def classes_with_labels(self) -> list:
        return [
            cls
            for cls in (self.causal_lm_class, self.masked_lm_class, self.sequence_classification_class)
            if cls is not None
        ]

    # ---- inputs --------------------------------------------------------------------------------
    def input_ids(self, batch_size=None, seq_length=None, generator=None) -> torch.LongTensor:
        shape = (batch_size or self.batch_size, seq_length or self.seq_length)
        return torch.randint(self.first_regular_token_id, self.vocab_size, shape, generator=generator)

    def attention_mask(self, input_ids) -> torch.LongTensor:
        return torch.ones_like(input_ids)

    def left_padded_batch(self, rows, pad_token_id=0):
        """Rows of different lengths -> (input_ids, attention_mask), padded on the left as for generation."""
        return self.padded_batch(rows, pad_token_id, side="left")

    def right_padded_batch(self, rows, pad_token_id=0):
        return self.padded_batch(rows, pad_token_id, side="right")

    @staticmethod
    def padded_batch(rows, pad_token_id, side):
        width = max(row.numel() for row in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - row.numel(), width) if side == "left" else slice(0, row.numel())
            input_ids[i, span] = row
            attention_mask[i, span] = 1
        return input_ids, attention_mask

    def labels_for(self, model_class, input_ids, generator=None) -> torch.LongTensor:
        """Labels of the right kind for `model_class`; token labels have some -100 (ignored) entries."""
        if model_class is self.sequence_classification_class:
            return torch.randint(0, self.num_labels, input_ids.shape[:1], generator=generator)
        labels = input_ids.clone()
        ignored = torch.rand(input_ids.shape, generator=generator) < 0.3
        return labels.masked_fill(ignored, -100)

    def logits_of(self, model, **inputs) -> torch.Tensor:
        """The main output of any class: `logits` for heads, `last_hidden_state` for the base model."""
        outputs = model(**inputs)
        return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


class SlamV1ModelTester(SlamModelTester):
    config_class = SlamV1Config
    base_model_class = SlamV1Model
    causal_lm_class = SlamV1ForCausalLM
    masked_lm_class = SlamV1ForMaskedLM
    sequence_classification_class = SlamV1ForSequenceClassification

    def variant_config_kwargs(self) -> dict:
        # Windows of 6 tokens advancing by 4: at 15 tokens there are windows [0,6) [4,10) [8,14) [12,15),
        # so tokens sit in one or two windows and the last window is partial.
        return dict(ef_cycles=2, ef_segment_length=6, ef_segment_overlap=2)

    def variant_bad_config_cases(self) -> list[tuple[dict, str]]:
        return [
            (dict(ef_segment_length=6, ef_segment_overlap=6), "ef_segment_overlap"),  # overlap == length
            (dict(ef_segment_length=6, ef_segment_overlap=7), "ef_segment_overlap"),  # overlap > length
            (dict(ef_segment_overlap=-1), "ef_segment_overlap"),
            (dict(ef_segment_length=0), "ef_segment_length"),
            (dict(ef_cycles=0), "ef_cycles"),
            (dict(num_hidden_layers=3), "num_hidden_layers"),  # derived from ef_cycles, must agree
        ]

    def non_default_config_kwargs(self) -> dict:
        return {**super().non_default_config_kwargs(), "ef_cycles": 3, "ef_segment_length": 8, "ef_segment_overlap": 3}

    def expected_num_hidden_states(self, config) -> int:
        # embeddings, first full layer, one per EF cycle, last full layer
        return 1 + 1 + config.ef_cycles + 1


class SlamV2ModelTester(SlamModelTester):
    offload_memory_fraction = 0.8  # the fusion module (4 blocks, one no-split unit) is 58 % of the tiny model
    config_class = SlamV2Config
    base_model_class = SlamV2Model
    causal_lm_class = SlamV2ForCausalLM
    masked_lm_class = SlamV2ForMaskedLM
    sequence_classification_class = SlamV2ForSequenceClassification

    def variant_config_kwargs(self) -> dict:
        # Segments of 4 tokens: at 15 tokens there are four, the last one partial, so every slot is occupied
        # and the batched path runs; generation (9 + 8 tokens) moves into a second group of slots.
        # Top-2 of 4 experts, each with 2 query heads on 1 K/V head.
        return dict(ef_cycles=4, ef_segment_length=4, moa_num_experts=4, moa_top_k=2)

    def variant_bad_config_cases(self) -> list[tuple[dict, str]]:
        return [
            (dict(ef_segment_length=0), "ef_segment_length"),
            (dict(ef_segment_length=600, max_position_embeddings=512), "ef_segment_length"),
            (dict(ef_segment_length=None, max_position_embeddings=510), "ef_segment_length"),  # 510 / 4 blocks
            (dict(ef_cycles=0), "ef_cycles"),
            (dict(ef_num_blocks=0), "ef_num_blocks"),
            (dict(moa_top_k=5), "moa_top_k"),  # more than the 4 experts
            (dict(moa_top_k=0), "moa_top_k"),
            (dict(moa_num_experts=0), "moa_num_experts"),
            (dict(moa_top_k=3), "moa_expert_heads"),  # 4 heads cannot be split into 3 routed experts
            (dict(moa_expert_heads=3), "moa_expert_heads"),  # not a multiple of the GQA ratio 2
            (dict(router_aux_loss_coef=-0.1), "router_aux_loss_coef"),
            (dict(num_hidden_layers=3), "num_hidden_layers"),  # derived from ef_cycles, must agree
        ]

    def exact_loss_config_kwargs(self) -> dict:
        return dict(router_aux_loss_coef=0.0)  # the balancing loss is a batch statistic

    def non_default_config_kwargs(self) -> dict:
        return {
            **super().non_default_config_kwargs(),
            "ef_cycles": 3,
            "ef_segment_length": 5,
            "moa_num_experts": 6,
            "moa_top_k": 1,
            "router_aux_loss_coef": 0.05,
            "output_router_logits": True,
        }

    def expected_num_hidden_states(self, config) -> int:
        # embeddings, Level-1 layer, one per fusion cycle, MoA layer
        return 1 + 1 + config.ef_cycles + 1
