"""`slam-hf bench`: the model zoo (`models`), the runner (`runner`) and the reports (`report`). Not remote code."""
