"""Graph passes, registered by name; a pipeline is a list of names."""
from tfopt.passes import grappler, prune, strip_training  # noqa: F401  (registers the passes)
from tfopt.passes.base import REGISTRY, PassContext, PassLog, PassReport, register, run_pipeline

DEFAULT_PIPELINE = ["strip_training", "prune", "grappler"]

__all__ = ["DEFAULT_PIPELINE", "REGISTRY", "PassContext", "PassLog", "PassReport", "register",
           "run_pipeline"]
