"""Which `nn.Linear` layers SVF adapts by default, per `config.model_type` (DESIGN §7).

`SVF_MLP_TARGET_MODULES` holds the MLP projections, as the released Transformer² code adapts them (SVFConfig's
default); `SVF_ATTENTION_TARGET_MODULES` the attention projections; `svf_target_modules` combines them for a model.
"""

from __future__ import annotations

import re
from typing import Union

_LLAMA_MLP = ["gate_proj", "up_proj", "down_proj"]
_LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLA_ATTENTION = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"]  # DeepSeek names
# Decoders that name their projections as Llama does.
_LLAMA_NAMED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite")
_SLAM = ("slam_v1", "slam_v2", "slam_v3")
# BERT-style encoders name the MLP `layer.N.intermediate.dense` and `layer.N.output.dense`; a plain suffix
# "output.dense" would also match the attention output `layer.N.attention.output.dense`, hence regexes.
_BERT_LIKE = ("bert", "roberta", "xlm-roberta", "electra")
_BERT_MLP = r".*\.layer\.\d+\.(?:intermediate|output)\.dense"
_BERT_ATTENTION = r".*\.layer\.\d+\.attention\.(?:self\.(?:query|key|value)|output\.dense)"

# Default SVF targets by `config.model_type`: the MLP projections, as the released Transformer² code adapts them.
SVF_MLP_TARGET_MODULES: dict[str, Union[list[str], str]] = {
    # SLAM: every MLP (text, vision, fusion, decoder) is a SlamMLP with Llama names; gate_proj exists only for
    # gated MLPs (geglu, swiglu), and a name that matches nothing is skipped.
    **{model_type: _LLAMA_MLP for model_type in _SLAM + _LLAMA_NAMED},
    "phi3": ["gate_up_proj", "down_proj"],
    "starcoder2": ["c_fc", "c_proj"],
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["fc1", "fc2"],
    "distilbert": ["lin1", "lin2"],
    "t5": ["wi", "wi_0", "wi_1", "wo"],
    **{model_type: _BERT_MLP for model_type in _BERT_LIKE},
}
# The attention projections of the same model types, for `svf_target_modules(..., attention=True)`.
SVF_ATTENTION_TARGET_MODULES: dict[str, Union[list[str], str]] = {
    # SLAM v3's decoder uses MLA; v2's mixture of attention experts keeps q_proj/o_proj per expert.
    **{model_type: _LLAMA_ATTENTION + _MLA_ATTENTION for model_type in _SLAM},
    **{model_type: _LLAMA_ATTENTION for model_type in _LLAMA_NAMED + ("starcoder2",)},
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "t5": ["q", "k", "v", "o"],
    **{model_type: _BERT_ATTENTION for model_type in _BERT_LIKE},
}


def svf_target_modules(model_or_type, mlp: bool = True, attention: bool = False) -> Union[list[str], str]:
    """`target_modules` for `SVFConfig`: the MLP and/or attention projections of a model (or a `model_type`).

    Returns a list of module-name suffixes, or a regex string when a model type needs one (BERT-style encoders);
    both are accepted by `SVFConfig(target_modules=...)`.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None)
    tables = ([SVF_MLP_TARGET_MODULES] if mlp else []) + ([SVF_ATTENTION_TARGET_MODULES] if attention else [])
    if not tables:
        raise ValueError("svf_target_modules(mlp=False, attention=False) selects nothing: enable mlp or attention.")
    parts = []
    for table in tables:
        if model_type not in table:
            raise ValueError(
                f"slam_hf.adapters.svf has no default SVF targets for model_type {model_type!r}: pass "
                f"SVFConfig(target_modules=[...]) naming its nn.Linear layers. Known types: {', '.join(sorted(table))}."
            )
        parts.append(table[model_type])
    if all(isinstance(part, list) for part in parts):
        return [name for part in parts for name in part]

    def as_regex(part):
        return part if isinstance(part, str) else r"(?:.*\.)?(?:" + "|".join(re.escape(n) for n in part) + ")"

    return "|".join(f"(?:{as_regex(part)})" for part in parts)
