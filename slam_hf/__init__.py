"""slam_hf: the SLAM family of transformer architectures, native to Hugging Face transformers.

Importing the package registers every class with the Auto* factories (in-process use) and marks them
for `register_for_auto_class`, so `save_pretrained` writes `auto_map` and copies the remote code; the
saved folder then loads with `trust_remote_code=True` where slam_hf is not installed. It also registers the SVF
method with PEFT (`slam_hf.adapters.svf`), so `PeftModel.from_pretrained` loads SVF adapters after `import slam_hf`.
"""

import transformers
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # top-level name is a stub on 5.10

from . import modeling_slam
from .adapters import svf  # noqa: F401  registers SVF with PEFT (peft is a dependency; ~0.2 s on top of transformers)
from .configuration_slam import (
    AUTO_FACTORIES,
    SLAM_CONFIG_CLASSES,
    SlamLoopConfig,
    SlamV1Config,
    SlamV2Config,
    SlamV3Config,
    SlamV3VisionConfig,
    class_prefix,
)
from .image_processing_slam import SlamImageProcessor
from .modeling_slam import (
    SlamLoopForCausalLM,
    SlamLoopForImageTextToText,
    SlamLoopModel,
    SlamLoopPreTrainedModel,
    SlamV1ForCausalLM,
    SlamV1ForMaskedLM,
    SlamV1ForSequenceClassification,
    SlamV1Model,
    SlamV1PreTrainedModel,
    SlamV2ForCausalLM,
    SlamV2ForMaskedLM,
    SlamV2ForSequenceClassification,
    SlamV2Model,
    SlamV2PreTrainedModel,
    SlamV3ForConditionalGeneration,
    SlamV3Model,
    SlamV3PreTrainedModel,
)
from .processing_slam import SlamProcessor

__version__ = "0.1.0"


def _model_families() -> list:
    """(config class, {Auto factory: model class}) per variant, from configuration_slam.AUTO_FACTORIES: every
    `Slam<Variant><suffix>` class that modeling_slam defines, under that suffix's factories."""
    families = []
    for config_class in SLAM_CONFIG_CLASSES:
        prefix = class_prefix(config_class.model_type)
        heads = {}
        for suffix, factories in AUTO_FACTORIES.items():
            model_class = getattr(modeling_slam, prefix + suffix, None)
            if model_class is not None:
                heads.update({getattr(transformers, factory): model_class for factory in factories})
        families.append((config_class, heads))
    return families


MODEL_FAMILIES = _model_families()


def register_auto_classes() -> None:
    """Register every SLAM class with the Auto factories and for remote-code saving. Idempotent."""
    for config_class, heads in MODEL_FAMILIES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        AutoTokenizer.register(config_class, tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)
        for auto_class, model_class in heads.items():
            auto_class.register(config_class, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_class.__name__)
    # Multimodal preprocessing (SLAM v3): in-process Auto lookups, and auto_map entries when saved.
    AutoConfig.register(SlamV3VisionConfig.model_type, SlamV3VisionConfig, exist_ok=True)
    for config_class in (SlamV3Config, SlamLoopConfig):
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": SlamImageProcessor}, exist_ok=True)
        AutoProcessor.register(config_class, SlamProcessor, exist_ok=True)
    SlamImageProcessor.register_for_auto_class("AutoImageProcessor")
    SlamProcessor.register_for_auto_class("AutoProcessor")


register_auto_classes()

__all__ = [
    "MODEL_FAMILIES",
    "SlamLoopConfig",
    "SlamLoopForCausalLM",
    "SlamLoopForImageTextToText",
    "SlamLoopModel",
    "SlamLoopPreTrainedModel",
    "SlamV1Config",
    "SlamV1ForCausalLM",
    "SlamV1ForMaskedLM",
    "SlamV1ForSequenceClassification",
    "SlamV1Model",
    "SlamV1PreTrainedModel",
    "SlamV2Config",
    "SlamV2ForCausalLM",
    "SlamV2ForMaskedLM",
    "SlamV2ForSequenceClassification",
    "SlamV2Model",
    "SlamV2PreTrainedModel",
    "SlamImageProcessor",
    "SlamProcessor",
    "SlamV3Config",
    "SlamV3ForConditionalGeneration",
    "SlamV3Model",
    "SlamV3PreTrainedModel",
    "SlamV3VisionConfig",
    "register_auto_classes",
]
