"""Tiny configs and inputs for the SLAM model tests (the role of transformers' `CausalLMModelTester`).

`SlamModelTester` holds what every variant shares: the tiny shapes, the input builders and the
config checks that apply to all SLAM configs. A variant subclass names its config and model classes,
adds its own config fields (`variant_config_kwargs`) and its own invalid configs
(`variant_bad_config_cases`). `SlamModelTesterMixin` (slam_common.py) runs every shared test on it.

The shared tests never build model inputs themselves: they ask the tester (`model_inputs`,
`generation_inputs`, `padding_rows` / `pad_rows`, `training_inputs`, `with_sequence`, ...), so a
decoder-only variant (v1, v2: `input_ids` only) and the encoder-decoder SLAM v3 (prompt with `<image>`
placeholders + `pixel_values` for the encoder, answer tokens for the decoder) run the same tests.
"""

import torch

from slam_hf import (
    SlamLoopConfig,
    SlamLoopForCausalLM,
    SlamLoopForImageTextToText,
    SlamLoopModel,
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
    SlamV3Config,
    SlamV3ForConditionalGeneration,
    SlamV3Model,
)


class SlamModelTester:
    # Filled in by each variant. Any model class may be None when a variant lacks that head.
    config_class = None
    base_model_class = None
    causal_lm_class = None
    masked_lm_class = None
    sequence_classification_class = None
    conditional_generation_class = None  # encoder-decoder generation head (SLAM v3)
    is_encoder_decoder = False
    # Whether the variant offers position_embedding_type="learned" (absolute positions expose padding shifts).
    supports_learned_positions = True

    # Shapes in the spirit of transformers' testers (hidden 32, vocab 99, intermediate 37).
    batch_size = 2
    seq_length = 15  # long enough for several overlapping windows of the variant's short geometry
    vocab_size = 99
    hidden_size = 32
    num_attention_heads = 4
    num_key_value_heads = 2  # GQA, so the key/value head repetition is exercised too
    intermediate_size = 37
    num_labels = 3
    # A large init std makes the random model context-sensitive: at the default 0.02 the tied embeddings dominate
    # and it repeats one token whatever came before, so no cache or padding equivalence test could fail.
    initializer_range = 0.2
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
            initializer_range=self.initializer_range,
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

    def bf16_config_kwargs(self) -> dict:
        """The config of the bf16-vs-fp32 comparison: the default init std (see test_bf16_forward)."""
        return dict(initializer_range=0.02)

    # bf16 vs fp32 logits may differ by this share of the largest logit (plus this much)
    bf16_tolerance = 0.05

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
            self.conditional_generation_class,
        )
        return [cls for cls in classes if cls is not None]

    @property
    def lm_classes(self) -> list:
        """Classes with a vocabulary head (and tied embeddings)."""
        classes = (self.causal_lm_class, self.masked_lm_class, self.conditional_generation_class)
        return [cls for cls in classes if cls is not None]

    @property
    def classes_with_labels(self) -> list:
        classes = (
            self.causal_lm_class,
            self.masked_lm_class,
            self.sequence_classification_class,
            self.conditional_generation_class,
        )
        return [cls for cls in classes if cls is not None]

    @property
    def generative_class(self):
        """The class `generate` runs on: the causal LM, or the encoder-decoder head."""
        return self.causal_lm_class or self.conditional_generation_class

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

    # ---- inputs as dicts (what the shared tests use) -------------------------------------------
    def model_inputs(self, batch_size=None, seq_length=None, text_only=False, config=None) -> dict:
        """Forward inputs of every class. `text_only` asks for inputs that `inputs_embeds` can replace."""
        return {"input_ids": self.input_ids(batch_size, seq_length)}

    def inputs_for_config(self, inputs, config) -> dict:
        """`inputs` completed with what `config` needs besides (SLAM v3: `aux_values` when aux_dim is set)."""
        return inputs

    def generation_inputs(self, batch_size=None, seq_length=None, text_only=False) -> dict:
        """Inputs of `generate` (the prompt)."""
        return self.model_inputs(batch_size, seq_length, text_only=text_only)

    def label_tokens(self, inputs) -> tuple[dict, torch.Tensor]:
        """(forward inputs without the tokens that labels replace, the tokens labels are made from)."""
        return inputs, inputs["input_ids"]

    def training_inputs(self, model_class, inputs, generator=None) -> dict:
        """`inputs` with labels of the right kind for `model_class`."""
        forward_inputs, tokens = self.label_tokens(inputs)
        return {**forward_inputs, "labels": self.labels_for(model_class, tokens, generator=generator)}

    def embedded(self, model, inputs, embedding=None) -> dict:
        """Text-only `inputs` with token ids replaced by embeddings (`embedding` defaults to the model's)."""
        embedding = embedding or model.get_input_embeddings()
        inputs = dict(inputs)
        inputs["inputs_embeds"] = embedding(inputs.pop("input_ids"))
        return inputs

    def padding_rows(self, lengths, decoder=True) -> list[dict]:
        """One single-row input dict per prompt length; `decoder=False` for `generate` inputs."""
        return [{"input_ids": self.input_ids(1, length)} for length in lengths]

    def pad_rows(self, rows, side, pad_token_id=0) -> tuple[dict, torch.Tensor | None]:
        """Rows -> (one padded batch, (B, output length) bool mask of the outputs that belong to real tokens,
        or None when every output position is real)."""
        input_ids, mask = self.padded_batch([row["input_ids"][0] for row in rows], pad_token_id, side)
        return {"input_ids": input_ids, "attention_mask": mask}, mask

    def prompt_sequence(self, inputs) -> torch.LongTensor:
        """What `generate` returns before the first new token: the prompt (empty for `inputs_embeds`)."""
        if "input_ids" in inputs:
            return inputs["input_ids"]
        return torch.zeros(inputs["inputs_embeds"].shape[0], 0, dtype=torch.long)

    def with_sequence(self, inputs, sequence) -> dict:
        """Forward inputs that score `sequence` (a prompt and generated tokens) in one full forward."""
        return {"input_ids": sequence}

    @staticmethod
    def repeat_rows(inputs, times) -> dict:
        """Every row `times` times in a row, as `generate` expands inputs for beams."""
        return {name: value.repeat_interleave(times, dim=0) for name, value in inputs.items()}

    def repetitive_generation_inputs(self) -> dict:
        """A prompt that repeats, so prompt-lookup decoding finds candidates."""
        prompt = self.input_ids(batch_size=1, seq_length=6)
        return {"input_ids": torch.cat([prompt, prompt], dim=1)}

    def expected_rope(self, module_name, config) -> tuple[int, float]:
        """(rotary width, theta) that the RoPE module `module_name` must hold after loading."""
        return config.head_dim, config.rope_theta

    def lora_target_cases(self) -> list:
        """`target_modules` values the PEFT test wraps every class with (besides "all-linear" on one class)."""
        return [["q_proj", "v_proj"]]

    def checkpointed_linears(self, model) -> list:
        """Linear layers inside checkpointed layers: gradient checkpointing must call each one twice."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        first_layer = next(m for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
        return [next(m for m in first_layer.modules() if isinstance(m, torch.nn.Linear))]


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


class SlamV3ModelTester(SlamModelTester):
    """SLAM v3, an encoder-decoder: the encoder reads a prompt whose `<image>` placeholders (one per patch, in
    one run) the vision tower's features replace, the decoder reads the answer.

    Tiny images: 8 x 8 pixels in 4 x 4 patches, so an image is 4 placeholders, placed at prompt positions 1..4.
    `model_inputs` gives every row one image (so every tensor splits by rows); `padding_rows` mixes rows with
    an image and text-only rows (a prompt too short for the placeholders), as a processor batch can.
    """

    config_class = SlamV3Config
    base_model_class = SlamV3Model
    conditional_generation_class = SlamV3ForConditionalGeneration
    is_encoder_decoder = True
    supports_learned_positions = False  # the joint sequence has RoPE or no positions (config rejects "learned")
    # ids 0..5 are <pad> <s> </s> <unk> <mask> <image>; random text never hits a placeholder by accident
    first_regular_token_id = 6
    image_token_id = 5
    image_size = 8
    patch_size = 4
    num_patches = (8 // 4) ** 2
    image_start = 1  # first placeholder position
    decoder_seq_length = 7
    num_aux = 3
    # the four paths are one no-split unit (their weights are stacked per layer) holding 57 % of the tiny model
    offload_memory_fraction = 0.8

    def vision_config_kwargs(self) -> dict:
        # head_dim 8: a multiple of 4 for 2D RoPE; GQA (2 heads on 1 K/V head) as in the text model
        return dict(
            patch_size=self.patch_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=24,
        )

    def variant_config_kwargs(self) -> dict:
        # MLA: latent 16, rope 4, nope 8, v 8 (hidden 32 / 4 heads).
        return dict(
            encoder_layers=2,
            decoder_layers=2,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            v_head_dim=8,
            image_token_id=self.image_token_id,
            vision_config=self.vision_config_kwargs(),
        )

    def variant_bad_config_cases(self) -> list[tuple[dict, str]]:
        vision = self.vision_config_kwargs()
        return [
            (dict(qk_rope_head_dim=3), "qk_rope_head_dim"),  # RoPE rotates pairs
            (dict(kv_lora_rank=0), "kv_lora_rank"),
            (dict(qk_nope_head_dim=0), "qk_nope_head_dim"),
            (dict(v_head_dim=-8), "v_head_dim"),
            (dict(q_lora_rank=0), "q_lora_rank"),
            (dict(vision_config={**vision, "hidden_size": 24, "num_attention_heads": 4}), "head_dim"),  # 6: not 4k
            (dict(vision_config={**vision, "patch_size": 0}), "patch_size"),
            (dict(vision_config={**vision, "projector_type": "conv"}), "projector_type"),
            (dict(vision_config={**vision, "position_embedding_type": "learned"}), "position_embedding_type"),
            (dict(num_hidden_layers=3), "num_hidden_layers"),  # derived from decoder_layers (2), must agree
            (dict(position_embedding_type="learned"), "position_embedding_type"),
            (dict(is_encoder_decoder=False), "is_encoder_decoder"),
            (dict(encoder_layers=0), "encoder_layers"),
            (dict(decoder_layers=0), "decoder_layers"),
            (dict(fusion_num_latents=-1), "fusion_num_latents"),
            (dict(aux_dim=0), "aux_dim"),
            (dict(image_token_id=self.vocab_size), "image_token_id"),
        ]

    def non_default_config_kwargs(self) -> dict:
        return {
            **super().non_default_config_kwargs(),
            "encoder_layers": 3,
            "decoder_layers": 1,
            "kv_lora_rank": 8,
            "q_lora_rank": 12,
            "qk_nope_head_dim": 10,
            "qk_rope_head_dim": 6,
            "v_head_dim": 12,
            "fusion_num_latents": 3,
            "aux_dim": 5,
            "image_token_id": 7,
            "decoder_start_token_id": 3,
            "vision_config": dict(
                patch_size=2,
                num_channels=1,
                hidden_size=24,
                num_attention_heads=3,
                head_dim=8,
                projector_type="linear",
                rope_theta=50.0,
                mlp_type="swiglu",
            ),
        }

    def config_variants(self) -> list[dict]:
        """Every value of every shared option (positions: rope | none, the only two of v3), every (norm type,
        position type) pair, each MLP with both norm positions; plus v3's options, each in at least one row."""
        rows = [
            # mlp_type, norm_type, norm_position, position_embedding_type, v3 options
            ("gelu", "layernorm", "pre", "rope", dict(q_lora_rank=8)),
            ("geglu", "rmsnorm", "pre", "none", dict(fusion_num_latents=3)),
            ("swiglu", "layernorm", "post", "none", dict(aux_dim=5)),
            (
                "gelu",
                "rmsnorm",
                "post",
                "rope",
                dict(
                    vision_config={
                        **self.vision_config_kwargs(),
                        "projector_type": "linear",
                        "position_embedding_type": "none",
                        "norm_position": "post",
                        "norm_type": "layernorm",
                        "mlp_type": "gelu",
                    }
                ),
            ),
            ("geglu", "layernorm", "post", "rope", dict(attention_bias=True, mlp_bias=True)),
            # MHA, latent bottleneck, aux tokens and a query bottleneck together
            (
                "swiglu",
                "rmsnorm",
                "pre",
                "rope",
                dict(num_key_value_heads=4, fusion_num_latents=2, aux_dim=3, q_lora_rank=8),
            ),
        ]
        names = ("mlp_type", "norm_type", "norm_position", "position_embedding_type")
        return [{**dict(zip(names, row[:4])), **row[4]} for row in rows]

    def expected_num_encoder_hidden_states(self, config) -> int:
        return 3  # embedded joint sequence, fusion output, memory

    def expected_num_hidden_states(self, config) -> int:
        """Decoder entries: the embedded answer plus one per decoder layer."""
        return 1 + config.decoder_layers

    def expected_rope(self, module_name, config) -> tuple[int, float]:
        if "vision_tower" in module_name:  # 2D: head_dim / 4 frequencies of a head_dim / 2 wide rotary, per axis
            return config.vision_config.head_dim // 2, config.vision_config.rope_theta
        if "decoder" in module_name:  # MLA's decoupled RoPE key
            return config.qk_rope_head_dim, config.rope_theta
        return config.head_dim, config.rope_theta

    def lora_target_cases(self) -> list:
        return [["q_proj", "v_proj"], r".*decoder.*\.(q_proj|kv_b_proj|o_proj)"]

    def checkpointed_linears(self, model) -> list:
        """One linear of each kind of checkpointed computation: a vision layer, layer 0 of the four paths, the fusion
        node and a decoder layer."""
        trunk = model.base_model
        return [
            trunk.encoder.vision_tower.layers[0].self_attn.q_proj,
            trunk.encoder.paths.paths["shared"][0].self_attn.q_proj,
            trunk.encoder.fusion.cross_modal.self_attn.q_proj,
            trunk.decoder.layers[0].self_attn.kv_b_proj,
        ]

    # ---- inputs ----------------------------------------------------------------------------------
    def pixel_values(self, num_images, generator=None) -> torch.FloatTensor:
        return torch.randn(num_images, 3, self.image_size, self.image_size, generator=generator)

    def with_image(self, input_ids) -> torch.LongTensor:
        """`input_ids` (B, L) with one image's placeholders in every row."""
        input_ids = input_ids.clone()
        input_ids[:, self.image_start : self.image_start + self.num_patches] = self.image_token_id
        return input_ids

    def model_inputs(self, batch_size=None, seq_length=None, text_only=False, config=None) -> dict:
        batch_size = batch_size or self.batch_size
        input_ids = self.input_ids(batch_size, seq_length)
        inputs = {"input_ids": input_ids}
        if not text_only:
            inputs = {"input_ids": self.with_image(input_ids), "pixel_values": self.pixel_values(batch_size)}
        if config is not None:
            inputs = self.inputs_for_config(inputs, config)
        inputs["decoder_input_ids"] = self.input_ids(batch_size, self.decoder_seq_length)
        return inputs

    def inputs_for_config(self, inputs, config) -> dict:
        if not config.aux_dim:
            return inputs
        batch_size = inputs["input_ids"].shape[0]
        return {**inputs, "aux_values": torch.randn(batch_size, self.num_aux, config.aux_dim)}

    @staticmethod
    def encoder_part(inputs) -> dict:
        return {name: value for name, value in inputs.items() if not name.startswith("decoder_")}

    def generation_inputs(self, batch_size=None, seq_length=None, text_only=False) -> dict:
        return self.encoder_part(self.model_inputs(batch_size, seq_length, text_only=text_only))

    def label_tokens(self, inputs) -> tuple[dict, torch.Tensor]:
        return self.encoder_part(inputs), inputs["decoder_input_ids"]  # labels = the answer; decoder inputs shifted

    def embedded(self, model, inputs, embedding=None) -> dict:
        embedding = embedding or model.get_input_embeddings()
        inputs = dict(inputs)
        inputs["inputs_embeds"] = embedding(inputs.pop("input_ids"))
        if "decoder_input_ids" in inputs:
            inputs["decoder_inputs_embeds"] = embedding(inputs.pop("decoder_input_ids"))
        return inputs

    def padding_rows(self, lengths, decoder=True) -> list[dict]:
        """A row long enough for the placeholders (and one text token) gets an image; shorter rows are text only."""
        rows = []
        for length in lengths:
            row = {"input_ids": self.input_ids(1, length)}
            if length > self.image_start + self.num_patches:
                row = {"input_ids": self.with_image(row["input_ids"]), "pixel_values": self.pixel_values(1)}
            if decoder:
                row["decoder_input_ids"] = self.input_ids(1, self.decoder_seq_length)
            rows.append(row)
        return rows

    def pad_rows(self, rows, side, pad_token_id=0) -> tuple[dict, None]:
        input_ids, mask = self.padded_batch([row["input_ids"][0] for row in rows], pad_token_id, side)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        images = [row["pixel_values"] for row in rows if "pixel_values" in row]
        if images:  # the placeholders of the batch, in row order, take the images in order
            batch["pixel_values"] = torch.cat(images)
        if "decoder_input_ids" in rows[0]:
            batch["decoder_input_ids"] = torch.cat([row["decoder_input_ids"] for row in rows])
        return batch, None  # the decoder is not padded: every output position is real

    def prompt_sequence(self, inputs) -> torch.LongTensor:
        """An encoder-decoder's `generate` returns the decoder sequence, which starts with the start token."""
        reference = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
        start = self.get_config().decoder_start_token_id
        return torch.full((reference.shape[0], 1), start, dtype=torch.long)

    def with_sequence(self, inputs, sequence) -> dict:
        return {**self.encoder_part(inputs), "decoder_input_ids": sequence}

    def repetitive_generation_inputs(self) -> dict:
        # Prompt lookup searches the decoder's own sequence, which the random model repeats on its own.
        return self.generation_inputs(batch_size=1)


