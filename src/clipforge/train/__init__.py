"""Training: typed config, pure losses, the explicit loop, gradient caching, distributed gather, resume, metrics.

    from clipforge.train import init_runtime, load_config, train

    config = load_config("configs/tiny_synthetic.yaml", {"optim.lr": 1e-3})
    result = train(config, init_runtime())
"""

from clipforge.config import parse_overrides
from clipforge.data.config import CSVDataConfig, SyntheticDataConfig
from clipforge.train.config import (
    EvalConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    load_config,
    save_config,
)
from clipforge.train.distributed import Runtime, init_runtime, shutdown
from clipforge.train.loop import TrainResult, train
from clipforge.train.loss import clip_loss, siglip_loss
from clipforge.train.prepare import Prepared, prepare

__all__ = [
    "CSVDataConfig",
    "EvalConfig",
    "OptimConfig",
    "Prepared",
    "Runtime",
    "ScheduleConfig",
    "SyntheticDataConfig",
    "TrainConfig",
    "TrainResult",
    "clip_loss",
    "init_runtime",
    "load_config",
    "parse_overrides",
    "prepare",
    "save_config",
    "shutdown",
    "siglip_loss",
    "train",
]
