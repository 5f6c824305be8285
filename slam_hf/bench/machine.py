"""What a run ran on: the software versions and the CPU or GPU that training, `slam-hf bench`, the demos and the
benchmark scripts record next to their numbers. Not remote code."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess


def software_versions(*extra: str) -> dict:
    """Versions of slam_hf, torch, transformers, huggingface_hub and python, then of each `extra` distribution
    (e.g. "tokenizers", "peft")."""
    import huggingface_hub
    import torch
    import transformers

    from .. import __version__

    versions = {
        "slam_hf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
    }
    versions.update({name: importlib.metadata.version(name) for name in extra})
    return versions


def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS has none): a busy machine makes timings noisy."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def git_state(repo_root) -> str:
    """Short commit of `repo_root`, plus the files under slam_hf/ that differ from it: what code produced a result."""

    def git(*command):
        return subprocess.run(["git", *command], cwd=repo_root, capture_output=True, text=True).stdout

    try:
        changed = [line[3:] for line in git("status", "--porcelain", "slam_hf").splitlines() if line.strip()]
        head = git("rev-parse", "--short", "HEAD").strip()
    except OSError:
        return "unknown"
    return head + (f" (uncommitted: {', '.join(changed)})" if changed else "")
