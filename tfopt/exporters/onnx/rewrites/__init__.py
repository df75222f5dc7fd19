"""ONNX rewrites, one per file, each registered by name (registry.py); a list of names is a
pipeline, run by `run_rewrites`."""
from tfopt.exporters.onnx.rewrites import (  # noqa: F401  (each registers its rewrite)
    canonical_names,
    cast_round_trips,
    compact_names,
    gemm,
    gru,
    hard_activations,
    maintained,
    quantized_weights,
    short_names,
    zero_initial_states,
)
from tfopt.exporters.onnx.rewrites.registry import (
    REWRITES,
    OnnxRewrite,
    register_rewrite,
    run_rewrites,
)

# measured on MobileNetV2/ResNet50/EfficientNetB0 (tf2onnx -> nodes): onnxoptimizer folds
# every Pad into its Conv (107->103, 126->125, 297->293), onnxslim misses ResNet50's but
# folds EfficientNet's squeeze-excite Reshapes (297->275); in this order both gains add up
POST_OPTIMIZE = ("gru", "zero_initial_states", "onnxoptimizer", "onnxslim", "gemm",
                 "hard_activations", "quantized_weights")
# after quantization too: short names, then the same bytes on every run
FINISH = ("compact_names", "canonical_names")
QUANTIZED_FINISH = ("canonical_names", "short_names")  # names cost more than int8 weights

__all__ = ["FINISH", "POST_OPTIMIZE", "QUANTIZED_FINISH", "REWRITES", "OnnxRewrite",
           "register_rewrite", "run_rewrites"]
