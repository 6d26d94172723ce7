"""The test processes collect garbage less often (tests/collector.py), not never."""

import gc

from tests import collector


def test_this_process_runs_with_the_tuned_collector():
  assert gc.isenabled()
  assert gc.get_threshold() == collector.THRESHOLDS
  assert gc.get_freeze_count() > 0  # the imports' objects, frozen after collection
