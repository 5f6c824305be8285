"""Shared pytest setup: import the repo's slam_hf without installing it, and seed every test."""

import os
import random
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state, so failures reproduce and tests do not depend on order."""
    import torch

    random.seed(0)
    torch.manual_seed(0)
    return 0
