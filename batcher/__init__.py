"""Token-budgeted batching of LLM and embedding inference, under asyncio and trio."""

import logging as _logging
from importlib import metadata as _metadata

from . import metrics as metrics
from ._dynamic import DynamicBatcher as DynamicBatcher
from ._events import BatchDispatched as BatchDispatched
from ._events import BatchEnded as BatchEnded
from ._events import Event as Event
from ._events import Observer as Observer
from ._events import RecordsDropped as RecordsDropped
from ._exceptions import BatcherClosedError as BatcherClosedError
from ._exceptions import BatcherOverloadedError as BatcherOverloadedError
from ._exceptions import NoLiveReplicaError as NoLiveReplicaError
from ._exceptions import QueueTimeoutError as QueueTimeoutError
from ._exceptions import RecordCancelledError as RecordCancelledError
from ._exceptions import StreamLagError as StreamLagError
from ._future import BatchFuture as BatchFuture
from ._hf import hf_token_estimator as hf_token_estimator
from ._pricing import Prompt as Prompt
from ._protocols import CostEstimator as CostEstimator
from ._protocols import CostEstimatorFn as CostEstimatorFn
from ._protocols import CostModel as CostModel
from ._protocols import InferenceFn as InferenceFn
from ._protocols import ProcessFn as ProcessFn
from ._protocols import TokenEstimator as TokenEstimator
from ._protocols import TokenEstimatorFn as TokenEstimatorFn
from ._stats import BatchStats as BatchStats
from ._stats import FittedCost as FittedCost
from ._streaming import END as END
from ._streaming import RecordStream as RecordStream
from ._streaming import StreamingBatch as StreamingBatch
from ._streaming import current_batch as current_batch
from ._sync import SyncBatcher as SyncBatcher
from ._token import TokenBatcher as TokenBatcher

# Failures are logged on the "batcher" logger; they reach stderr only where the
# application configured logging.
_logging.getLogger("batcher").addHandler(_logging.NullHandler())

try:
    __version__ = _metadata.version("batcher")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = (
    "END",
    "BatchDispatched",
    "BatchEnded",
    "BatchFuture",
    "BatchStats",
    "BatcherClosedError",
    "BatcherOverloadedError",
    "CostEstimator",
    "CostEstimatorFn",
    "CostModel",
    "DynamicBatcher",
    "Event",
    "FittedCost",
    "InferenceFn",
    "NoLiveReplicaError",
    "Observer",
    "ProcessFn",
    "Prompt",
    "QueueTimeoutError",
    "RecordCancelledError",
    "RecordStream",
    "RecordsDropped",
    "StreamLagError",
    "StreamingBatch",
    "SyncBatcher",
    "TokenBatcher",
    "TokenEstimator",
    "TokenEstimatorFn",
    "__version__",
    "current_batch",
    "hf_token_estimator",
    "metrics",
)
