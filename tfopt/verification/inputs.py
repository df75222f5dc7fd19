"""Verification inputs drawn from the domain the graph shows, not from a fixed noise.

A random input the model never sees in deployment can make a healthy conversion look
broken (a net whose leading Rescaling expects 0-255 pixels is chaotic on standard-normal
noise) or fail outright (token ids past an embedding's vocabulary). So, per input:

- float, first op an affine map `x * s + b` (Keras Rescaling, Normalization, hand-written
  `(x - mean) / std`): drawn so that the map's output is in its usual range: pixels in
  0..255 for a 1/255 or 1/127.5 rescaling, else `(z - b) / s` with z standard normal;
- integer indices into a constant table (Gather: embeddings, token types): 0..rows-1;
- float boxes that non-max suppression or CropAndResize reads: corners in 0..1 with
  y1 < y2 and x1 < x2 (TF and the TFLite NMS kernel disagree on inverted boxes, which no
  detector makes);
- integer inputs named like masks: ones (no padding); booleans: 0/1;
- unknown dimensions: 1 for the batch, 16 for sequence-like inputs (rank 2-3), 32 for the
  spatial dimensions of rank-4+ inputs.

Every input's choice is described, and the description goes into report.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tfopt.graph import FORWARDING_OPS, const_value, consumers, node_name
from tfopt.model import Model, TensorSpec

_THROUGH = FORWARDING_OPS | {"Cast", "Reshape", "ExpandDims", "Squeeze"}
_SCALE_OPS = {"Mul": False, "RealDiv": True}  # op -> whether the constant divides
_SHIFT_OPS = {"Add": 1.0, "AddV2": 1.0, "Sub": -1.0, "BiasAdd": 1.0}


@dataclass(frozen=True)
class Domain:
    shape: tuple[int, ...]
    how: str  # "normal", "affine", "uniform", "boxes", "indices", "ones", "bool", "text"
    why: str
    scale: Any = 1.0  # affine: the map's scale and shift
    shift: Any = 0.0
    high: int = 10  # indices: exclusive upper bound
    choices: tuple = ()  # choice: the values to draw from

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "drawn": self.why}


def input_domains(model: Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, Domain]:
    graph_def = model.graph_def
    nodes = {n.name: n for n in graph_def.node}
    readers = consumers(graph_def)
    library = {f.signature.name: f for f in graph_def.library.function}
    found = {}
    for spec in model.inputs:
        shape = spec.concrete_shape(shapes.get(spec.name))
        dtype = spec.numpy_dtype
        if spec.dtype == "string":
            found[spec.name] = _string_domain(spec, shape, graph_def, readers)
        elif dtype == np.bool_:
            found[spec.name] = Domain(shape, "bool", "random booleans")
        elif np.issubdtype(dtype, np.integer):
            found[spec.name] = _integer_domain(spec, shape, nodes, readers)
        else:
            found[spec.name] = _float_domain(spec, shape, nodes, readers, library)
    return found


def _string_domain(spec: TensorSpec, shape: tuple, graph_def: Any, readers: dict) -> Domain:
    """Strings looked up in a constant table are drawn from its keys, and one unknown."""
    from tfopt.graph import table_contents

    for reader in _first_readers(spec.name, readers):
        if reader.op == "LookupTableFindV2":
            contents = table_contents(graph_def, reader)
            if contents is not None:
                keys = np.asarray(contents[0]).reshape(-1).tolist()[:1000]
                return Domain(shape, "choice", f"keys of the lookup table it reads "
                              f"({len(keys)} of them) and one unknown string",
                              choices=tuple(keys) + (b"<tfopt-unknown>",))
    return Domain(shape, "text", "the constant string 'tfopt'")


def _first_input(node: Any) -> str:
    return node_name(next(r for r in node.input if not r.startswith("^")))


def _passed(name: str, readers: dict) -> set[str]:
    """A tensor's node and the casts, reshapes and identities it goes through."""
    found, frontier = {name}, [name]
    while frontier:
        for reader in readers.get(frontier.pop(), ()):
            if reader.op in _THROUGH and reader.name not in found:
                found.add(reader.name)
                frontier.append(reader.name)
    return found


