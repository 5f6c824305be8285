"""Adapters over any model, not remote code.

SVF as a PEFT method: `svf` (config, tuner; registered with PEFT on import) with its parts `svf_layer`,
`svf_targets`, `svf_z_vectors` and `svf_peft_type`. Transformer²: `transformer2` (two-pass self-adaptive inference)
with `experts` (next-token training), `reinforce` (REINFORCE training) and `cem` (the few-shot mixture search).
`svf` and `transformer2` re-export the public names of their parts.
LoRA on BitNet b1.58 ternary projections: `ternary_lora` (full-precision adapters over `TernaryLinear`, merging
refused unless asked for with `merge_ternary_lora`, which re-quantises and reports the logit change).
"""
