"""Updates: the transforms optimizers are built from (Polaris.Updates)."""

from polaris._src.adam import ScaleByAdamState, scale_by_adam
from polaris._src.apply import apply_updates
from polaris._src.base import (
    EmptyState,
    Transform,
    chain,
    compose,
    identity,
    stateful,
    stateless,
)
from polaris._src.scale import (
    ScaleByLearningRateState,
    ScaleByScheduleState,
    ScaleByStateState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_by_state,
)
from polaris._src.trace import TraceState, trace
from polaris._src.weight_decay import add_decayed_weights

__all__ = [
    "EmptyState",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "ScaleByScheduleState",
    "ScaleByStateState",
    "TraceState",
    "Transform",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "compose",
    "identity",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_state",
    "stateful",
    "stateless",
    "trace",
]
