"""Gradient-based fitting of neuron–astrocyte dynamics to recorded traces, to a softmax head, or to any loss."""

from ._fit import FitResult as FitResult, fit as fit, free_filter_spec as free_filter_spec
from ._fit import value_and_grad as value_and_grad
from ._model import NAModel as NAModel
from ._targets import (
    AbstractTarget as AbstractTarget,
    AttentionTarget as AttentionTarget,
    LossTarget as LossTarget,
    TraceTarget as TraceTarget,
)
from ._weights import AttentionWeightsTarget as AttentionWeightsTarget
from ._traces import Traces as Traces, read_traces as read_traces
from .._transforms import (
    AbstractTransform as AbstractTransform,
    Bounded as Bounded,
    Constrained as Constrained,
    Identity as Identity,
    Positive as Positive,
    unwrap as unwrap,
)
