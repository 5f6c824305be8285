"""`slam-hf train`: YAML run configs (`run_config`), the Trainer glue (`trainer`) and the text and image-text
recipes (`text`, `image_text`). Not remote code."""
