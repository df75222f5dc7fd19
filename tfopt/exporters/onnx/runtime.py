"""Running and describing ONNX artifacts with onnxruntime."""
from __future__ import annotations

import base64
import json
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfopt.exporters.base import Opened
from tfopt.model import Model, TensorSpec


def session(model: Any) -> Any:
    """An onnxruntime CPU session on a path or a ModelProto."""
    import onnxruntime

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def describe(path: Path, model: Model) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def runner(path: Path, model: Model) -> Callable[[dict], dict]:
    return open_artifact(path, model.signature, allow_io_ops=True).run  # tfopt's own


# onnxruntime's type strings -> numpy dtype names (TensorSpec.dtype)
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
              "tensor(float16)": "float16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(bool)": "bool", "tensor(string)": "string"}
# op types that say how an ONNX model was quantized (onnxruntime's quantizer writes them)
_DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                "DynamicQuantizeMatMul"}


def open_artifact(path: Path, signature: str, allow_io_ops: bool = False) -> Opened:
    """An ONNX file as it is (any producer); ONNX has one graph, so no signature to pick."""
    found = session(path)
    names = [o.name for o in found.get_outputs()]

    def spec(value: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else None for d in value.shape)
        return TensorSpec(value.name, _ORT_TYPES.get(value.type, value.type), shape)

    def run(feed: dict) -> dict:
        return dict(zip(names, found.run(names, {k: _onnx_strings(v) for k, v in
                                                 feed.items()})))
    return Opened([spec(v) for v in found.get_inputs()], [spec(v) for v in found.get_outputs()],
                  run)


def trace(path: Path, feed: dict, signature: str | None = None) -> dict:
    """Every float node output, exposed as a graph output of a copy (any producer)."""
    import onnx

    from tfopt.errors import TraceUnavailable
    from tfopt.graph import PROTOBUF_LIMIT

    proto = onnx.load(str(path))
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise TraceUnavailable("the ONNX model with its weights passes protobuf's 2 GB, so "
                               "no copy with every tensor exposed can be made")
    typed = onnx.shape_inference.infer_shapes(proto)
    floats = {v.name for v in list(typed.graph.value_info) + list(typed.graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    exposed = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name in floats and name not in exposed:
                proto.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                exposed.add(name)
    found = session(proto)
    names = [o.name for o in found.get_outputs()]
    converted = read_tensor_names(proto)  # under the names converted, before short_names
    values = found.run(names, {k: _onnx_strings(v) for k, v in feed.items()})
    traced = {converted.get(name, name): value for name, value in zip(names, values)}
    # onnxruntime's QDQ: X's value as its readers see it is X_DequantizeLinear_Output,
    # quantized (a Relu it removed is the quantization's clip, so X is the value before it)
    dequantized = {k.removesuffix(DQ_SUFFIX): v for k, v in traced.items()
                   if k.endswith(DQ_SUFFIX)}
    return dequantized | {k: v for k, v in traced.items()
                          if k not in dequantized and not k.endswith(DQ_SUFFIX)}


DQ_SUFFIX = "_DequantizeLinear_Output"


TENSOR_NAMES_KEY = "tfopt.tensor_names"  # metadata: short name -> the name tf2onnx gave
MAX_NAMES_BYTES = 64 << 20  # a hostile entry may not inflate past this


def write_tensor_names(proto: Any, names: dict[str, str]) -> None:
    """Keep the renamed tensors' converted names in the model's metadata, compressed (they
    share long scopes: about a tenth of their text)."""
    packed = base64.b64encode(zlib.compress(json.dumps(names, sort_keys=True).encode(), 9))
    entry = proto.metadata_props.add()
    entry.key, entry.value = TENSOR_NAMES_KEY, packed.decode()


def read_tensor_names(proto: Any) -> dict[str, str]:
    """The names write_tensor_names kept, or none (another tool's model, a damaged entry)."""
    for entry in proto.metadata_props:
        if entry.key == TENSOR_NAMES_KEY:
            try:
                inflate = zlib.decompressobj()
                text = inflate.decompress(base64.b64decode(entry.value), MAX_NAMES_BYTES)
                names = json.loads(text) if not inflate.unconsumed_tail else {}
            except (ValueError, zlib.error):
                return {}
            if not isinstance(names, dict):
                return {}
            return {k: v for k, v in names.items() if isinstance(k, str) and isinstance(v, str)}
    return {}


def read_precision(path: Path) -> str:
    """From the quantization ops and initializer types (any producer)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    return "dynamic-int8" if ops & _DYNAMIC_OPS else "int8" if "QuantizeLinear" in ops else \
        "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16
                      for t in proto.graph.initializer) else "fp32"


def _onnx_strings(value: Any) -> Any:
    """TF's strings are bytes; onnxruntime matches str (UTF-8) against string tensors."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.kind in "OS" and value.size \
            and isinstance(value.reshape(-1)[0], (bytes, np.bytes_)):
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value)
    return value


def run_random(proto: Any) -> list | None:
    """The model's outputs on fixed random inputs (unknown dims: 2), or None if it fails."""
    import numpy as np
    import onnx

    rng = np.random.default_rng(0)
    feed = {}
    for value in proto.graph.input:
        kind = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in kind.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        feed[value.name] = rng.standard_normal(shape).astype(dtype) \
            if np.issubdtype(dtype, np.floating) else np.ones(shape, dtype)
    try:
        return session(proto).run(None, feed)
    except Exception:  # a candidate onnxruntime refuses is simply not taken
        return None
