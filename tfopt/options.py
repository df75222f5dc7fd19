"""FreezeOptions: every option of a conversion, defined, documented and validated once.

`tfopt.freeze`, the command line (`tfopt`, `tfopt inspect`, `tfopt batch`) and batch
manifests all build this object; the command-line flags are generated from its fields
(`commands/common.py`), so an option cannot be forgotten in one entry point.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tfopt.errors import UsageError, first_line
from tfopt.exporters import EXPORTERS, ExportOptions, missing_extra
from tfopt.limits import DEFAULT_TIMEOUT, MAX_CALL_DEPTH, MAX_NODES, MEMORY_SHARE, parse_size
from tfopt.loaders.weights import LARGE_WEIGHT_BYTES
from tfopt.model import SERVING_SIGNATURE
from tfopt.modes import MODES
from tfopt.passes import DEFAULT_PIPELINE, REGISTRY

if TYPE_CHECKING:  # the loaders import TensorFlow's types lazily; options stay light
    from tfopt.loaders.base import LoadOptions

TARGETS = tuple(EXPORTERS)
DEFAULT_TARGETS = tuple(name for name, exporter in EXPORTERS.items() if exporter.DEFAULT)
QUANTIZE_CHOICES = tuple(MODES) + ("auto",)
OBJECTIVES = ("size", "latency")
RANDOM = "random"  # a data source: feeds drawn at random

# flag groups: SOURCE flags choose what is frozen (every command takes them); the others
# shape a conversion (tfopt and tfopt batch)
SOURCE, VERIFY, QUANTIZE, OUTPUT = "source", "verification", "quantization", "output"
LIMITS = "limit"  # how long and how big a run may get (tfopt and tfopt batch)


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def split_specs(text: str) -> tuple[str, ...]:
    """'a:0:float32:1,8,8,1,b' -> ('a:0:float32:1,8,8,1', 'b'): a bare number continues the
    shape before it (TF node names never start with a digit)."""
    specs: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if re.fullmatch(r"-?\d+", token) and specs:
            specs[-1] += "," + token
        elif token:
            specs.append(token)
    return tuple(specs)


def bool_arg(text: str) -> bool:
    """A manifest cell: true/false, yes/no, 1/0."""
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(f"'{text}' is not true or false")
    return lowered in ("true", "yes", "1")


def shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not name=d1,d2,... (e.g. "
                                         "image=1,224,224,3)") from None


def value_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"'{text}' is not name=value (e.g. is_training=false)")
    return name, value


@dataclass(frozen=True)
class Flag:
    """How a FreezeOptions field appears on the command line and in manifests."""

    help: str
    group: str
    flag: str | None = None  # default: --field-name
    parse: Callable[[str], Any] | None = None  # the text of one flag -> the value
    repeat: bool = False  # repeatable NAME=VALUE flag; the values form a dict
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # other manifest keys for the field


def _opt(default: Any, flag: Flag) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"cli": flag})
    return field(default=default, metadata={"cli": flag})


def calibration_needed(mode: str) -> str:
    return (f"--quantize {mode} needs calibration data: pass --calibration "
            "train_sample.npz (keys: input names), a directory of .npy files or images, or "
            "module:function; --calibration random only to try it out")


@dataclass(frozen=True)
class FreezeOptions:
    """Everything that shapes one conversion; see the README's Usage for each."""

    targets: tuple[str, ...] = _opt(DEFAULT_TARGETS, Flag(
        f"comma-separated targets (default {','.join(DEFAULT_TARGETS)}; also "
        f"{','.join(t for t in TARGETS if t not in DEFAULT_TARGETS)})", OUTPUT, flag="--to",
        parse=comma_list, aliases=("to",)))
    signature: str = _opt(SERVING_SIGNATURE, Flag("SavedModel signature to freeze", SOURCE))
    tags: tuple[str, ...] | None = _opt(None, Flag(
        "comma-separated MetaGraph tag set (default: serve)", SOURCE, flag="--tag",
        parse=comma_list))
    input_shapes: Mapping[str, tuple[int, ...]] = _opt({}, Flag(
        "fix an input's shape (repeatable)", VERIFY, flag="--input-shape", parse=shape_arg,
        repeat=True, metavar="NAME=D1,D2,..."))
    inputs: tuple[str, ...] | None = _opt(None, Flag(
        "TF1 graphs: comma-separated tensors to feed, each name[:dtype[:d1,d2,...]] (-1: "
        "unknown dim) and replaced by a placeholder, e.g. IteratorGetNext:0:float32:1,8,8,1",
        SOURCE, parse=split_specs))
    outputs: tuple[str, ...] | None = _opt(None, Flag(
        "TF1 graphs: comma-separated output tensors", SOURCE, parse=split_specs))
    freeze_placeholders: Mapping[str, Any] = _opt({}, Flag(
        "TF1 graphs: give a placeholder a constant value, e.g. is_training=false (repeatable)",
        SOURCE, flag="--freeze-placeholder", parse=value_arg, repeat=True,
        metavar="NAME=VALUE"))
    data: Any = _opt(None, Flag(".npz of verification inputs keyed by input name", VERIFY))
    samples: int = _opt(3, Flag("random verification samples when --data is not given",
                                VERIFY, parse=int))
    trace: bool = _opt(False, Flag(
        "compare every intermediate tensor with the original's and name the first op that "
        "diverges, for passing artifacts too (a failing one is always traced)", VERIFY,
        parse=bool_arg))
    atol: float | None = _opt(None, Flag(
        "element-wise absolute tolerance; with --atol or --rtol every element must be within "
        "atol + rtol*|expected| (default: the scale-aware rule, see README)", VERIFY,
        parse=float))
    rtol: float | None = _opt(None, Flag("element-wise relative tolerance (see --atol)",
                                         VERIFY, parse=float))
    opset: int | None = _opt(None, Flag("ONNX opset (default: highest supported)", SOURCE,
                                        parse=int))
    overwrite: bool = _opt(False, Flag("replace a non-empty output directory", OUTPUT,
                                       parse=bool_arg))
    quantize: str = _opt("none", Flag("post-training quantization", QUANTIZE,
                                      choices=QUANTIZE_CHOICES))
    calibration: Any = _opt(None, Flag(
        "calibration data: .npz keyed by input name, a directory of .npy files or images, "
        "module:function, or random", QUANTIZE))
    eval_data: Any = _opt(None, Flag(
        ".npz of inputs plus 'labels': quantized artifacts are checked on it and their "
        "top-1 accuracy reported", QUANTIZE, flag="--eval", aliases=("eval",)))
    mean: float = _opt(0.0, Flag("images: subtracted from pixels (0-255) before --scale",
                                 QUANTIZE, parse=float))
    scale: float = _opt(1.0, Flag("images: pixel multiplier", QUANTIZE, parse=float))
    int8_io: bool = _opt(False, Flag("TFLite int8: integer inputs and outputs too", QUANTIZE,
                                     parse=bool_arg))
    max_drop: float | None = _opt(None, Flag(
        "accuracy drop allowed with --eval (default 0.01)", QUANTIZE, parse=float))
    objective: str = _opt("size", Flag("what --quantize auto minimizes", QUANTIZE,
                                       choices=OBJECTIVES))
    min_cosine: float | None = _opt(None, Flag(
        "override the per-precision cosine-similarity budget", QUANTIZE, parse=float))
    min_agreement: float | None = _opt(None, Flag(
        "override the per-precision top-1 agreement budget", QUANTIZE, parse=float))
    unsafe_keras: bool = _opt(False, Flag(
        "load a Keras file outside safe mode, running the Python code it holds (Lambda "
        "layers); only for files you trust", SOURCE, parse=bool_arg))
    allow_io_ops: bool = _opt(False, Flag(
        "run a model whose serving graph reads or writes files, starts processes, talks to "
        "the network or calls back into Python (verification runs the original model)",
        SOURCE, parse=bool_arg))
    large_weight_bytes: int = _opt(LARGE_WEIGHT_BYTES, Flag(
        "variables of at least this many bytes stay out of the frozen graph: variables of the "
        "SavedModel (and of the TFLite converter's input), external data beside model.onnx; "
        "model.pb inlines them while it fits protobuf's 2 GB (default 256 MiB)", SOURCE,
        parse=int, metavar="BYTES"))
    max_unpacked_bytes: int | None = _opt(None, Flag(
        "refuse a .keras archive that declares more bytes than this (default: 100x the "
        "file's size plus 256 MiB: trained weights barely compress, zip bombs do)", SOURCE,
        parse=int, metavar="BYTES"))
    passes: tuple[str, ...] = _opt(DEFAULT_PIPELINE, Flag(
        "comma-separated TF pass pipeline", OUTPUT, parse=comma_list))
    max_nodes: int = _opt(MAX_NODES, Flag(
        "refuse a graph of more nodes (its function calls expanded) before converting it",
        LIMITS, parse=int, metavar="N"))
    max_call_depth: int = _opt(MAX_CALL_DEPTH, Flag(
        "refuse a graph whose function calls nest deeper than this before converting it",
        LIMITS, parse=int, metavar="N"))
    # None: no limit and the run stays in the caller's process (the API's default); the
    # command line fills in command_line_limits()
    timeout: float | None = _opt(None, Flag(
        "stop a run (a batch: each model) still going after this many seconds; 0: no limit "
        f"(command-line default: {DEFAULT_TIMEOUT:g})", LIMITS, parse=float,
        metavar="SECONDS"))
    max_memory: int | None = _opt(None, Flag(
        "stop a run whose processes' resident memory passes this size (2G, 1500M); 0: no "
        f"limit (command-line default: {MEMORY_SHARE:.0%} of the memory available at the "
        "start, shared by the batch workers)", LIMITS, parse=parse_size, metavar="SIZE"))

    def __post_init__(self) -> None:
        # sequences from Python callers and manifests become tuples, dicts stay dicts
        for name in ("targets", "tags", "inputs", "outputs", "passes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = option_flag(name).parse(value)  # type: ignore[misc]
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        shapes = {k: tuple(int(d) for d in v) for k, v in dict(self.input_shapes).items()}
        object.__setattr__(self, "input_shapes", shapes)
        object.__setattr__(self, "freeze_placeholders", dict(self.freeze_placeholders))
        if isinstance(self.max_memory, str):
            try:
                object.__setattr__(self, "max_memory", parse_size(self.max_memory))
            except ValueError as exc:
                raise UsageError(f"--max-memory: {exc}") from None

    def validate(self) -> FreezeOptions:
        """Check what can be checked without the model; returns self (targets deduplicated)."""
        targets = tuple(dict.fromkeys(self.targets))
        unknown = [t for t in targets if t not in EXPORTERS]  # one registered after import too
        if unknown or not targets:
            raise UsageError(f"unknown target '{','.join(unknown)}'; choose from "
                             f"{', '.join(EXPORTERS)}")
        if self.quantize not in QUANTIZE_CHOICES:
            raise UsageError(f"unknown --quantize '{self.quantize}'; choose from "
                             f"{', '.join(QUANTIZE_CHOICES)}")
        # int8 is checked once the model is read: a quantization-aware one needs no data
        if self.quantize in MODES and MODES[self.quantize].calibrated \
                and self.quantize != "int8" and self.calibration is None:
            raise UsageError(calibration_needed(self.quantize))
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown --objective '{self.objective}'; choose size or latency")
        unknown = [p for p in self.passes if p not in REGISTRY]
        if unknown:
            raise UsageError(f"unknown pass '{','.join(unknown)}'; passes: "
                             f"{', '.join(sorted(REGISTRY))}")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) \
                or self.samples < 1:
            raise UsageError(f"--samples {self.samples}: verification needs at least 1 sample")
        for name, value in (("large_weight_bytes", self.large_weight_bytes),
                            ("max_unpacked_bytes", self.max_unpacked_bytes),
                            ("max_nodes", self.max_nodes),
                            ("max_call_depth", self.max_call_depth)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise UsageError(f"--{name.replace('_', '-')} {value}: give a positive "
                                 "whole number")
        if self.max_memory is not None and (not isinstance(self.max_memory, int)
                                            or isinstance(self.max_memory, bool)
                                            or self.max_memory < 0):
            raise UsageError(f"--max-memory {self.max_memory}: give a size such as 2G (0: "
                             "no limit)")
        for name, low, high in (("atol", 0, None), ("rtol", 0, None), ("max_drop", 0, 1),
                                ("timeout", 0, None),
                                ("min_cosine", -1, 1), ("min_agreement", 0, 1),
                                ("mean", None, None), ("scale", None, None)):
            _check_number(name, getattr(self, name), low, high)
        for name, dims in self.input_shapes.items():
            if not dims or any(d < 1 for d in dims):
                raise UsageError(f"--input-shape {name}={','.join(map(str, dims))}: every "
                                 "dimension must be a positive number")
        missing = next(filter(None, map(missing_extra, targets)), None)
        if missing:
            raise UsageError(missing)
        for fmt in targets:
            EXPORTERS[fmt].check_options(self.export_options())
        for flag, source in (("--data", self.data), ("--calibration", self.calibration),
                             ("--eval", self.eval_data)):
            check_source(source, flag)
        return replace(self, targets=targets)

    @property
    def bounded(self) -> bool:
        """Whether the run goes to a supervised worker process (tfopt/limits.py)."""
        return bool(self.timeout) or bool(self.max_memory)

    def export_options(self, calibration: list[dict] | None = None) -> ExportOptions:
        """What every exporter reads; calibration: the --calibration feeds, once read."""
        return ExportOptions(opset=self.opset, quantize=self.quantize, calibration=calibration,
                             int8_io=self.int8_io)

    def load_options(self) -> LoadOptions:
        from tfopt.loaders.base import LoadOptions

        return LoadOptions(signature=self.signature, tags=list(self.tags) if self.tags else None,
                           inputs=list(self.inputs) if self.inputs else None,
                           outputs=list(self.outputs) if self.outputs else None,
                           freeze=dict(self.freeze_placeholders),
                           unsafe_keras=self.unsafe_keras,
                           large_weight_bytes=self.large_weight_bytes,
                           max_unpacked_bytes=self.max_unpacked_bytes,
                           max_nodes=self.max_nodes, max_call_depth=self.max_call_depth)


def parse_options(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """FreezeOptions fields from a manifest row: keys are field names or their aliases;
    string values of structured fields are parsed as their flags are."""
    keys = manifest_keys()
    unknown = sorted(k for k in values if k not in keys)
    if unknown:
        raise UsageError(f"{where}: unknown option(s) {unknown}; known: "
                         f"{', '.join(sorted(keys))}")
    given = {}
    for key, value in values.items():
        name = keys[key]
        flag = option_flag(name)
        try:
            if isinstance(value, str) and flag.repeat:  # a JSON object in CSV cells
                value = json.loads(value)
            elif isinstance(value, str) and flag.parse is not None:
                value = flag.parse(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"{where}: {key}: {exc}") from None
        given[name] = value
    return given


def _check_number(name: str, value: Any, low: float | None, high: float | None) -> None:
    if value is None:
        return
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise UsageError(f"{flag} {value}: must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"{flag} {value}: must be {bounds}")


def check_source(source: object, flag: str) -> None:
    """Refuse a data source that cannot be read, before the model is loaded: a missing path,
    an .npz that is not a zip archive, arrays of pickled Python objects."""
    if source is None or isinstance(source, Mapping) or source == RANDOM:
        return
    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if text is None:
        raise UsageError(f"{flag} must be a path, module:function, a dict of arrays or random")
    path = Path(text)
    if not path.exists():
        if ":" in text and not text.startswith(("/", ".")):
            return  # module:function, imported when the data is read
        raise UsageError(f"{flag} {path} does not exist; pass an .npz keyed by input name, a "
                         "directory of .npy files or images, module:function, or random")
    if path.is_file() and path.suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise UsageError(f"{flag} {path} is not an .npz archive; write it with "
                             "numpy.savez(path, name=array, ...)")
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as handle:
                    _check_npy(handle, f"{path}:{member}", flag)
    elif path.is_dir():
        for file in sorted(path.glob("*.npy")):
            with open(file, "rb") as handle:
                _check_npy(handle, str(file), flag)
    elif path.is_file():
        raise UsageError(f"{flag} {path} is not data tfopt reads; pass an .npz keyed by input "
                         "name, a directory of .npy files or images, module:function, or random")


def _check_npy(handle: IO[bytes], where: str, flag: str) -> None:
    import numpy as np

    try:  # the header only: reading the array could unpickle
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        dtype = read_header(handle)[2]
    except ValueError as exc:
        raise UsageError(f"{flag} {where} is not a .npy array: {first_line(exc)}") from exc
    if dtype.hasobject:
        raise UsageError(f"{flag} {where} holds Python objects (pickled data), which tfopt "
                         "never unpickles; save numeric or string arrays")


def option_fields() -> list:
    return [f for f in fields(FreezeOptions) if "cli" in f.metadata]


def option_flag(name: str) -> Flag:
    return next(f.metadata["cli"] for f in fields(FreezeOptions) if f.name == name)


def option_default(name: str) -> Any:
    found = next(f for f in fields(FreezeOptions) if f.name == name)
    return found.default if found.default_factory is MISSING else found.default_factory()


def manifest_keys() -> dict[str, str]:
    """Manifest key -> field name: every field, and each field's aliases."""
    keys = {f.name: f.name for f in option_fields()}
    keys.update({alias: f.name for f in option_fields() for alias in f.metadata["cli"].aliases})
    return keys