class SlamLoopModelTester(SlamModelTester):
    """The latent loop with adaptive exit on: 1 prelude, 2 core layers up to 3 iterations, 1 coda layer, and a
    confidence threshold at which the random model stops some tokens after 1 or 2 iterations and runs others to
    full depth (test_modeling_slam_loop asserts the mix), so every shared equivalence test (cache, padding,
    batch rows, beams) runs with per-token exit and row gathering. The depth is fixed while training so that
    training tests compare like with like (the sampled depth has its own tests)."""

    config_class = SlamLoopConfig
    base_model_class = SlamLoopModel
    causal_lm_class = SlamLoopForCausalLM
    exit_threshold = 0.5

    def variant_config_kwargs(self) -> dict:
        return dict(
            prelude_layers=1,
            core_layers=2,
            coda_layers=1,
            loop_max_iterations=3,
            loop_iteration_sampling="fixed",
            loop_exit_threshold=self.exit_threshold,
        )

    def variant_bad_config_cases(self) -> list[tuple[dict, str]]:
        return [
            (dict(core_layers=0), "core_layers"),
            (dict(prelude_layers=-1), "prelude_layers"),
            (dict(loop_max_iterations=0), "loop_max_iterations"),
            (dict(loop_injection="multiply"), "loop_injection"),
            (dict(loop_cache="paged"), "loop_cache"),
            (dict(loop_exit_criterion="entropy"), "loop_exit_criterion"),
            (dict(loop_exit_threshold=1.5), "loop_exit_threshold"),  # a confidence is at most 1
            (dict(loop_sampling_mean=4.0), "loop_sampling_mean"),  # above loop_max_iterations=3
            (dict(loop_iteration_sampling="uniform"), "loop_iteration_sampling"),
            (dict(num_hidden_layers=3), "num_hidden_layers"),  # derived: 1 + 3 * 2 + 1
            (dict(is_causal=False), "is_causal"),
        ]

    def non_default_config_kwargs(self) -> dict:
        return {
            **super().non_default_config_kwargs(),
            "mlp_type": "gelu",
            "prelude_layers": 2,
            "core_layers": 1,
            "coda_layers": 0,
            "loop_max_iterations": 5,
            "loop_injection": "concat",
            "loop_iteration_sampling": "loss_triggered",
            "loop_backprop_iterations": 2,
            "loop_confidence_target": "absolute",
            "loop_exit_criterion": "hidden_change",
            "loop_exit_threshold": 0.05,
            "loop_cache": "shared",
        }

    def bf16_config_kwargs(self) -> dict:
        # bf16 rounding moves confidences across the exit threshold for a few tokens: a different depth, not an
        # error (as SLAM v2's routing); the exit's own precision is test_modeling_slam_loop's business.
        return {**super().bf16_config_kwargs(), "loop_exit_threshold": None}

    def expected_num_hidden_states(self, config) -> int:
        # embeddings, each prelude layer, the core's final state, each coda layer
        return 1 + config.prelude_layers + 1 + config.coda_layers