def _first_readers(name: str, readers: dict) -> list:
    """The nodes reading a tensor, looking through casts, reshapes and identities."""
    found, frontier, seen = [], [name], set()
    while frontier:
        current = frontier.pop()
        for reader in readers.get(current, ()):
            if reader.name in seen:
                continue
            seen.add(reader.name)
            if reader.op in _THROUGH:
                frontier.append(reader.name)
            else:
                found.append(reader)
    return found


def _constant(node: Any, position: int, nodes: dict) -> np.ndarray | None:
    refs = [r for r in node.input if not r.startswith("^")]
    source = nodes.get(node_name(refs[position])) if position < len(refs) else None
    return const_value(source).astype(np.float64) if source is not None and \
        source.op == "Const" else None


def _operand(node: Any, nodes: dict) -> tuple[np.ndarray, int] | None:
    """The constant operand of a binary op and its position, if exactly one is constant."""
    values = [_constant(node, i, nodes) for i in (0, 1)]
    known = [(v, i) for i, v in enumerate(values) if v is not None]
    return known[0] if len(known) == 1 else None


# ops whose input 0 is boxes [..., 4] as (y1, x1, y2, x2)
BOX_OPS = frozenset({"NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3",
                     "NonMaxSuppressionV4", "NonMaxSuppressionV5", "CombinedNonMaxSuppression",
                     "NonMaxSuppressionWithOverlaps", "CropAndResize"})


def _reads_boxes(reader: Any, library: dict) -> bool:
    """Whether a node reads boxes as its input 0: a box op, or a call of a function that
    implements non-max suppression (kept whole for the TFLite converter's fusion)."""
    if reader.op in BOX_OPS:
        return True
    function = library.get(reader.attr["f"].func.name) if "f" in reader.attr else None
    return function is not None and "non_max_suppression" in \
        function.attr["_implements"].s.decode()


def _float_domain(spec: TensorSpec, shape: tuple, nodes: dict, readers: dict,
                  library: dict) -> Domain:
    first = _first_readers(spec.name, readers)
    if shape and shape[-1] == 4 and first and all(
            _reads_boxes(r, library) and _first_input(r) in _passed(spec.name, readers)
            for r in first):
        return Domain(shape, "boxes", "boxes (y1, x1, y2, x2), corners uniform in 0..1 with "
                      "y1 < y2 and x1 < x2 (non-max suppression reads them)")
    if len(first) == 1 and first[0].op in _SCALE_OPS:
        operand = _operand(first[0], nodes)
        if operand is not None and (first[0].op == "Mul" or operand[1] == 1) \
                and np.all(operand[0] != 0):
            scale = 1.0 / operand[0] if _SCALE_OPS[first[0].op] else operand[0]
            shift: Any = 0.0
            after = _first_readers(first[0].name, readers)
            if len(after) == 1 and after[0].op in _SHIFT_OPS:
                constant = _operand(after[0], nodes)
                if constant is not None and (after[0].op != "Sub" or constant[1] == 1):
                    shift = _SHIFT_OPS[after[0].op] * constant[0]
            if np.size(scale) == 1 and any(np.isclose(float(np.ravel(scale)[0]) * f, 1.0,
                                                      rtol=1e-3) for f in (255.0, 127.5)):
                return Domain(shape, "uniform", "pixels, uniform 0..255 (the graph starts by "
                              f"rescaling x * {float(np.ravel(scale)[0]):.6g})")
            return Domain(shape, "affine", "(z - shift) / scale with z standard normal (the "
                          "graph starts with x * scale + shift)", scale=scale, shift=shift)
        if operand is None:
            return Domain(shape, "normal", "standard normal")
    if len(first) == 1 and first[0].op == "Sub":  # (x - mean) / std, Keras Normalization
        operand = _operand(first[0], nodes)
        after = _first_readers(first[0].name, readers)
        if operand is not None and operand[1] == 1 and len(after) == 1 \
                and after[0].op in _SCALE_OPS:
            std = _operand(after[0], nodes)
            if std is not None and std[1] == 1 and np.all(std[0] != 0):
                scale = 1.0 / std[0] if _SCALE_OPS[after[0].op] else std[0]
                return Domain(shape, "affine", "mean + std * z with z standard normal (the "
                              "graph starts by normalizing (x - mean) / std)", scale=scale,
                              shift=-operand[0] * scale)
    return Domain(shape, "normal", "standard normal")


