"""What both Transformer² demos (svf_vs_lora, domain_experts) set up the same way."""

from __future__ import annotations


def cpu_training_args(output_dir, seed: int, **fields):
    """TrainingArguments for a short CPU run: no reports, no checkpoints, seeded data order, data loaded in the main
    process, logs every 10 steps; `fields` add to or override these."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        logging_steps=10,
    )
    return TrainingArguments(**{**settings, **fields})


def show_demo_progress(name: str) -> None:
    """A demo's `main`: its status lines (and those of every slam_hf module) on stdout, with the time."""
    from ..training.console import show_status_lines

    show_status_lines(f"[{name} %(asctime)s] %(message)s", datefmt="%H:%M:%S")