class SlamLoopImageTextModelTester(SlamLoopModelTester):
    """The latent loop with a vision tower (SlamLoopForImageTextToText): one 8 x 8 image of 4 x 4 patches per row, its
    4 placeholders at positions 2..5 of the causal sequence (2D RoPE for them, 1D for text), adaptive exit on.
    `padding_rows` mixes rows with an image and text-only rows, as a processor batch can."""

    causal_lm_class = SlamLoopForImageTextToText
    first_regular_token_id = 6  # ids 0..5 are <pad> <s> </s> <unk> <mask> <image>
    image_token_id = 5
    image_size = 8
    patch_size = 4
    num_patches = (8 // 4) ** 2
    image_start = 2  # token 1 stays text: assert_context_sensitive replaces it
    vision_config_kwargs = SlamV3ModelTester.vision_config_kwargs
    pixel_values = SlamV3ModelTester.pixel_values
    with_image = SlamV3ModelTester.with_image
    offload_memory_fraction = 0.6

    def variant_config_kwargs(self) -> dict:
        return {
            **super().variant_config_kwargs(),
            "image_token_id": self.image_token_id,
            "vision_config": self.vision_config_kwargs(),
        }

    def variant_bad_config_cases(self) -> list[tuple[dict, str]]:
        vision = self.vision_config_kwargs()
        return [
            (dict(vision_config={**vision, "patch_size": 0}), "patch_size"),
            (dict(image_token_id=self.vocab_size), "image_token_id"),
            (dict(image_token_id=None), "image_token_id"),
            (dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2), "head_dim"),  # 6: not 4k for 2D RoPE
        ]

    def non_default_config_kwargs(self) -> dict:
        return {**super().non_default_config_kwargs(), "image_token_id": 7, "vision_config": {"patch_size": 2}}

    def config_variants(self) -> list[dict]:
        return [row for row in super().config_variants() if row["position_embedding_type"] != "learned"] + [
            dict(position_embedding_type="learned")
        ]

    def expected_rope(self, module_name, config) -> tuple[int, float]:
        if "vision_tower" in module_name:  # 2D: head_dim / 4 frequencies of a head_dim / 2 wide rotary, per axis
            return config.vision_config.head_dim // 2, config.vision_config.rope_theta
        if "patch_rotary" in module_name:  # the decoder's 2D RoPE of image patches
            return config.head_dim // 2, config.rope_theta
        return config.head_dim, config.rope_theta

    def model_inputs(self, batch_size=None, seq_length=None, text_only=False, config=None) -> dict:
        batch_size = batch_size or self.batch_size
        input_ids = self.input_ids(batch_size, seq_length)
        if text_only:
            return {"input_ids": input_ids}
        return {"input_ids": self.with_image(input_ids), "pixel_values": self.pixel_values(batch_size)}

    def padding_rows(self, lengths, decoder=True) -> list[dict]:
        rows = []
        for length in lengths:
            row = {"input_ids": self.input_ids(1, length)}
            if length > self.image_start + self.num_patches:
                row = {"input_ids": self.with_image(row["input_ids"]), "pixel_values": self.pixel_values(1)}
            rows.append(row)
        return rows

    def pad_rows(self, rows, side, pad_token_id=0) -> tuple[dict, torch.Tensor]:
        batch, mask = super().pad_rows(rows, side, pad_token_id)
        images = [row["pixel_values"] for row in rows if "pixel_values" in row]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch, mask

    def with_sequence(self, inputs, sequence) -> dict:
        """The images go with a sequence that holds their placeholders (not with tokens scored on their own)."""
        if not (sequence == self.image_token_id).any():
            return {"input_ids": sequence}
        extra = {name: value for name, value in inputs.items() if name in ("pixel_values", "image_grid_hw")}
        return {"input_ids": sequence, **extra}

    def checkpointed_linears(self, model) -> list:
        trunk = model.base_model
        return [trunk.vision_tower.layers[0].self_attn.q_proj, trunk.prelude[0].self_attn.q_proj]
