"""Running and describing ONNX artifacts with onnxruntime."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfopt.model import Model


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
    found = session(path)
    names = [o.name for o in found.get_outputs()]

    def run(feed: dict) -> dict:
        return dict(zip(names, found.run(names, {k: _onnx_strings(v) for k, v in
                                                 feed.items()})))
    return run


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
