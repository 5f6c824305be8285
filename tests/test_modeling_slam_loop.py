"""The latent-loop transformer: the shared suite (with adaptive exit on), plus what only the loop has: per-token exit
with row gathering, both cache modes, sampled depth with truncated backprop, the confidence head's training."""

import pytest
from slam_common import SlamModelTesterMixin, single_threaded_torch
from slam_tester import SlamLoopModelTester


class TestSlamLoopModel(SlamModelTesterMixin):  # pytest collects `Test*` classes only
    model_tester_class = SlamLoopModelTester


single_threaded = pytest.fixture(scope="module", autouse=True)(single_threaded_torch)
