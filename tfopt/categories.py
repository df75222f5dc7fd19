"""Which training-only or debug category a node belongs to, for the report's `removed` counts."""
from __future__ import annotations

import re

CATEGORIES = ("gradients", "optimizer", "summaries", "save_restore", "initializers",
              "input_queues", "debug", "control_flow", "dead_branches", "dropout",
              "augmentation", "identity", "unreachable", "folded_constants", "duplicates")

DEBUG_OPS = frozenset({
    "Assert", "CheckNumerics", "CheckNumericsV2", "Print", "PrintV2", "StringFormat",
    "DebugIdentity", "DebugIdentityV2", "DebugNanCount", "DebugNumericSummary",
    "DebugNumericSummaryV2"})
# debug ops whose output 0 is their input 0; the rest are sinks
DEBUG_PASSTHROUGH_OPS = frozenset({
    "CheckNumerics", "CheckNumericsV2", "Print", "DebugIdentity", "DebugIdentityV2"})
SUMMARY_OPS = frozenset({
    "MergeSummary", "SummaryWriter", "CreateSummaryFileWriter", "CreateSummaryDbWriter",
    "FlushSummaryWriter", "CloseSummaryWriter", "WriteSummary", "WriteRawProtoSummary",
    "WriteGraphSummary", "ImportEvent"})
SAVE_RESTORE_OPS = frozenset({
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
    "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec"})
IDENTITY_OPS = frozenset({"Identity", "IdentityN", "NoOp", "Snapshot", "StopGradient",
                          "PreventGradient"})
_INPUT_PIPELINE_OP = re.compile(r"Dataset|Iterator|Queue|Reader")
INITIALIZER_OPS = frozenset({"VarIsInitializedOp", "IsVariableInitialized"})
_OPTIMIZER_OP = re.compile(r"^(Resource)?(Sparse)?Apply|^Assign(Add|Sub)?$|"
                           r"^Assign(Add|Sub)?VariableOp$")
_OPTIMIZER_SCOPE = re.compile(r"(^|/)(optimizer|Adam\w*|SGD|Momentum|RMSProp|Adagrad\w*|"
                              r"global_step|beta[12]_power)(/|$|_\d+$)")


def is_update_op(op: str) -> bool:
    """Optimizer applies and variable assignments."""
    return bool(_OPTIMIZER_OP.search(op))


def writes_variable(op: str) -> bool:
    """Ops that write the variable their first input holds: updates, scatters, and the
    random generators' state advances."""
    return is_update_op(op) or op.startswith("ResourceScatter") or op in RNG_STATE_OPS


RNG_STATE_OPS = frozenset({"RngReadAndSkip", "RngSkip"})


def is_input_pipeline_op(op: str) -> bool:
    """tf.data datasets and iterators, queues and readers."""
    return bool(_INPUT_PIPELINE_OP.search(op))


def is_summary_op(op: str) -> bool:
    return op in SUMMARY_OPS or op.endswith(("Summary", "SummaryV2"))


def classify(node) -> str | None:
    """The training-only or debug category of a NodeDef, or None for ordinary compute."""
    op, name = node.op, node.name
    if op in DEBUG_OPS:
        return "debug"
    if is_summary_op(op):
        return "summaries"
    if op in SAVE_RESTORE_OPS or name.startswith("save/"):
        return "save_restore"
    if name.startswith(("gradients/", "gradient_tape/")) or "/gradients/" in name \
            or "/gradient_tape/" in name or op.endswith("Grad") \
            or op == "BroadcastGradientArgs":
        return "gradients"
    if op in INITIALIZER_OPS or name.endswith("/Initializer") or "/Initializer/" in name \
            or name == "init" or name.startswith("init_") \
            or (is_update_op(op) and any("/Initializer/" in ref for ref in node.input)):
        return "initializers"
    if is_update_op(op) or _OPTIMIZER_SCOPE.search(name):
        return "optimizer"
    if is_input_pipeline_op(op):
        return "input_queues"
    if op in IDENTITY_OPS:
        return "identity"
    return None


_OPTIMIZER_VARIABLE = re.compile(
    r"^optimizer(_weights)?[/.]|/\.OPTIMIZER_SLOT/|(^|/)(global_step|beta[12]_power)$|"
    r"/(Adam|Adam_1|Momentum|RMSProp|RMSProp_1|Adagrad|Ftrl|Ftrl_1|Adadelta|Adadelta_1)$")


def is_optimizer_variable(key: str) -> bool:
    """Whether a checkpoint key or Keras weight path is optimizer state: TF2 optimizer
    objects and slots, TF1 slot variables (`<var>/Adam`), step counters."""
    return bool(_OPTIMIZER_VARIABLE.search(key))


# Keras' training-only layers that are not named Random* (those are found by their name)
AUGMENTATION_LAYERS = frozenset({"GaussianNoise", "GaussianDropout", "AlphaDropout", "AugMix",
                                 "RandAugment", "CutMix", "MixUp", "Solarization"})


def is_augmentation_layer(layer) -> bool:
    """Whether a Keras layer is random augmentation, which inference skips: Keras'
    preprocessing layers named Random* and the noise layers, subclasses included."""
    return any(cls.__name__ in AUGMENTATION_LAYERS
               or (cls.__name__.startswith("Random") and "preprocessing" in cls.__module__)
               for cls in type(layer).__mro__)
