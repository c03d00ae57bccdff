"""Datasets: stratified split counts, fingerprints, the decode cache and every bad input."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasproxy.data import Dataset, load_dataset, stratified_split
from nasproxy.errors import CacheWarning, NasproxyError


def write_tree(root: Path, classes=("cat", "dog"), per_class=6, size=8, mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    folder / f"{i:03d}.png"
                )
    return root


def test_stratified_split_counts_per_class() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 20, 11])
    kept, held = stratified_split(labels, 0.1, seed=3)
    assert [int((labels[held] == c).sum()) for c in range(4)] == [5, 3, 2, 1]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    again = stratified_split(labels, 0.1, seed=3)[1]
    other = stratified_split(labels, 0.1, seed=4)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other)


def test_digits_split_is_stratified_and_fixed(digits: Dataset) -> None:
    counts_val = np.bincount(digits.y_val.numpy(), minlength=10)
    counts_train = np.bincount(digits.y_train.numpy(), minlength=10)
    assert np.all(np.abs(counts_val - 0.1 * (counts_val + counts_train)) <= 0.5 + 1e-9)
    assert digits.x_train.shape[1:] == (1, 32, 32)
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == 1797
    again = load_dataset("digits")
    assert again.fingerprint == digits.fingerprint


def test_fingerprint_changes_with_split_and_labels(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "a")
    base = load_dataset(f"imagefolder:{tree}", data_root=tmp_path / "cache", val_fraction=0.34)
    other_split = load_dataset(
        f"imagefolder:{tree}", data_root=tmp_path / "cache", val_fraction=0.34, split_seed=1
    )
    assert base.fingerprint != other_split.fingerprint
    # move one image to the other class: same pixels, different labels
    moved = tree / "train" / "cat" / "000.png"
    moved.rename(tree / "train" / "dog" / "999.png")
    relabelled = load_dataset(
        f"imagefolder:{tree}", data_root=tmp_path / "cache", val_fraction=0.34
    )
    assert relabelled.fingerprint != base.fingerprint


def test_imagefolder_tree_and_targz_agree_and_are_cached(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "src" / "mini", mode="L")
    archive = tmp_path / "mini.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="mini")
    cache = tmp_path / "cache"
    a = load_dataset(f"imagefolder:{tree}", data_root=cache)
    b = load_dataset(f"imagefolder:{archive}", data_root=cache)
    assert a.classes == ("cat", "dog") and a.in_channels == 1
    assert a.fingerprint == b.fingerprint
    assert len(list((cache / "decoded").glob("*.npz"))) == 2
    # a second load reads the cache: the decoded arrays equal the original pixels
    again = load_dataset(f"imagefolder:{archive}", data_root=cache)
    assert again.fingerprint == b.fingerprint
    original = np.asarray(Image.open(tree / "test" / "cat" / "000.png"))
    assert np.array_equal(again.x_test[0, 0].numpy(), original)


def test_missing_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NasproxyError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", data_root=tmp_path)


def test_missing_split_folder(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t")
    for f in (tree / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((tree / "test").iterdir()):
        d.rmdir()
    (tree / "test").rmdir()
    with pytest.raises(NasproxyError, match="no test/ folder"):
        load_dataset(f"imagefolder:{tree}", data_root=tmp_path / "c")


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t")
    for f in (tree / "train" / "dog").glob("*.png"):
        f.unlink()
    with pytest.raises(NasproxyError, match="train/dog has no images"):
        load_dataset(f"imagefolder:{tree}", data_root=tmp_path / "c")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t")
    bad = tree / "test" / "cat" / "003.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(NasproxyError, match="003.png"):
        load_dataset(f"imagefolder:{tree}", data_root=tmp_path / "c")


def test_class_mismatch_between_train_and_test(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t")
    (tree / "test" / "dog").rename(tree / "test" / "wolf")
    with pytest.raises(NasproxyError, match="classes differ"):
        load_dataset(f"imagefolder:{tree}", data_root=tmp_path / "c")


def test_unknown_dataset_and_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(NasproxyError, match="unknown dataset"):
        load_dataset("mnist-ish")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(io.BytesIO(b"plain bytes").getvalue())
    with pytest.raises(NasproxyError, match="neither a folder nor"):
        load_dataset(f"imagefolder:{junk}", data_root=tmp_path)


def test_offline_cifar_download_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", offline)
    with pytest.raises(NasproxyError, match="imagefolder:PATH"):
        load_dataset("cifar10", data_root=tmp_path)


@pytest.mark.slow
def test_real_cifar10_shapes_and_split(cifar: Dataset) -> None:
    assert cifar.classes[:3] == ("airplane", "automobile", "bird")
    assert cifar.x_train.shape == (45000, 3, 32, 32)
    assert np.bincount(cifar.y_val.numpy()).tolist() == [500] * 10
    assert np.bincount(cifar.y_test.numpy()).tolist() == [1000] * 10


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not a zip", "wrong shapes"])
def test_corrupt_decode_cache_is_rebuilt_with_a_warning(tmp_path: Path, damage: str) -> None:
    tree = write_tree(tmp_path / "mini")
    cache_root = tmp_path / "cache"
    first = load_dataset(f"imagefolder:{tree}", data_root=cache_root)
    (cached,) = (cache_root / "decoded").glob("*.npz")
    blob = cached.read_bytes()
    if damage == "truncated":
        cached.write_bytes(blob[: len(blob) // 2])
    elif damage == "flipped byte":  # inside x_train's pixels: only the zip's CRC-32 sees it
        with np.load(cached) as z:
            pixels = z["x_train"].tobytes()
        at = blob.index(pixels) + len(pixels) // 2
        cached.write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
    elif damage == "not a zip":
        cached.write_text("hello")
    else:
        buffer = io.BytesIO()
        np.savez(buffer, classes=np.array(["a"]), x_train=np.zeros((2, 3)), y_train=np.zeros(2))
        cached.write_bytes(buffer.getvalue())
    with pytest.warns(CacheWarning, match="decode cache .* is damaged"):
        again = load_dataset(f"imagefolder:{tree}", data_root=cache_root)
    # rebuilt from the images: the same pixels and fingerprint, and a sound cache again
    assert again.fingerprint == first.fingerprint
    assert np.array_equal(again.x_train.numpy(), first.x_train.numpy())
    assert cached.read_bytes() == blob
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        load_dataset(f"imagefolder:{tree}", data_root=cache_root)


def test_decode_cache_under_a_file_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    import nasproxy.data as data_module

    tree = write_tree(tmp_path / "mini")
    (tmp_path / "root").write_text("not a folder")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before checking where the cache goes")

    monkeypatch.setattr(data_module, "_decode", no_decoding)
    with pytest.raises(NasproxyError, match="is a file, not a folder"):
        load_dataset(f"imagefolder:{tree}", data_root=tmp_path / "root")
