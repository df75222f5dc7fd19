"""TFLite flatbuffer (`model.tflite`) via the TFLite converter, with fallbacks, run back in
the LiteRT interpreter (ai-edge-litert), which replaces the deprecated tf.lite.Interpreter."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tfopt import compat
from tfopt.errors import ConversionError
from tfopt.exporters.base import (
    Exported,
    ExportOptions,
    Opened,
    pick_signature,
    recurrent_layers,
    save_inference_model,
)
from tfopt.graph import DT_INT64, DT_STRING
from tfopt.logs import native_stderr_silenced
from tfopt.memory import return_freed_memory
from tfopt.model import SERVING_SIGNATURE, Model, TensorSpec, graphs_paged_out
from tfopt.modes import MODES as QUANTIZE

FORMAT = "tflite"
FILENAME = "model.tflite"
SUFFIX = ".tflite"
COMPANIONS: tuple[str, ...] = ()
DEFAULT = True
EXTRA = None
PACKAGES = ("ai-edge-litert",)

# tried in order. batch_1 fixes unknown batch dimensions to 1, in the inputs and in tensor
# lists, so that tensor-list lowering has static element shapes (Keras LSTM/GRU need it);
# the artifact then takes batch 1 only, and says so in its input shapes. fixed_shape fixes
# every unknown dimension to the verification shape (a causal mask sliced to a dynamic
# length is a Flex StridedSlice otherwise); the artifact takes that shape only.
ATTEMPTS = ("none", "batch_1", "fixed_shape", "select_tf_ops")


def _batch_one(model: Model) -> Model | None:
    shapes: dict[str, tuple] = {t.name: (1, *t.shape[1:]) for t in model.inputs
                                if t.shape and t.shape[0] is None}
    return model.with_input_shapes(shapes) if shapes else None


def _fixed_shape(model: Model) -> Model | None:
    """Every unknown dimension fixed as verification fills it, if some are past the batch."""
    if not any(t.shape and None in t.shape[1:] for t in model.inputs):
        return None
    return model.with_input_shapes({t.name: t.concrete_shape() for t in model.inputs
                                    if t.shape and None in t.shape})


def _shape_limit(model: Model) -> str:
    fixed = {t.name: t.concrete_shape() for t in model.inputs if t.shape and None in t.shape}
    given = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in fixed.items())
    flags = " ".join(f"--input-shape {name}={','.join(map(str, shape))}"
                     for name, shape in fixed.items())
    return (f"takes {given} only (with unknown dimensions the converter needed Select TF "
            f"ops); choose another size with {flags}")


MODES = frozenset(QUANTIZE)
PREPARE = ("nudge_fake_quant", "dynamic_tensor_lists", "compute_in_fp32", "unmark_fused_calls",
           "combined_nms")


RECURRENT = {
    "none": "builtin WHILE, tensor lists lowered by the converter (any batch)",
    "batch_1": "builtin WHILE, tensor lists lowered with static element shapes (batch fixed "
               "to 1)",
    "select_tf_ops": "Select TF ops (Flex): needs the TF ops runtime"}


def _converter(saved_model_dir: str, signature: str, fallback: str,
               options: ExportOptions | None = None):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[signature])
    # TF 2.21's convert() restores the model again (2.15's keeps this copy for it): the one
    # from_saved_model restored to list the signatures is garbage, half a GB on BERT-base
    return_freed_memory()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # writing the converter's metadata (its version and flags: report.json has them) unpacks
    # and repacks the whole flatbuffer in Python: 3.5 s and a copy of the weights on BERT-base
    converter.exclude_conversion_metadata = True
    if options is not None and options.quantize != "none":
        _quantization(converter, options)
    if fallback == "batch_1":
        converter._experimental_default_to_single_batch_in_tensor_list_ops = True
    elif fallback == "select_tf_ops":
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter._experimental_lower_tensor_list_ops = False
    return converter


def _quantization(converter, options: ExportOptions) -> None:
    """The converter flags of each mode (post-training quantization)."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if options.quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
        return
    if options.quantize == "dynamic":
        return
    if options.int8_io and options.quantize == "int8":
        converter.inference_input_type = converter.inference_output_type = tf.int8
    if options.calibration is None:  # quantization-aware: the model's fake-quant ranges,
        return  # and the ops it left float stay float
    feeds = options.calibration
    converter.representative_dataset = lambda: (dict(feed) for feed in feeds)
    if options.quantize == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif not options.float_layers:  # float layers need float builtins next to int8 ones
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def float_layer_model(saved_model_dir: str, signature: str, options: ExportOptions) -> bytes:
    """An int8 model in which options.float_layers (TF node names) and the ops reading their
    outputs stay float, through the QuantizationDebugger's denylist."""
    import tensorflow as tf

    plain = _converter(saved_model_dir, signature, "none").convert()
    denylist = _denylist(plain, set(options.float_layers))
    debug_options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_converter(saved_model_dir, signature, "none", options),
        debug_dataset=lambda: (dict(f) for f in options.calibration or []),
        debug_options=debug_options)
    return debugger.get_nondebug_quantized_model()


