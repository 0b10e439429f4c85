"""Training support: initialisers, optimisers, schedules, clipping,
checkpoints, run directories, plots, progress display and metrics.

Independent of the network runtime: parameters are ``dict[str, ndarray]``
and gradients a dict with the same keys and shapes.
"""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, rng_from_state, save_checkpoint
from .clip import clip_global_norm, clip_scale, clip_value, global_norm
from ..initializers import INITIALIZERS, default_initializer, fans, initialize
from .metrics import RunningMean, accuracy, confusion_matrix, perplexity
from .optim import OPTIMIZERS, SGD, Adam, AdamW, Momentum, Optimizer, make_optimizer
from .progress import Progress
from .rundir import RunDir
from .schedule import SCHEDULES, Schedule, make_schedule

__all__ = [
    "Checkpoint", "CheckpointError", "load_checkpoint", "rng_from_state", "save_checkpoint",
    "clip_global_norm", "clip_scale", "clip_value", "global_norm",
    "INITIALIZERS", "default_initializer", "fans", "initialize",
    "RunningMean", "accuracy", "confusion_matrix", "perplexity",
    "OPTIMIZERS", "SGD", "Adam", "AdamW", "Momentum", "Optimizer", "make_optimizer",
    "plot_confusion", "plot_curves",
    "Progress",
    "RunDir",
    "SCHEDULES", "Schedule", "make_schedule",
]


def __getattr__(name):
    # matplotlib takes about a second to import: load plots only when used.
    if name in ("plot_curves", "plot_confusion"):
        from . import plots
        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
