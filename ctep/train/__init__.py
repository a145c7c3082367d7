"""Training EP networks (and their backprop baselines) on real data.

``ctep train --config FILE.toml`` runs :class:`Trainer`; see :mod:`ctep.train.config` for the
config sections and :mod:`ctep.train.trainer` for the run folder.
"""

from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig, load_config
from .trainer import Trainer, TrainingDiverged, train

__all__ = ["CheckpointError", "TrainConfig", "Trainer", "TrainingDiverged", "load_checkpoint",
           "load_config", "train"]
