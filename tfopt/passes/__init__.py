"""Graph passes, registered by name; a pipeline is a list of names."""
from tfopt.passes import (  # noqa: F401 (registers them)
                          combined_nms,
                          compute_in_fp32,
                          dedupe,
                          dynamic_tensor_lists,
                          erfc_to_erf,
                          fake_quant_for_onnx,
                          fold_control_flow,
                          fold_pad,
                          fold_scale_shift,
                          freeze_placeholders,
                          fused_nms_to_op,
                          grappler,
                          inline_xla_calls,
                          nudge_fake_quant,
                          prune,
                          remove_dropout,
                          strip_augmentation,
                          strip_training,
                          training_batch_norm,
                          unmark_fused_calls,
)
from tfopt.passes.base import REGISTRY, PassContext, PassLog, register, run_pipeline, run_rewrite

DEFAULT_PIPELINE = ("strip_training", "prune", "fold_control_flow", "grappler",
                    "fold_scale_shift", "fold_pad", "dedupe")
# run by the TF1 loaders on the whole graph before variables are frozen: the training-mode
# rewrite needs the moving-average updates, which the signature's outputs do not reach;
# the loader's reference then runs the rewritten graph if a rewrite changed its meaning
INFERENCE_REWRITES = ("freeze_placeholders", "fold_control_flow", "training_batch_norm",
                      "remove_dropout")

__all__ = ["DEFAULT_PIPELINE", "INFERENCE_REWRITES", "REGISTRY", "PassContext", "PassLog",
           "register", "run_pipeline", "run_rewrite"]
