"""Calibration data: where the samples come from, streamed one feed dict at a time.

``--calib-data`` takes
- ``file.npz``: one array per model input, samples along axis 0 (sample i is ``array[i:i+1]``);
- ``file.npy``: the same for a single-input model (memory-mapped: read sample by sample);
- a folder of images (.png .jpg .jpeg .bmp .pgm .tif), sorted by name, each converted to the input's
  channel count (1: grayscale, 3: RGB), resized to its H x W (bilinear) and scaled by ``preprocess``:
  ``raw`` float32 0-255, ``unit`` 0-1, ``imagenet`` (x/255 - mean) / std per RGB channel;
- ``file.py:function`` or ``module:function`` returning an iterable of feed dicts (input name -> array),
  Polygraphy's data-loader-script convention.
Zoo models bring their own data; a user model without ``--calib-data`` calibrates on seeded random
inputs, with a loud warning (and the report says so).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attn_export import lazy
from attn_export.errors import AttnExportError
from attn_export.loader import resolve_callable
from attn_export.onnx_utils import InputInfo
from attn_export.onnx_utils import graph_inputs as input_infos

__all__ = ["CalibSource", "InputInfo", "check_feed", "checked_source", "from_spec", "input_infos", "random_source"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff"}
PREPROCESS = ("raw", "unit", "imagenet")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
RANDOM_WARNING = ("no --calib-data: calibrating on seeded RANDOM inputs; INT8 scales from random data can be far "
                  "from real activations, so accuracy is unknown: pass --calib-data with real samples")


@dataclass
class CalibSource:
    feeds: Iterable[Mapping[str, np.ndarray]]
    description: str
    warning: str | None = None
    real: bool = True  # False for seeded random inputs: a check must not treat them as data
    count: int | None = None  # samples in the source, where known before reading it


def from_spec(spec: str, inputs: Sequence[InputInfo], preprocess: str = "raw") -> CalibSource:
    """The calibration source that ``--calib-data spec`` names."""
    path = Path(spec)
    if spec.endswith(".npz"):
        feeds, count = _npz(path, inputs)
        return CalibSource(feeds, f"{spec} (npz)", count=count)
    if spec.endswith(".npy"):
        feeds, count = _npy(path, inputs)
        return CalibSource(feeds, f"{spec} (npy)", count=count)
    if path.is_dir():
        if preprocess not in PREPROCESS:
            raise AttnExportError(f"--calib-preprocess '{preprocess}' is not one of {', '.join(PREPROCESS)}")
        feeds, count = _images(path, inputs, preprocess)
        return CalibSource(feeds, f"{spec} (images, preprocess {preprocess})", count=count)
    if ":" in spec:
        func = resolve_callable(spec, "--calib-data")
        return CalibSource(_from_function(func, spec), f"{spec} (data loader function)")
    if not path.exists():
        raise AttnExportError(f"--calib-data {spec} does not exist")
    raise AttnExportError(f"--calib-data {spec}: use a .npz, a .npy, a folder of images or file.py:function")


def random_source(make: Callable[[int], Sequence], names: Sequence[str], warn: bool) -> CalibSource:
    """Seeded random feeds (seed 0, 1, ...) from ``make(seed) -> tensors``."""

    def feeds() -> Iterator[dict]:
        seed = 0
        while True:
            yield {n: t.numpy() for n, t in zip(names, make(seed))}
            seed += 1

    return CalibSource(feeds(), "seeded random inputs", RANDOM_WARNING if warn else None, real=False)


def _npz(path: Path, inputs: Sequence[InputInfo]) -> tuple[Iterator[dict], int]:
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise AttnExportError(f"--calib-data {path} does not exist") from None
    except Exception as exc:
        raise AttnExportError(f"--calib-data {path} is not a readable .npz ({type(exc).__name__})") from exc
    names = {i.name for i in inputs}
    if set(archive.files) != names:
        raise AttnExportError(f"--calib-data {path} holds {sorted(archive.files)}; the model's inputs are "
                              f"{sorted(names)}")
    arrays = {n: archive[n] for n in archive.files}
    counts = {n: a.shape[0] if a.ndim else 0 for n, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise AttnExportError(f"--calib-data {path}: inputs hold different sample counts {counts}")
    return _rows(arrays), next(iter(counts.values()))


def _npy(path: Path, inputs: Sequence[InputInfo]) -> tuple[Iterator[dict], int]:
    if len(inputs) != 1:
        raise AttnExportError(f"--calib-data {path}: a .npy holds one input but the model has {len(inputs)}; "
                              "use a .npz")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise AttnExportError(f"--calib-data {path} does not exist") from None
    except Exception as exc:
        raise AttnExportError(f"--calib-data {path} is not a readable .npy ({type(exc).__name__})") from exc
    return _rows({inputs[0].name: array}), array.shape[0] if array.ndim else 0


def _rows(arrays: Mapping[str, np.ndarray]) -> Iterator[dict]:
    count = min((a.shape[0] if a.ndim else 0) for a in arrays.values())
    for i in range(count):
        yield {n: np.ascontiguousarray(a[i:i + 1]) for n, a in arrays.items()}


def _images(folder: Path, inputs: Sequence[InputInfo], preprocess: str) -> tuple[Iterator[dict], int]:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise AttnExportError("--calib-data with a folder of images needs a model with one [N, C, H, W] input")
    _, channels, height, width = inputs[0].shape
    if not all(isinstance(d, int) for d in (channels, height, width)) or channels not in (1, 3):
        raise AttnExportError(f"--calib-data images: the input shape {list(inputs[0].shape)} needs fixed C (1 or 3), "
                              "H, W")
    Image = lazy.load(lazy.pil_image)  # PIL.Image, or exit 3 naming Pillow
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AttnExportError(f"--calib-data {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")

    def feeds() -> Iterator[dict]:
        for file in files:
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                    pixels = np.asarray(image, np.float32).reshape(height, width, channels)
            except Exception as exc:
                raise AttnExportError(f"--calib-data: cannot read image {file} ({type(exc).__name__})") from exc
            if preprocess == "unit":
                pixels = pixels / 255.0
            elif preprocess == "imagenet":
                if channels != 3:
                    raise AttnExportError("--calib-preprocess imagenet needs RGB (3-channel) input")
                pixels = (pixels / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
            yield {inputs[0].name: pixels.transpose(2, 0, 1)[None].astype(inputs[0].dtype)}

    return feeds(), len(files)


def _from_function(func: Callable, spec: str) -> Iterator[dict]:
    try:
        data = func()
        iterator = iter(data)
    except Exception as exc:  # user code
        raise AttnExportError(f"--calib-data {spec}: the function failed or did not return an iterable "
                              f"({type(exc).__name__}: {exc})") from exc
    for feed in iterator:
        yield {name: np.asarray(value) for name, value in feed.items()} if isinstance(feed, Mapping) else feed


def check_feed(feed: Mapping[str, np.ndarray], inputs: Mapping[str, InputInfo], index: int) -> dict[str, np.ndarray]:
    """One calibration sample against the model's inputs: names, dtypes, ranks, fixed dims, finite."""
    if not isinstance(feed, Mapping):
        raise AttnExportError(f"calibration sample {index} is a {type(feed).__name__}; each sample must be a "
                              "dict of input name -> array")
    if set(feed) != set(inputs):
        raise AttnExportError(f"calibration sample {index} has inputs {sorted(feed)}; the model's inputs are "
                              f"{sorted(inputs)}")
    checked = {}
    for name, info in inputs.items():
        array = np.asarray(feed[name])
        if array.dtype != info.dtype:
            raise AttnExportError(f"calibration sample {index}: '{name}' is {array.dtype}; the model takes "
                                  f"{info.dtype.name}")
        if array.ndim != len(info.shape):
            raise AttnExportError(f"calibration sample {index}: '{name}' has shape {list(array.shape)}; the model "
                                  f"takes {len(info.shape)} dims {list(info.shape)}")
        for axis, (got, dim) in enumerate(zip(array.shape, info.shape)):
            if isinstance(dim, int) and dim != got:
                raise AttnExportError(f"calibration sample {index}: '{name}' has shape {list(array.shape)}; axis "
                                      f"{axis} must be {dim}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = "NaN" if np.isnan(array).any() else "Inf"
            raise AttnExportError(f"calibration sample {index}: '{name}' contains {bad}; remove or fix that sample")
        checked[name] = array
    return checked


def checked_source(source: CalibSource, inputs: Sequence[InputInfo]) -> CalibSource:
    """``source`` with its first sample read and checked against ``inputs`` now (before any export work);
    the samples still stream, the first one included."""
    feeds = iter(source.feeds)
    first = next(feeds, None)
    if first is None:
        raise AttnExportError(f"calibration data {source.description} is empty; give at least one sample")
    check_feed(first, {i.name: i for i in inputs}, 0)
    return CalibSource(itertools.chain([first], feeds), source.description, source.warning, source.real, source.count)
