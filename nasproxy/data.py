"""Datasets as uint8 tensors with a fixed train/val/test split and a fingerprint.

``load_dataset`` reads a source spec (digits, torchvision's CIFAR, an ImageFolder folder or
.tar.gz), decodes it once into an ``.npz`` cache under the data root keyed by the source
and the decode rule (checked on every read, rebuilt when damaged), and holds a stratified
validation split out of train with a seed. An image folder decodes by one rule over the
whole dataset, never by its first file (``_decode``). Proxy indices index the train split
that remains. The sources, the decode rule and the cache for users: docs/running.md, "Data".
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasproxy.errors import CacheWarning, DataWarning, NasproxyError
from nasproxy.io import atomic_write_bytes, check_output_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SIZE = 32
# The rule images are decoded by (``_decode``), part of the decode cache's key: a cache made
# under another rule is never read. 2: channels, size and 16-bit scaling by a rule over the
# whole dataset (1 let the first file decide them and clipped 16-bit samples).
DECODE_RULE = 2


def default_data_root() -> Path:
    """``$NASPROXY_DATA_ROOT`` or ``~/.cache/nasproxy``."""
    env = os.environ.get("NASPROXY_DATA_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "nasproxy"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test images (uint8, N x C x H x W, on the CPU) and int64 labels."""

    spec: str
    classes: tuple[str, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    fingerprint: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    def class_indices(self, indices: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """Train-split indices grouped by class (all of them, or those in ``indices``)."""
        labels = self.y_train.numpy()
        idx = np.arange(len(labels)) if indices is None else np.asarray(indices)
        return {c: idx[labels[idx] == c] for c in range(self.num_classes)}


@dataclass(frozen=True)
class _Raw:
    """A source before the validation split: HWC or CHW uint8 arrays and labels."""

    classes: tuple[str, ...]
    x_train: np.ndarray  # N x C x H x W uint8
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_dataset(
    spec: str,
    data_root: str | Path | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> Dataset:
    """Load ``spec`` and split a stratified ``val_fraction`` of each class off train."""
    if not 0.0 <= val_fraction < 1.0:
        raise NasproxyError(f"val fraction must be in [0, 1), got {val_fraction}")
    root = Path(data_root) if data_root is not None else default_data_root()
    blocked = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # refused even for a dataset that needs no data root (digits)
        raise NasproxyError(f"data root {root}: {blocked} is a file, not a folder")
    if spec == "digits":
        raw = _load_digits()
    elif spec in ("cifar10", "cifar100"):
        raw = _load_torchvision_cifar(spec, root)
    elif spec.startswith("imagefolder:"):
        raw = _load_imagefolder(Path(spec.split(":", 1)[1]).expanduser(), root)
    else:
        raise NasproxyError(
            f"unknown dataset {spec!r}; use digits, cifar10, cifar100 or imagefolder:PATH"
        )
    return _split(spec, raw, val_fraction, split_seed)


def dataset_name(spec: str) -> str:
    """A dataset's short name, for file names and the manifest: ``cifar10`` -> cifar10;
    ``imagefolder:/d/cifar10-jpeg.tar.gz`` (or ``.tgz``, ``.tar``, a folder) -> cifar10-jpeg."""
    if not spec.startswith("imagefolder:"):
        return spec
    name = Path(spec.split(":", 1)[1].rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return name or "imagefolder"


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices with ``round(fraction * n_c)`` held out per class."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:take])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask), held_out


def _split(spec: str, raw: _Raw, val_fraction: float, split_seed: int) -> Dataset:
    train_idx, val_idx = stratified_split(raw.y_train, val_fraction, split_seed)
    kept = np.bincount(raw.y_train[train_idx], minlength=len(raw.classes))
    if not kept.all():
        empty = raw.classes[int(np.flatnonzero(kept == 0)[0])]
        raise NasproxyError(
            f"val fraction {val_fraction} leaves class {empty!r} no training image; "
            "use a smaller --val-fraction"
        )
    x_train, y_train = raw.x_train[train_idx], raw.y_train[train_idx]
    pixels = x_train.astype(np.float64) / 255.0
    mean = tuple(float(v) for v in pixels.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in pixels.std(axis=(0, 2, 3)) + 1e-8)
    digest = hashlib.sha256()
    for part in (raw.y_train, val_idx, raw.y_test, raw.x_train, raw.x_test):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update("\n".join(raw.classes).encode())
    return Dataset(
        spec=spec,
        classes=raw.classes,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_val=torch.from_numpy(np.ascontiguousarray(raw.x_train[val_idx])),
        y_val=torch.from_numpy(raw.y_train[val_idx].astype(np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(raw.x_test)),
        y_test=torch.from_numpy(raw.y_test.astype(np.int64)),
        fingerprint=digest.hexdigest()[:16],
        mean=mean,
        std=std,
    )


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # N x 1 x 8 x 8
    images = torch.nn.functional.interpolate(images, size=DIGITS_SIZE, mode="bilinear")
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, seed=0)
    classes = tuple(str(c) for c in range(10))
    return _Raw(classes, pixels[train_idx], labels[train_idx], pixels[test_idx], labels[test_idx])


def _load_torchvision_cifar(name: str, root: Path) -> _Raw:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = root / name
    try:
        train = cls(str(folder), train=True, download=True)
        test = cls(str(folder), train=False, download=True)
    except Exception as exc:  # offline, partial download, corrupt archive
        raise NasproxyError(
            f"{name} is not in {folder} and could not be downloaded ({exc.__class__.__name__}); "
            f"put torchvision's {name} archive there (--data-root) "
            "or point --dataset imagefolder:PATH at an ImageFolder tree or .tar.gz"
        ) from None

    def chw(data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2))

    return _Raw(
        tuple(train.classes),
        chw(train.data),
        np.asarray(train.targets, dtype=np.int64),
        chw(test.data),
        np.asarray(test.targets, dtype=np.int64),
    )


# --- ImageFolder trees and .tar.gz archives --------------------------------------------


def _source_key(path: Path) -> str:
    """A cache key from the decode rule and the source's path, size and modification time
    (of every file under a folder)."""
    digest = hashlib.sha256(f"decode rule {DECODE_RULE}\n{path.resolve()}".encode())
    if path.is_file():
        st = path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                digest.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _load_imagefolder(path: Path, root: Path) -> _Raw:
    if not path.exists():
        raise NasproxyError(f"dataset path {path} does not exist")
    cache = root / "decoded" / f"imagefolder-{_source_key(path)}.npz"
    if cache.exists():
        raw = _read_cache(cache)
        if raw is not None:
            return raw
    check_output_dir(cache.parent, "decode cache folder")  # before decoding, not after
    files, skipped = _list_archive(path) if path.is_file() else _list_tree(path)
    raw = _decode(files, str(path), skipped)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        classes=np.array(raw.classes),
        x_train=raw.x_train,
        y_train=raw.y_train,
        x_test=raw.x_test,
        y_test=raw.y_test,
    )
    atomic_write_bytes(cache, buffer.getvalue())
    return raw


def _read_cache(cache: Path) -> _Raw | None:
    """The decoded images in ``cache``, or None (after a one-line warning) when it is damaged.

    Every array is read in full, so the zip's CRC-32 of each member is checked, and the
    shapes and labels must be consistent; a damaged file is deleted so that it is rebuilt.
    """
    try:
        with np.load(cache, allow_pickle=False) as z:
            raw = _Raw(
                tuple(str(c) for c in z["classes"]),
                z["x_train"],
                z["y_train"],
                z["x_test"],
                z["y_test"],
            )
        _check_raw(raw)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(
            f"decode cache {cache} is damaged ({exc.__class__.__name__}: {exc}); rebuilding it",
            CacheWarning,
            stacklevel=2,
        )
        cache.unlink(missing_ok=True)
        return None
    return raw


def _check_raw(raw: _Raw) -> None:
    """Raise ValueError unless ``raw`` is a consistent set of uint8 images and labels."""
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != x.shape[3] or len(x) == 0:
            raise ValueError(f"images of shape {x.shape} and dtype {x.dtype}")
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind != "i":
            raise ValueError(f"{len(y)} labels for {len(x)} images")
        if y.min() < 0 or y.max() >= len(raw.classes):
            raise ValueError(f"labels outside 0..{len(raw.classes) - 1}")
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise ValueError("train and test images differ in shape")


# split -> class -> list of (display name, the file's bytes)
_Files = dict[str, dict[str, list[tuple[str, bytes]]]]


def _is_image_name(name: str) -> bool:
    """Whether a file is read as an image: an image suffix and no leading '.' (the skip rule,
    which leaves out hidden files such as macOS's ``._*`` metadata beside each image)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _list_tree(path: Path) -> tuple[_Files, list[str]]:
    """The images of a folder by split and class, and the files of class folders skipped."""
    files: _Files = {}
    skipped: list[str] = []
    for split in ("train", "test"):
        split_dir = path / split
        if not split_dir.is_dir():
            raise NasproxyError(f"{path} has no {split}/ folder (expected {split}/<class>/*)")
        files[split] = {}
        for class_dir in sorted(split_dir.iterdir()):
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            images = []
            for p in sorted(class_dir.iterdir()):
                if p.is_file() and _is_image_name(p.name):
                    images.append((str(p), p.read_bytes()))
                elif p.is_file():
                    skipped.append(str(p.relative_to(path)))
            files[split][class_dir.name] = images
    return files, sorted(skipped)


def _list_archive(path: Path) -> tuple[_Files, list[str]]:
    """The images of a .tar.gz by split and class, and the files of class folders skipped."""
    if not tarfile.is_tarfile(path):
        raise NasproxyError(f"{path} is neither a folder nor a .tar.gz archive")
    files: _Files = {"train": {}, "test": {}}
    skipped: list[str] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                # .../{train,test}/<class>/<image>, with any leading folders
                if len(parts) < 3 or parts[-3] not in files or parts[-2].startswith("."):
                    continue
                if member.isdir():
                    files[parts[-3]].setdefault(parts[-2], [])
                    continue
                if not member.isfile():
                    continue
                if not _is_image_name(parts[-1]):
                    skipped.append(member.name)
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                files[parts[-3]].setdefault(parts[-2], []).append(
                    (f"{path}:{member.name}", handle.read())
                )
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise NasproxyError(f"{path}: cannot read archive ({exc})") from None
    for split in ("train", "test"):
        if not files[split]:
            raise NasproxyError(f"{path} has no {split}/<class>/ folders")
        for images in files[split].values():
            images.sort()
    return files, sorted(skipped)


# Modes PIL reads grayscale images in (the I modes hold 16-bit samples); every other mode
# but F is a colour mode. Modes whose alpha channel the decode drops.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True)
class _Image:
    """One decoded image: uint8 H x W (grayscale) or H x W x 3 (colour), and its source."""

    pixels: np.ndarray
    mode: str  # PIL's mode of the file
    wide: bool  # 16 bits per sample, scaled to 8


def _decode_image(blob: bytes, display: str) -> _Image:
    """Decode one file by the dataset's rule, independent of every other file: grayscale
    modes to 8-bit L, colour modes to RGB (alpha dropped), 16-bit samples scaled to 8 bits
    by their high byte (v >> 8, as PIL reads 16-bit colour PNGs), never clipped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            mode = img.mode
            wide = mode.startswith("I") or any(";16" in str(tile[3]) for tile in img.tile)
            img.load()
            if mode == "F":
                raise NasproxyError(f"cannot decode image {display} (floating-point pixels)")
            if mode.startswith("I"):
                values = np.asarray(img).astype(np.int64)
                if values.size and (values.min() < 0 or values.max() > 0xFFFF):
                    raise NasproxyError(
                        f"cannot decode image {display} (integer pixels outside 0..65535)"
                    )
                pixels = (values >> 8).astype(np.uint8)
            else:
                pixels = np.asarray(img.convert("L" if mode in _GRAY_MODES else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NasproxyError(f"cannot decode image {display} ({exc})") from None
    return _Image(np.asarray(pixels, dtype=np.uint8), mode, wide)


def _dataset_size(images: list[_Image], source: str) -> int:
    """The side every image is brought to: the most common size (ties: the smaller area,
    then the narrower), which must be square."""
    counts: dict[tuple[int, int], int] = {}
    for image in images:
        height, width = image.pixels.shape[:2]
        counts[(width, height)] = counts.get((width, height), 0) + 1
    width, height = min(counts, key=lambda s: (-counts[s], s[0] * s[1], s))
    if width != height:
        raise NasproxyError(
            f"{source}: most images ({counts[(width, height)]} of {len(images)}) are "
            f"{width}x{height}, not square; the networks need square images"
        )
    return width


def _decode(files: _Files, source: str, skipped: Sequence[str] = ()) -> _Raw:
    """Decode every image by a rule that does not depend on file order (docs/running.md,
    "Data"): 3 channels if any image has a colour mode, else 1; every image brought to the
    most common size; one warning line says what was converted or skipped."""
    from PIL import Image

    classes = tuple(sorted(files["train"]))
    if tuple(sorted(files["test"])) != classes:
        only_train = sorted(set(classes) - set(files["test"]))
        only_test = sorted(set(files["test"]) - set(classes))
        raise NasproxyError(
            f"{source}: train and test classes differ (only in train: {only_train}, "
            f"only in test: {only_test})"
        )
    for split in ("train", "test"):
        for name in classes:
            if not files[split][name]:
                raise NasproxyError(f"{source}: class folder {split}/{name} has no images")

    decoded = {
        split: [
            _decode_image(blob, display) for name in classes for display, blob in files[split][name]
        ]
        for split in ("train", "test")
    }
    every = decoded["train"] + decoded["test"]
    colour = any(image.pixels.ndim == 3 for image in every)
    side = _dataset_size(every, source)
    out: dict[str, np.ndarray] = {}
    for split, images in decoded.items():
        arrays = []
        for image in images:
            pixels = image.pixels
            if pixels.shape[:2] != (side, side):
                resized = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
                pixels = np.asarray(resized, dtype=np.uint8)
            if colour and pixels.ndim == 2:  # as PIL converts L to RGB: the value thrice
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            arrays.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
        out[split] = np.stack(arrays)
    labels = {
        split: np.repeat(
            np.arange(len(classes), dtype=np.int64), [len(files[split][c]) for c in classes]
        )
        for split in ("train", "test")
    }
    note = _conversions(every, colour, side, skipped)
    if note:
        warnings.warn(
            f"{source}: decoded {len(every)} images as {'RGB' if colour else 'grayscale'} "
            f"{side}x{side}; {note}",
            DataWarning,
            stacklevel=2,
        )
    return _Raw(classes, out["train"], labels["train"], out["test"], labels["test"])


def _conversions(images: list[_Image], colour: bool, side: int, skipped: Sequence[str]) -> str:
    """What the decode changed, in words ('' when every image was read as it is)."""
    target = "RGB" if colour else "L"
    modes: dict[str, int] = {}
    for image in images:
        if image.mode != target:
            modes[image.mode] = modes.get(image.mode, 0) + 1
    parts = []
    if modes:
        froms = ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items()))
        parts.append(f"converted to {target}: {sum(modes.values())} ({froms})")
    wide = sum(image.wide for image in images)
    if wide:
        parts.append(f"16-bit scaled to 8 bits: {wide}")
    alpha = sum(image.mode in _ALPHA_MODES for image in images)
    if alpha:
        parts.append(f"alpha dropped: {alpha}")
    shapes = [image.pixels.shape[:2] for image in images]
    resized = sum(shape != (side, side) for shape in shapes)
    if resized:
        stretched = sum(shape[0] != shape[1] for shape in shapes)
        parts.append(
            f"resized to {side}x{side}: {resized}"
            + (f" ({stretched} stretched, not square)" if stretched else "")
        )
    if skipped:
        parts.append(
            f"skipped as not images by name (hidden, or no image suffix): {len(skipped)}, "
            f"e.g. {skipped[0]}"
        )
    return "; ".join(parts)
