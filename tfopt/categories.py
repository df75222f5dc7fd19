"""Which training-only or debug category a node belongs to, for the report's `removed` counts."""
from __future__ import annotations

import re

CATEGORIES = ("gradients", "optimizer", "summaries", "save_restore", "initializers",
              "input_queues", "debug", "identity", "unreachable", "folded_constants")

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
INPUT_QUEUE_PREFIXES = ("Iterator", "QueueDequeue", "QueueEnqueue", "FIFOQueue",
                        "RandomShuffleQueue", "PaddingFIFOQueue", "Reader")
INITIALIZER_OPS = frozenset({"VarIsInitializedOp", "IsVariableInitialized"})
_OPTIMIZER_OP = re.compile(r"^(Resource)?(Sparse)?Apply|^Assign(Add|Sub)?$|^AssignAddVariableOp$|"
                           r"^AssignSubVariableOp$")
_OPTIMIZER_SCOPE = re.compile(r"(^|/)(optimizer|Adam\w*|SGD|Momentum|RMSProp|Adagrad\w*|"
                              r"global_step|beta[12]_power)(/|$|_\d+$)")


def is_update_op(op: str) -> bool:
    """Optimizer applies and variable assignments."""
    return bool(_OPTIMIZER_OP.search(op))


def is_summary_op(op: str) -> bool:
    return op in SUMMARY_OPS or op.endswith("Summary") or op.endswith("SummaryV2")


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
    if is_update_op(op) or _OPTIMIZER_SCOPE.search(name):
        return "optimizer"
    if op in INITIALIZER_OPS or name.endswith("/Initializer") or "/Initializer/" in name \
            or name == "init" or name.startswith("init_"):
        return "initializers"
    if op.startswith(INPUT_QUEUE_PREFIXES):
        return "input_queues"
    if op in IDENTITY_OPS:
        return "identity"
    return None
