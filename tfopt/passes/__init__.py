"""Graph passes, registered by name; a pipeline is a list of names."""
from tfopt.passes import fold_scale_shift, grappler, prune, strip_training  # noqa: F401  (registers the passes)
from tfopt.passes.base import REGISTRY, PassContext, PassLog, PassReport, register, run_pipeline

DEFAULT_PIPELINE = ["strip_training", "prune", "grappler", "fold_scale_shift"]

__all__ = ["DEFAULT_PIPELINE", "REGISTRY", "PassContext", "PassLog", "PassReport", "register",
           "run_pipeline"]