def _denylist(flatbuffer: bytes, layers: set[str]) -> list[str]:
    """Output tensor names of the TFLite ops computing the layers and of the ops reading them.

    A fused op's output is named by the TF nodes it fuses, joined by ';', and a name already
    taken (by the layer's weights) gets a digit appended.
    """

    found = compat.tflite_interpreter_class()(model_content=flatbuffer)
    names = {t["index"]: t["name"] for t in found.get_tensor_details()}
    ops = found._get_ops_details()  # the public API lists tensors, not which op reads them
    def computes(tensor: int) -> bool:
        return any(part.rstrip("0123456789") in layers or part in layers
                   for part in names.get(tensor, "").split(";"))

    hit = [op for op in ops if any(computes(o) for o in op["outputs"])]
    tensors = {o for op in hit for o in op["outputs"]}
    readers = [op for op in ops if tensors & set(op["inputs"])]
    return sorted({names[o] for op in hit + readers for o in op["outputs"]})


def check_options(options: ExportOptions) -> None:
    """Every value of the options this target reads is valid (options.validate checks them)."""


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    """TF ops the converter cannot express as TFLite builtins, found by converting."""
    with tempfile.TemporaryDirectory(prefix="tfopt-tflite-") as workdir:
        save_inference_model(model, workdir)
        try:
            with native_stderr_silenced():
                _converter(workdir, model.signature, "none").convert()
        except Exception as exc:  # the converter raises ConverterError and others
            named = [op.removeprefix("tf.") for op in blocking_ops(str(exc))]
            return named or [f"(conversion failed: {_summary(str(exc))})"]
    return []


def blocking_ops(message: str) -> list[str]:
    """TF op names the converter's message says it could not express."""
    return sorted(set(re.findall(r"'(tf\.\w+)' op", message)))


# key -> value dtypes (DataType enums) that TFLite's HASHTABLE builtins implement
TABLE_TYPES = {(DT_STRING, DT_INT64): "string -> int64",
               (DT_INT64, DT_STRING): "int64 -> string"}


def _unsupported_tables(model: Model) -> list[str]:
    import tensorflow as tf

    return [f"{n.name} ({tf.as_dtype(n.attr['key_dtype'].type).name} -> "
            f"{tf.as_dtype(n.attr['value_dtype'].type).name})" for n in model.graph_def.node
            if n.op == "HashTableV2" and
            (n.attr["key_dtype"].type, n.attr["value_dtype"].type) not in TABLE_TYPES]


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    tables = _unsupported_tables(model)
    if tables:
        raise ConversionError(
            f"TFLite's hash-table builtins hold string -> int64 and int64 -> string tables "
            f"only, and this model has {', '.join(tables)}; the onnx, pb and saved_model "
            "targets hold it, or map the values through an int64 table",
            details={"blocking_ops": ["HashTableV2"]})
    result = Exported(precision=QUANTIZE[options.quantize].precision)
    # through a SavedModel whose weights are variables: from_concrete_functions drops the
    # signature's name, and the converter freezes variables in less memory than constants
    with tempfile.TemporaryDirectory(prefix="tfopt-tflite-") as workdir:
        saved = {}
        for fallback in ATTEMPTS:
            candidate = _batch_one(model) if fallback == "batch_1" else \
                _fixed_shape(model) if fallback == "fixed_shape" else model
            if candidate is None:
                continue
            if id(candidate) not in saved:
                saved[id(candidate)] = str(Path(workdir) / fallback)
                save_inference_model(candidate, saved[id(candidate)])
            try:  # paging out also hands back what saving left
                with native_stderr_silenced(), graphs_paged_out(model, candidate):
                    if options.float_layers:
                        flatbuffer = float_layer_model(saved[id(candidate)], model.signature,
                                                       options)
                    else:
                        flatbuffer = _converter(saved[id(candidate)], model.signature,
                                                fallback, options).convert()
            except Exception as exc:  # the converter raises ConverterError and others
                message = str(exc).strip()
                result.attempts.append({"fallback": fallback, "error": _summary(message),
                                        "blocking_ops": blocking_ops(message)})
                continue
            result.attempts.append({"fallback": fallback, "error": None})
            result.fallback = None if fallback == "none" else fallback
            if fallback == "batch_1":
                result.batch_limit = ("the converter lowered the tensor lists only with the "
                                      "batch fixed to 1")
            if fallback == "fixed_shape":
                result.shape_limit = _shape_limit(model)
                result.batch_limit = result.note = result.shape_limit
            path.write_bytes(flatbuffer)
            result.recurrent = [{"layer": name, "conversion": RECURRENT[fallback]}
                                for name in recurrent_layers(model)]
            return result
    blocked = sorted({op for a in result.attempts for op in a["blocking_ops"]})
    raise ConversionError(f"the TFLite converter failed with every fallback ({', '.join(ATTEMPTS)})"
                          + (f"; blocking ops: {', '.join(blocked)}" if blocked else "")
                          + f": {result.attempts[0]['error']}",
                          details={"attempts": result.attempts, "blocking_ops": blocked})


