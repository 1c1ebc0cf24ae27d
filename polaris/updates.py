"""Updates: the transforms optimizers are built from (Polaris.Updates), plus the Optax
transforms and combinators Python users reach for."""

from polaris._src.accumulate import AccumulateGradientsState, accumulate_gradients
from polaris._src.adadelta import ScaleByAdaDeltaState, scale_by_adadelta
from polaris._src.adam import ScaleByAdamState, scale_by_adam
from polaris._src.adamax import scale_by_adamax
from polaris._src.amsgrad import ScaleByAmsgradState, scale_by_amsgrad
from polaris._src.apply import apply_updates
from polaris._src.apply_if_finite import ApplyIfFiniteState, apply_if_finite
from polaris._src.base import (
    EmptyState,
    Transform,
    chain,
    compose,
    identity,
    stateful,
    stateless,
)
from polaris._src.belief import ScaleByBeliefState, scale_by_belief
from polaris._src.centralize import centralize
from polaris._src.clip import clip, clip_by_block_rms, clip_by_global_norm
from polaris._src.ema import EmaState, ema
from polaris._src.factorized import FactoredState, scale_by_factored_rms, scale_by_param_block_rms
from polaris._src.freeze import freeze, set_to_zero
from polaris._src.inject_hyperparams import InjectHyperparamsState, inject_hyperparams
from polaris._src.lion import ScaleByLionState, scale_by_lion
from polaris._src.masked import MaskedNode, MaskedState, masked
from polaris._src.multi_transform import MultiTransformState, multi_transform
from polaris._src.noise import AddNoiseState, add_noise
from polaris._src.novograd import ScaleByNovogradState, scale_by_novograd
from polaris._src.radam import scale_by_radam
from polaris._src.rms import ScaleByRmsState, scale_by_rms
from polaris._src.rss import ScaleByRssState, scale_by_rss
from polaris._src.scale import (
    ScaleByLearningRateState,
    ScaleByScheduleState,
    ScaleByStateState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_by_state,
)
from polaris._src.sign import scale_by_sign
from polaris._src.stddev import ScaleByStddevState, scale_by_stddev
from polaris._src.trace import TraceState, trace
from polaris._src.trust_ratio import scale_by_trust_ratio
from polaris._src.weight_decay import add_decayed_weights
from polaris._src.yogi import scale_by_yogi
from polaris._src.zero_nans import ZeroNansState, zero_nans

#: Optax's name for :func:`accumulate_gradients`'s behaviour (``MultiSteps(opt, k)``).
multi_steps = accumulate_gradients

__all__ = [
    "AccumulateGradientsState",
    "AddNoiseState",
    "ApplyIfFiniteState",
    "EmaState",
    "EmptyState",
    "FactoredState",
    "InjectHyperparamsState",
    "MaskedNode",
    "MaskedState",
    "MultiTransformState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "ScaleByStateState",
    "ScaleByStddevState",
    "TraceState",
    "Transform",
    "ZeroNansState",
    "accumulate_gradients",
    "add_decayed_weights",
    "add_noise",
    "apply_if_finite",
    "apply_updates",
    "centralize",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "compose",
    "ema",
    "freeze",
    "identity",
    "inject_hyperparams",
    "masked",
    "multi_steps",
    "multi_transform",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_param_block_rms",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_state",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "set_to_zero",
    "stateful",
    "stateless",
    "trace",
    "zero_nans",
]
