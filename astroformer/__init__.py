"""astroformer: a differentiable simulator of neuron–astrocyte networks that compute self-attention."""

from ._baselines import linear_attention as linear_attention, softmax_attention as softmax_attention
from ._head._block import na_attention as na_attention
from ._features._maps import (
    AbstractFeatureMap as AbstractFeatureMap,
    EluFeatures as EluFeatures,
    PositiveRandomFeatures as PositiveRandomFeatures,
    RandomFourierFeatures as RandomFourierFeatures,
)
from ._features._registry import FEATURE_MAPS as FEATURE_MAPS, make_feature_map as make_feature_map
from ._features._headwise import HeadwiseFeatures as HeadwiseFeatures
from ._features._learned import LearnedFeatures as LearnedFeatures
from ._features._oprf import OptimalPositiveRandomFeatures as OptimalPositiveRandomFeatures, fit_A as fit_A
from ._features._oprf import optimal_A as optimal_A
from ._head._params import NAParams as NAParams
from ._host_memory import keep_freed_host_memory as keep_freed_host_memory
from ._solvers._magnus import Magnus2 as Magnus2
from ._solvers._rosenbrock import Ros2 as Ros2
from ._transforms import Constrained as Constrained, unwrap as unwrap

__version__ = "0.1.0"

from ._attention import (
    ATTENTION_KINDS as ATTENTION_KINDS,
    AbstractAttention as AbstractAttention,
    LinearAttention as LinearAttention,
    NeuronAstrocyteAttention as NeuronAstrocyteAttention,
    SoftmaxAttention as SoftmaxAttention,
    make_attention as make_attention,
)
from ._head._trajectory import (
    ReadTrajectory as ReadTrajectory,
    plot_read_trajectory as plot_read_trajectory,
    read_trajectory as read_trajectory,
)
from ._head._calcium_read import (
    CalciumCoupling as CalciumCoupling,
    default_coupling as default_coupling,
    na_attention_calcium as na_attention_calcium,
)
from . import calcium as calcium, fit as fit, tasks as tasks
