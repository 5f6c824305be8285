"""The Transformer² demonstrations: SVF vs LoRA (`svf_vs_lora`), three domain experts (`domain_experts`) and the
one command that runs both (`python -m slam_hf.demos.transformer2`). Not remote code."""
