"""TFLite flatbuffer (`model.tflite`) via the TFLite converter, with fallbacks, run back in tf.lite.Interpreter."""
from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

from tfopt.errors import ConversionError
from tfopt.exporters.base import Exported, ExportOptions, save_inference_model
from tfopt.logs import native_stderr_silenced
from tfopt.model import Model

FORMAT = "tflite"
FILENAME = "model.tflite"

# tried in order. batch_1 fixes unknown batch dimensions to 1, in the inputs and in tensor
# lists, so that tensor-list lowering has static element shapes (Keras LSTM/GRU need it);
# the artifact then takes batch 1 only, and says so in its input shapes.
ATTEMPTS = ("none", "batch_1", "select_tf_ops")


def _batch_one(model: Model) -> Model | None:
    shapes = {t.name: (1,) + tuple(t.shape[1:]) for t in model.inputs
              if t.shape and t.shape[0] is None}
    return model.with_input_shapes(shapes) if shapes else None


def _converter(saved_model_dir: str, signature: str, fallback: str):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[signature])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fallback == "batch_1":
        converter._experimental_default_to_single_batch_in_tensor_list_ops = True
    elif fallback == "select_tf_ops":
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter._experimental_lower_tensor_list_ops = False
    return converter


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


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    result = Exported()
    # through a variable-free SavedModel: from_concrete_functions drops the signature's name
    with tempfile.TemporaryDirectory(prefix="tfopt-tflite-") as workdir:
        saved = {}
        for fallback in ATTEMPTS:
            candidate = _batch_one(model) if fallback == "batch_1" else model
            if candidate is None:
                continue
            if id(candidate) not in saved:
                saved[id(candidate)] = str(Path(workdir) / fallback)
                save_inference_model(candidate, saved[id(candidate)])
            try:
                with native_stderr_silenced():
                    flatbuffer = _converter(saved[id(candidate)], model.signature,
                                            fallback).convert()
            except Exception as exc:  # the converter raises ConverterError and others
                message = str(exc).strip()
                result.attempts.append({"fallback": fallback, "error": _summary(message),
                                        "blocking_ops": blocking_ops(message)})
                continue
            result.attempts.append({"fallback": fallback, "error": None})
            result.fallback = None if fallback == "none" else fallback
            path.write_bytes(flatbuffer)
            return result
    blocked = sorted({op for a in result.attempts for op in a["blocking_ops"]})
    raise ConversionError(f"the TFLite converter failed with every fallback ({', '.join(ATTEMPTS)})"
                          + (f"; blocking ops: {', '.join(blocked)}" if blocked else "")
                          + f": {result.attempts[0]['error']}", details={"attempts": result.attempts,
                                                                        "blocking_ops": blocked})


def _summary(message: str) -> str:
    # the converter's first error line, without its location prefix
    for line in message.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:500]
    return (message.splitlines() or [""])[0][:500]


def op_names(path: Path) -> list[str]:
    """The op of every operator in the model, builtin or custom (Flex ops included)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    codes = []
    for code in model.operatorCodes:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        codes.append(custom if custom else names.get(builtin, str(builtin)))
    return [codes[op.opcodeIndex] for graph in model.subgraphs for op in graph.operators]


def describe(path: Path, model: Model) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(op_names(path)).items()))


def interpreter(path: Path):
    import tensorflow as tf

    with warnings.catch_warnings(), native_stderr_silenced():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter warns that it is deprecated
        found = tf.lite.Interpreter(model_path=str(path))
        found.allocate_tensors()  # XNNPACK announces itself here
        return found


def runner(path: Path, model: Model):
    runner_fn = interpreter(path).get_signature_runner(model.signature)

    def run(feed: dict) -> dict:
        return runner_fn(**feed)
    return run
