"""SLAM v2: the shared suite (routing, batched blocks and MoA tests follow)."""

from slam_common import SlamModelTesterMixin
from slam_tester import SlamV2ModelTester


class TestSlamV2Model(SlamModelTesterMixin):  # pytest collects `Test*` classes only
    model_tester_class = SlamV2ModelTester
