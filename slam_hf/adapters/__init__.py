"""Adapters over any model: SVF as a PEFT method (`svf`, registered with PEFT on import) and Transformer²'s expert
training, REINFORCE and two-pass self-adaptive inference (`transformer2`). Not remote code."""
