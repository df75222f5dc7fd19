"""Calibration and evaluation data: one reader for every target's quantizer and for --eval.

A source is an `.npz` keyed by input name, a directory of `.npy` files (one per input, or
one per sample when the model has one input), a directory of images (resized to the input,
then (pixel - mean) * scale), `module:function` returning an iterable of feed dicts, or
"random". Everything becomes a list of feed dicts, checked against the model's inputs.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tfopt.errors import UsageError, first_line
from tfopt.model import TensorSpec, random_feeds
from tfopt.options import RANDOM

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_SAMPLES = 1000  # samples read per source: more costs time and rarely changes a verdict


def read_feeds(source, inputs: list[TensorSpec], flag: str = "--calibration", *,
               mean: float = 0.0, scale: float = 1.0, samples: int = 100,
               extra_keys: tuple[str, ...] = ()) -> tuple[list[dict], dict]:
    """(one feed dict per sample, extra arrays such as `labels`), checked against inputs."""
    if isinstance(source, str) and source == RANDOM:
        warnings.warn(f"{flag} random: quantization ranges come from random inputs, not "
                      "from your data; accuracy will not be representative", stacklevel=2)
        return random_feeds(inputs, {}, min(samples, 32), seed=1), {}
    if isinstance(source, Mapping):
        return _split(dict(source), inputs, flag, extra_keys)
    if isinstance(source, str) and ":" in source and not Path(source).exists():
        return _from_function(source, inputs, flag), {}
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {flag} {path}: {first_line(exc)}") from exc
        return _split(arrays, inputs, flag, extra_keys)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if any(p.suffix == ".npy" for p in files):
            return _from_npy_dir([p for p in files if p.suffix == ".npy"], inputs, flag,
                                 extra_keys)
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            return _from_images(images[:MAX_SAMPLES], inputs, flag, mean, scale), {}
    raise UsageError(f"{flag} {source} is not data tfopt reads; pass an .npz keyed by input "
                     "name, a directory of .npy files or images, module:function, or random")


def _split(arrays: dict, inputs: list[TensorSpec], flag: str, extra_keys) -> tuple[list, dict]:
    names = [t.name for t in inputs]
    extra = {k: np.asarray(arrays.pop(k)) for k in extra_keys if k in arrays}
    missing, unknown = [n for n in names if n not in arrays], [k for k in arrays if k not in names]
    if missing or unknown:
        raise UsageError(f"{flag} keys {sorted(arrays)} do not match the inputs {names} "
                         f"(missing: {missing}, unknown: {unknown})")
    counts = {len(np.asarray(arrays[n])) for n in names}
    if len(counts) != 1:
        raise UsageError(f"{flag} arrays hold different sample counts {sorted(counts)}; give "
                         "every input the same number of samples along axis 0")
    count = min(counts.pop(), MAX_SAMPLES)
    extra = {k: v[:count] for k, v in extra.items()}
    feeds = [{n: np.asarray(arrays[n])[i:i + 1] for n in names} for i in range(count)]
    for feed in feeds[:1]:
        check_feed(feed, inputs, flag)
    return [_cast(f, inputs) for f in feeds], extra


def check_feed(feed: dict, inputs: list[TensorSpec], flag: str) -> None:
    """Keys, shapes and dtype kinds of one feed dict against the inputs; names what is wrong."""
    names = [t.name for t in inputs]
    missing, unknown = [n for n in names if n not in feed], [k for k in feed if k not in names]
    if missing or unknown:
        raise UsageError(f"{flag} keys {sorted(feed)} do not match the inputs {names} "
                         f"(missing: {missing}, unknown: {unknown})")
    for spec in inputs:
        value = np.asarray(feed[spec.name])
        if not spec.accepts(value.shape):
            raise UsageError(f"{flag} '{spec.name}' has shape {list(value.shape)} per sample; "
                             f"the input takes {spec.to_dict()['shape']}")
        kind = spec.numpy_dtype.kind
        accepted = "SUO" if spec.dtype == "string" else kind + ("iu" if kind == "f" else "")
        if value.dtype.kind not in accepted:
            raise UsageError(f"{flag} '{spec.name}' has dtype {value.dtype}; the input takes "
                             f"{spec.dtype}")


def _cast(feed: dict, inputs: list[TensorSpec]) -> dict:
    return {t.name: np.asarray(feed[t.name]).astype(t.numpy_dtype, copy=False) for t in inputs}


def _from_npy_dir(files: list[Path], inputs, flag, extra_keys) -> tuple[list, dict]:
    names = [t.name for t in inputs]
    by_stem = {p.stem: p for p in files}
    if set(names) <= set(by_stem):  # one file per input, samples along axis 0
        arrays = {n: np.load(by_stem[n]) for n in names}
        arrays.update({k: np.load(by_stem[k]) for k in extra_keys if k in by_stem})
        return _split(arrays, inputs, flag, extra_keys)
    if len(inputs) != 1:
        raise UsageError(f"{flag} directory needs one .npy per input named after it "
                         f"({', '.join(n + '.npy' for n in names)})")
    feeds = []
    for path in files[:MAX_SAMPLES]:  # one sample per file
        value = np.load(path)
        if inputs[0].shape is not None and value.ndim == len(inputs[0].shape) - 1:
            value = value[None]
        feeds.append({names[0]: value})
    check_feed(feeds[0], inputs, flag)
    return [_cast(f, inputs) for f in feeds], {}


def _from_images(files: list[Path], inputs, flag, mean: float, scale: float) -> list[dict]:
    from PIL import Image

    if len(inputs) != 1 or inputs[0].shape is None or len(inputs[0].shape) != 4:
        raise UsageError(f"{flag} images need a model with one image input [N, H, W, C]")
    spec = inputs[0]
    _, height, width, channels = spec.shape
    if height is None or width is None:
        raise UsageError(f"{flag} images need a fixed input size; pass --input-shape "
                         f"{spec.name}=1,H,W,{channels or 3}")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels or 3)
    if mode is None:
        raise UsageError(f"{flag} images cannot fill {channels} channels")
    feeds = []
    for path in files:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(mode).resize((width, height)), np.float32)
        except OSError as exc:
            raise UsageError(f"{flag} {path} is not an image Pillow reads: "
                             f"{first_line(exc)}") from exc
        pixels = pixels.reshape(height, width, -1)
        feeds.append({spec.name: ((pixels - mean) * scale)[None].astype(spec.dtype)})
    return feeds


def _from_function(text: str, inputs, flag) -> list[dict]:
    module_name, _, function_name = text.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        feeds = [dict(f) for f, _ in zip(function(), range(MAX_SAMPLES))]
    except Exception as exc:  # the user's module: anything can fail
        raise UsageError(f"{flag} {text} failed: {first_line(exc)}; it must name a function "
                         "returning an iterable of feed dicts") from exc
    finally:
        sys.path.pop(0)
    if not feeds:
        raise UsageError(f"{flag} {text} yielded no feed dicts")
    for feed in feeds[:1]:
        check_feed(feed, inputs, flag)
    return [_cast(f, inputs) for f in feeds]
