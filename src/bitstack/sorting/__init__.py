"""The universal order of an artifact's blocks: strategies, their measurements, re-sorting.

* :mod:`.strategies`: the ordering rules, pure (no model, no I/O);
* :mod:`.measure`: :class:`StackEvaluator`, the validation loss of any per-weight block counts;
* :mod:`.resort`: rewriting an artifact in a new order, atomically;
* :mod:`.driver`: ``bitstack sort`` (:func:`compute_order`, :func:`sort_artifact`).
"""

from bitstack.sorting.driver import (SortResult, SortSettings, cache_dir, compute_order, energy_stats, fisher_diagonal,
                                     is_compress_time_proxy, sort_artifact, validation_windows)
from bitstack.sorting.measure import StackEvaluator
from bitstack.sorting.resort import resort_artifact, stack_order

__all__ = ["SortResult", "SortSettings", "StackEvaluator", "cache_dir", "compute_order", "energy_stats",
           "fisher_diagonal", "is_compress_time_proxy", "resort_artifact", "sort_artifact", "stack_order",
           "validation_windows"]
