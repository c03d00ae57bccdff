"""The stacked multi-model trainer: M runs of one ConvNet shape trained as one network.

* :mod:`~nasproxy.multitrain.stacked`: the grouped network of M models
  (:class:`StackedConvNet`), built from and read back into separate ConvNets;
* :mod:`~nasproxy.multitrain.lockstep`: the training loop, equivalent to
  :func:`nasproxy.train.train` step by step per model (:func:`train_many`, with the
  fallback in halves down to ``train``; :class:`FastOptions` for the faster variants);
* :mod:`~nasproxy.multitrain.planning`: which units of a sweep stack together
  (:func:`plan_stacks`) and how many fit a memory budget (:func:`largest_stack`).

Why stacking pays and how the search uses it: ``docs/search.md``.
"""

from nasproxy.multitrain.lockstep import (
    RNG_MODES,
    FastOptions,
    fallback_reason,
    fit_many,
    train_many,
    unstackable,
)
from nasproxy.multitrain.planning import largest_stack, plan_stacks, stack_memory_bytes
from nasproxy.multitrain.stacked import StackedConvNet

__all__ = [
    "RNG_MODES",
    "FastOptions",
    "StackedConvNet",
    "fallback_reason",
    "fit_many",
    "largest_stack",
    "plan_stacks",
    "stack_memory_bytes",
    "train_many",
    "unstackable",
]