# ops between an index input and its Gather: casts, reshapes, and Keras' negative-index
# normalization where(i < 0, i + rows, i)
_INDEX_STEPS = _THROUGH | {"SelectV2", "Select", "AddV2", "Add", "Maximum", "Minimum",
                           "ClipByValue", "FloorMod"}
_GATHERS = frozenset({"GatherV2", "Gather", "ResourceGather"})


def _integer_domain(spec: TensorSpec, shape: tuple, nodes: dict, readers: dict) -> Domain:
    rows, seen, frontier = [], {spec.name}, [spec.name]
    for _ in range(6):
        following = []
        for name in frontier:
            for reader in readers.get(name, ()):
                refs = [node_name(r) for r in reader.input if not r.startswith("^")]
                if reader.op in _GATHERS and len(refs) > 1 and refs[1] == name:
                    rows.append(_rows(refs[0], nodes))
                elif reader.op == "OneHot" and refs and refs[0] == name:
                    depth = _constant(reader, 1, nodes)
                    rows.append(None if depth is None else int(depth))
                elif reader.op in _INDEX_STEPS and reader.name not in seen:
                    seen.add(reader.name)
                    following.append(reader.name)
        frontier = following
    known = [r for r in rows if r]
    if known:
        return Domain(shape, "indices", f"integers 0..{min(known) - 1} (they index a table "
                      f"of {min(known)} rows)", high=min(known))
    if "mask" in spec.name.lower():
        return Domain(shape, "ones", "ones (a mask: nothing padded)")
    return Domain(shape, "indices", "integers 0..9", high=10)


def _rows(name: str, nodes: dict) -> int | None:
    """The first dimension of a constant table, looking through identities."""
    node = nodes.get(name)
    while node is not None and node.op in FORWARDING_OPS:
        node = nodes.get(node_name(node.input[0]))
    if node is None or node.op != "Const":
        return None
    dims = node.attr["value"].tensor.tensor_shape.dim
    return int(dims[0].size) if dims else None


def draw(domains: dict[str, Domain], inputs: list[TensorSpec], samples: int,
         seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One feed dict per sample, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for spec in inputs:
            domain, dtype = domains[spec.name], spec.numpy_dtype
            if domain.how == "text":
                value = np.full(domain.shape, b"tfopt", dtype=object)
            elif domain.how == "choice":
                picks = rng.integers(0, len(domain.choices), domain.shape)
                value = np.array(domain.choices, dtype=object)[picks]
            elif domain.how == "bool":
                value = rng.integers(0, 2, domain.shape).astype(bool)
            elif domain.how == "ones":
                value = np.ones(domain.shape, dtype)
            elif domain.how == "indices":
                value = rng.integers(0, domain.high, domain.shape).astype(dtype)
            elif domain.how == "uniform":
                value = rng.uniform(0.0, 255.0, domain.shape).astype(dtype)
            elif domain.how == "boxes":
                corner = rng.uniform(0.0, 0.8, domain.shape[:-1] + (2,))
                size = rng.uniform(0.05, 0.2, domain.shape[:-1] + (2,))
                value = np.concatenate([corner, corner + size], -1).astype(dtype)
            else:
                z = rng.standard_normal(domain.shape)
                if domain.how == "affine":
                    z = (z - domain.shift) / domain.scale
                value = np.asarray(z).astype(dtype)
            feed[spec.name] = value
        feeds.append(feed)
    return feeds