def _summary(message: str) -> str:
    # the converter's first error line, without its location prefix
    for line in message.splitlines():
        if "error:" in line:
            line = line.split("error:", 1)[1].strip()
            # drop the MLIR location (pages of nested callsites) before the message itself
            located = re.search(r"'tf\.\w+' op .*$", line) if line.startswith("loc(") else None
            return (located.group(0) if located else line)[:500]
    return (message.splitlines() or [""])[0][:500]


def op_names(path: Path) -> list[str]:
    """The op of every operator in the model, builtin or custom (Flex ops included)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    # the flatbuffer's own accessors, present in every TF: unpacking to ModelT (what
    # flatbuffer_utils does, its reader missing before TF 2.18) would copy every weight
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        codes.append(custom.decode() if custom else names.get(builtin, str(builtin)))
    return [codes[graph.Operators(j).OpcodeIndex()]
            for graph in (model.Subgraphs(i) for i in range(model.SubgraphsLength()))
            for j in range(graph.OperatorsLength())]


def describe(path: Path, model: Model) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(op_names(path)).items()))


def interpreter(path: Path, preserve_all_tensors: bool = False):
    with native_stderr_silenced():
        found = compat.tflite_interpreter_class()(
            model_path=str(path), experimental_preserve_all_tensors=preserve_all_tensors)
        found.allocate_tensors()  # XNNPACK announces itself here
        return found


def runner(path: Path, model: Model):
    return open_artifact(path, model.signature, allow_io_ops=True).run  # tfopt's own


def open_artifact(path: Path, signature: str, allow_io_ops: bool = False,
                  found=None) -> Opened:
    """A .tflite as it is (any producer), through the signature of that name, or its only
    one. Float feeds in, float outputs out; integer inputs/outputs (--int8-io) are quantized
    and dequantized with the model's own scales. found: an interpreter already open."""
    import numpy as np

    found = found or interpreter(path)
    signature = pick_signature(path, list(found.get_signature_list()), signature)
    runner_fn = found.get_signature_runner(signature)
    inputs, outputs = runner_fn.get_input_details(), runner_fn.get_output_details()

    def spec(name: str, detail: dict) -> TensorSpec:
        dims = detail.get("shape_signature", detail["shape"])
        integer = detail["quantization"][0] and np.issubdtype(detail["dtype"], np.integer)
        return TensorSpec(name, "float32" if integer else np.dtype(detail["dtype"]).name,
                          tuple(None if d < 0 else int(d) for d in dims))

    def quantize(value, detail):
        scale, zero = detail["quantization"]
        if not scale or np.issubdtype(np.asarray(value).dtype, np.integer):
            return value
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(value / scale + zero), info.min, info.max).astype(detail["dtype"])

    def dequantize(value, detail):
        scale, zero = detail["quantization"]
        return (value.astype(np.float32) - zero) * scale if scale else value

    def run(feed: dict) -> dict:
        result = runner_fn(**{k: quantize(v, inputs[k]) for k, v in feed.items()})
        return {k: dequantize(v, outputs[k]) for k, v in result.items()}

    return Opened([spec(k, d) for k, d in inputs.items()],
                  [spec(k, d) for k, d in outputs.items()], run, signature)


def trace(path: Path, feed: dict, signature: str | None = None) -> dict:
    """Every tensor the interpreter preserved, by name (a fused op's names joined by ';'),
    quantized ones dequantized with their own scale: float values to compare."""
    import numpy as np

    found = interpreter(path, preserve_all_tensors=True)
    opened = open_artifact(path, signature or SERVING_SIGNATURE, True, found)
    values = opened.run(feed)  # the outputs by their signature names
    computed = {i for op in found._get_ops_details() for i in op["outputs"]}  # no weights
    for detail in found.get_tensor_details():
        if detail["index"] not in computed:
            continue
        scale, zero = detail["quantization"]
        dtype = np.dtype(detail["dtype"])
        if dtype.kind != "f" and not (scale and dtype.kind in "iu"):
            continue
        try:
            value = found.get_tensor(detail["index"])
        except ValueError:  # a tensor no op wrote (an unused constant's slot)
            continue
        values[detail["name"]] = (value.astype(np.float32) - zero) * scale \
            if dtype.kind in "iu" else value
    return values


def read_precision(path: Path) -> str:
    """From the QUANTIZE op and the tensor types (any producer)."""
    import numpy as np

    kinds = {np.dtype(t["dtype"]).name for t in interpreter(path).get_tensor_details()}
    return "int16x8" if "int16" in kinds and "int8" in kinds else \
        "int8" if "QUANTIZE" in op_names(path) and "int8" in kinds else \
        "dynamic-int8" if "int8" in kinds else "fp16" if "float16" in kinds else "fp32"
