"""The one in-memory model type that loaders produce, passes transform and exporters consume."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tfopt.graph import copy_graph
from tfopt.memory import return_freed_memory

SEQUENCE_LENGTH, SPATIAL_SIZE = 16, 32  # unknown dims of drawn inputs
# the second sizes (spatial, sequence) an input with unknown non-batch dims is verified at,
# the first the original runs: odd and non-square, where converters' bugs hide (a baked
# size, a transposed pair); then multiples of 16 for nets that halve and double (U-Nets)
SECOND_SIZES = (((29, 37), 11), ((48, 64), 24))
SERVING_SIGNATURE = "serving_default"  # the signature TF and Keras export by default


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output. In the graph it is the tensor `<name>:0`."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32", or "string"
    shape: tuple[int | None, ...] | None  # None: unknown rank

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "string" else np.dtype(self.dtype)

    @property
    def tensor(self) -> str:
        return f"{self.name}:0"

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}

    def accepts(self, shape) -> bool:
        """Whether a concrete shape fits this spec's rank and known dimensions."""
        return self.shape is None or (len(shape) == len(self.shape) and all(
            d is None or d == s for d, s in zip(self.shape, shape)))

    def concrete_shape(self, override: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The shape to feed: the override, or this shape with unknown dims filled: 1 for
        the batch, 16 for a sequence (rank 2-3), 32 for a spatial dimension (rank 4+)."""
        if override is not None:
            return tuple(override)
        if self.shape is None:
            return (1,)
        rank = len(self.shape)
        fill = [1] + [SEQUENCE_LENGTH if rank <= 3 else SPATIAL_SIZE] * (rank - 1)
        return tuple(f if d is None else d for d, f in zip(self.shape, fill))

    def other_shape(self, spatial: tuple[int, int], sequence: int) -> tuple[int, ...] | None:
        """concrete_shape with its unknown spatial (rank 4+) or sequence dims at these sizes;
        None when every non-batch dim is known (or the rank is: nothing to vary)."""
        if self.shape is None or all(d is not None for d in self.shape[1:]):
            return None
        rank = len(self.shape)
        varied = range(1, rank - 1) if rank >= 4 else range(1, rank)
        sizes = iter(spatial * rank if rank >= 4 else (sequence,) * rank)
        shape = list(self.concrete_shape())
        for i in varied:
            if self.shape[i] is None:
                shape[i] = next(sizes)
        return tuple(shape) if tuple(shape) != self.concrete_shape() else None


@dataclass
class Model:
    """A frozen GraphDef plus its signature.

    Inputs are Placeholder nodes and outputs are nodes named exactly as the
    signature's keys, so every exporter can keep the user's names. External weights
    (loaders/weights.py) are Placeholder nodes too, with their values in `weights`.
    """

    graph_def: Any  # tf.compat.v1.GraphDef
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    signature: str = SERVING_SIGNATURE
    meta: dict = field(default_factory=dict)  # "variables": the live tf.Variable of a weight
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    # the Spilled whose file holds this very graph_def: read back from it, unchanged since
    # (passes never change their input), so paging it out writes nothing
    written: Spilled | None = field(default=None, repr=False, compare=False)

    @property
    def weight_bytes(self) -> int:
        return sum(v.nbytes for v in self.weights.values())

    def inlined_graph(self) -> Any:
        """The GraphDef with the external weights as constants (it must fit protobuf's
        2 GB); the graph itself when there are none."""
        from tfopt.graph import inline_constants

        if not self.weights:
            return self.graph_def
        graph_def = copy_graph(self.graph_def)
        inline_constants(graph_def, self.weights)
        return graph_def

    def with_graph(self, graph_def) -> Model:
        return replace(self, graph_def=graph_def,
                       written=self.written if graph_def is self.graph_def else None)

    def load(self) -> Model:
        """The model in memory: itself (a Spilled one reads its graph back)."""
        return self

    def with_input_shapes(self, shapes: dict[str, tuple[int, ...]]) -> Model:
        """A copy whose named inputs have these static shapes, in the graph and the signature."""
        graph_def = copy_graph(self.graph_def)
        for node in graph_def.node:
            if node.name in shapes and node.op == "Placeholder":
                node.attr["shape"].shape.Clear()
                for d in shapes[node.name]:
                    node.attr["shape"].shape.dim.add(size=d)
        inputs = [TensorSpec(t.name, t.dtype, tuple(shapes[t.name])) if t.name in shapes else t
                  for t in self.inputs]
        return Model(graph_def, inputs, self.outputs, self.signature, self.meta, self.weights)


def random_feeds(inputs: list[TensorSpec], shapes: dict[str, tuple[int, ...]],
                 samples: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Deterministic random inputs chosen by dtype, one feed dict per sample."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for spec in inputs:
            shape = spec.concrete_shape(shapes.get(spec.name))
            dtype = spec.numpy_dtype
            if dtype == np.bool_:
                feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
            elif np.issubdtype(dtype, np.integer):
                feed[spec.name] = rng.integers(0, 10, shape).astype(dtype)
            elif np.issubdtype(dtype, np.floating):
                feed[spec.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feed[spec.name] = np.full(shape, b"tfopt", dtype=object)
        feeds.append(feed)
    return feeds


@dataclass
class Spilled:
    """A model whose GraphDef waits in an anonymous temporary file (gone with the process)
    until something reads it: the frozen graph before the passes, which only a trace needs,
    would otherwise hold a copy of the weights through every export."""

    model: Model  # its graph emptied
    file: Any = None  # the serialized GraphDef; None: kept in memory (past protobuf's 2 GB)

    @classmethod
    def of(cls, model: Model) -> Spilled:
        import tempfile
        import weakref

        from tfopt.graph import empty_like

        try:  # unlinked at once: nothing of it shows in the file system
            handle = tempfile.TemporaryFile(prefix="tfopt-graph-")  # noqa: SIM115 (lives on)
        except OSError:
            return cls(model)
        try:
            written = _write_graph(model.graph_def, handle)
            handle.flush()  # what the buffer holds fails here, not when it is read back
        except OSError:  # no room, or a file size limit
            written = False
        if not written:  # it stays in memory
            with contextlib.suppress(OSError):  # what the buffer holds fails again: closed
                handle.close()
            return cls(model)
        spilled = cls(model.with_graph(empty_like(model.graph_def)), handle)
        weakref.finalize(spilled, handle.close)  # closed with it, or at exit
        return spilled

    def load(self) -> Model:
        if self.file is None:
            return self.model
        import mmap

        graph_def = type(self.model.graph_def)()
        if os.fstat(self.file.fileno()).st_size:  # parsed from the page cache: no copy read
            with mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
                    memoryview(mapped) as view:
                graph_def.ParseFromString(view)
        model = self.model.with_graph(graph_def)
        model.written = self
        return model


def _write_graph(graph_def: Any, handle: Any) -> bool:
    """graph_def serialized into handle, a node at a time; False past protobuf's 2 GB (it could
    not be read back). A message is its fields' records one after another, so this writes
    what SerializeToString would, without the whole graph serialized once more in memory
    (and without the ByteSize check, which serializes it too)."""
    from tfopt.graph import PROTOBUF_LIMIT

    rest = type(graph_def)()
    for descriptor, value in graph_def.ListFields():
        if descriptor.name != "node":
            rest.MergeFrom(type(graph_def)(**{descriptor.name: value}))
    head = rest.SerializeToString()
    handle.write(head)
    size, tag = len(head), _varint(graph_def.DESCRIPTOR.fields_by_name["node"].number << 3 | 2)
    for node in graph_def.node:
        record = node.SerializeToString()
        prefix = tag + _varint(len(record))
        size += len(prefix) + len(record)
        if size > PROTOBUF_LIMIT:
            return False
        handle.write(prefix)
        handle.write(record)
    return True


def _varint(value: int) -> bytes:
    """Protobuf's base-128 length prefix (its encoder is internal API)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@contextlib.contextmanager
def graphs_paged_out(*models: Model) -> Iterator[None]:
    """These models' GraphDefs in temporary files, and their memory handed back, while a
    converter that reads only what was written to disk runs (the TFLite converter reads a
    SavedModel): the process would otherwise hold the weights once more through its peak.
    Back in place afterwards, whatever happens."""
    paged = {}
    for model in models:
        if id(model) not in paged:  # a graph read back unchanged is in its file already
            spilled = model.written or Spilled.of(model)
            if spilled.file is not None:
                paged[id(model)] = (model, spilled)
                model.graph_def = spilled.model.graph_def
    return_freed_memory()
    try:
        yield
    finally:
        for model, spilled in paged.values():
            model.graph_def, model.written = spilled.load().graph_def, spilled
