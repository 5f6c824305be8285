"""SVF experts trained with next-token loss: Transformer²'s experts for any Hugging Face causal LM (DESIGN §7).

`add_svf_expert` makes a named SVF adapter trainable and active; `train_svf_expert` adds one and trains it with
`Trainer` in one call. REINFORCE training is `slam_hf.adapters.reinforce.SVFReinforceTrainer`.
"""

from __future__ import annotations

from typing import Optional

from peft import PeftModel, get_peft_model
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from .svf import SVF_PEFT_TYPE, SVFConfig


def _peft_type(peft_model: PeftModel, adapter_name: str) -> str:
    peft_type = peft_model.peft_config[adapter_name].peft_type
    return getattr(peft_type, "value", peft_type)  # PeftType members are str enums; print the plain name


def _is_svf_adapter(peft_model: PeftModel, adapter_name: str) -> bool:
    return _peft_type(peft_model, adapter_name) == SVF_PEFT_TYPE


def add_svf_expert(model, adapter_name: str = "default", svf_config: Optional[SVFConfig] = None) -> PeftModel:
    """Make `adapter_name` a trainable SVF adapter of `model` and the active one; return the PeftModel.

    A plain transformers model is wrapped with `get_peft_model`; a PeftModel gets the adapter added (or, if it
    already has one of that name, that adapter is activated). `svf_config` defaults to `SVFConfig(task_type=
    "CAUSAL_LM")`, which adapts the MLP projections as in the paper.
    """
    svf_config = svf_config if svf_config is not None else SVFConfig(task_type="CAUSAL_LM")
    if not isinstance(model, PeftModel):
        return get_peft_model(model, svf_config, adapter_name=adapter_name)
    if adapter_name not in model.peft_config:
        model.add_adapter(adapter_name, svf_config)
    elif not _is_svf_adapter(model, adapter_name):
        raise ValueError(
            f"add_svf_expert(adapter_name={adapter_name!r}): the model's adapter {adapter_name!r} is a "
            f"{_peft_type(model, adapter_name)} adapter, not SVF. Choose another adapter_name."
        )
    model.set_adapter(adapter_name)  # also makes its z vectors trainable
    return model


def train_svf_expert(
    model,
    train_dataset,
    args: TrainingArguments,
    *,
    processing_class=None,
    adapter_name: str = "default",
    svf_config: Optional[SVFConfig] = None,
    eval_dataset=None,
    data_collator=None,
    **trainer_kwargs,
) -> Trainer:
    """Train an SVF expert with next-token loss in one call: `add_svf_expert`, then `Trainer(...).train()`.

    `train_dataset` holds tokenized rows (`input_ids`, optionally `attention_mask` and `labels`). Without a
    `data_collator`, and given the tokenizer as `processing_class`, rows are padded and: without labels, labelled
    for next-token loss on every token (`DataCollatorForLanguageModeling(mlm=False)`; it also masks the pad token,
    so a tokenizer whose pad token is its EOS does not learn to stop); with labels (e.g. -100 on the prompt, to
    train on answers only), their labels are padded with -100 (`DataCollatorForSeq2Seq`). Returns the Trainer:
    its `.model` is the PeftModel (`trainer.model.save_pretrained(folder)` saves the expert's z vectors), its
    `.state.log_history` the losses.
    """
    peft_model = add_svf_expert(model, adapter_name=adapter_name, svf_config=svf_config)
    has_labels = "labels" in (getattr(train_dataset, "column_names", None) or [])
    if data_collator is None and processing_class is not None:
        data_collator = (
            DataCollatorForSeq2Seq(processing_class, label_pad_token_id=-100)
            if has_labels
            else DataCollatorForLanguageModeling(processing_class, mlm=False)
        )
    elif data_collator is None and not has_labels:
        raise ValueError(
            "train_svf_expert: train_dataset has no 'labels' column, so pass processing_class=tokenizer (rows are "
            "then padded and labelled for next-token loss) or a data_collator."
        )
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=processing_class,
        **trainer_kwargs,
    )
    trainer.train()
    return trainer
