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
from nasproxy.errors import CacheWarning, DataWarning, NasproxyError


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


# --- the decode rule: the same images decode the same whatever their names' order ----------


def save(path: Path, pixels: np.ndarray, mode: str | None = None) -> np.ndarray:
    """Write ``pixels`` as an image file (folders made); the pixels, for comparison."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def test_16bit_pngs_are_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = {}
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for i in range(3):
                values = rng.integers(0, 65536, (6, 6)).astype(np.uint16)
                save(tmp_path / "t" / split / c / f"{i}.png", values)
                truth[(split, c, i)] = values
    with pytest.warns(DataWarning, match="16-bit scaled to 8 bits: 12"):
        data = load_dataset(f"imagefolder:{tmp_path / 't'}", tmp_path / "c", val_fraction=0.0)
    assert data.in_channels == 1
    expected = np.stack([truth[("test", c, i)] >> 8 for c in ("cat", "dog") for i in range(3)])
    assert np.array_equal(data.x_test[:, 0].numpy(), expected.astype(np.uint8))
    assert (data.x_train.numpy() == 255).mean() < 0.05  # not clipped to white


@pytest.mark.parametrize("gray_name", ["-gray.png", "zzz.png"])
def test_one_grayscale_image_does_not_decide_the_channels(tmp_path: Path, gray_name: str) -> None:
    """3 channels when any image has colour, the grayscale one repeated: wherever it sorts."""
    tree = write_tree(tmp_path / "t", per_class=3)
    gray = save(tree / "train" / "cat" / gray_name, np.arange(64, dtype=np.uint8).reshape(8, 8))
    with pytest.warns(DataWarning, match=r"converted to RGB: 1 \(1 L\)"):
        data = load_dataset(f"imagefolder:{tree}", tmp_path / "c", val_fraction=0.0)
    assert data.in_channels == 3
    position = 0 if gray_name == "-gray.png" else 3  # among the cat folder's 4 files, sorted
    assert np.array_equal(data.x_train[position].numpy(), np.stack([gray] * 3))
    rgb = np.asarray(Image.open(tree / "train" / "dog" / "000.png"))
    assert np.array_equal(data.x_train[4].numpy(), rgb.transpose(2, 0, 1))


@pytest.mark.parametrize("odd", [(10, 6), (16, 16)])
def test_the_most_common_size_wins_whatever_sorts_first(
    tmp_path: Path, odd: tuple[int, int]
) -> None:
    """An image of another size, first in order, is resized to the common size (8x8)."""
    tree = write_tree(tmp_path / "t", per_class=3)
    width, height = odd
    first = tree / "train" / "cat" / "000-first.png"
    odd_pixels = save(first, np.full((height, width, 3), 77, dtype=np.uint8))
    with pytest.warns(DataWarning, match="resized to 8x8: 1"):
        data = load_dataset(f"imagefolder:{tree}", tmp_path / "c", val_fraction=0.0)
    assert data.image_size == 8 and data.x_train.shape == (7, 3, 8, 8)
    assert np.all(data.x_train[0].numpy() == odd_pixels[0, 0, 0])  # a flat image stays flat
    for position, name in ((1, "cat/000.png"), (4, "dog/000.png")):
        original = np.asarray(Image.open(tree / "train" / name)).transpose(2, 0, 1)
        assert np.array_equal(data.x_train[position].numpy(), original)


def test_a_dataset_of_mostly_non_square_images_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for i in range(2):
                save(
                    tmp_path / "t" / split / c / f"{i}.png",
                    rng.integers(0, 256, (6, 10, 3), np.uint8),
                )
    save(tmp_path / "t" / "train" / "cat" / "2.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(NasproxyError, match=r"most images \(8 of 9\) are 10x6, not square"):
        load_dataset(f"imagefolder:{tmp_path / 't'}", tmp_path / "c")


@pytest.mark.parametrize("packed", [False, True])
def test_hidden_files_and_folders_are_skipped_and_said(tmp_path: Path, packed: bool) -> None:
    """macOS's ._* metadata beside each image (and .DS_Store, hidden folders) are no images."""
    tree = write_tree(tmp_path / "src" / "mini")
    plain = load_dataset(f"imagefolder:{tree}", tmp_path / "plain")
    (tree / "train" / "cat" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tree / "test" / "dog" / ".DS_Store").write_bytes(b"Bud1")
    save(tree / "train" / ".ipynb_checkpoints" / "x.png", np.zeros((8, 8, 3), np.uint8))
    source = tree
    if packed:
        source = tmp_path / "mini.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tree, arcname="mini")
    with pytest.warns(DataWarning, match="not images by name .*: 2, e.g.") as caught:
        data = load_dataset(f"imagefolder:{source}", tmp_path / "c")
    (line,) = [str(w.message) for w in caught if w.category is DataWarning]
    assert "\n" not in line and line.endswith(str(Path("test", "dog", ".DS_Store")))
    assert data.classes == plain.classes and data.fingerprint == plain.fingerprint


def test_a_cache_made_under_another_decode_rule_is_not_read(tmp_path: Path, monkeypatch) -> None:
    import nasproxy.data as data_module

    tree = write_tree(tmp_path / "mini")
    load_dataset(f"imagefolder:{tree}", tmp_path / "c")
    (old_cache,) = (tmp_path / "c" / "decoded").glob("*.npz")
    calls = []
    real_decode = data_module._decode
    monkeypatch.setattr(data_module, "_decode", lambda *a: calls.append(1) or real_decode(*a))
    load_dataset(f"imagefolder:{tree}", tmp_path / "c")
    assert calls == []  # same rule: the cache is read
    monkeypatch.setattr(data_module, "DECODE_RULE", data_module.DECODE_RULE + 1)
    load_dataset(f"imagefolder:{tree}", tmp_path / "c")
    assert calls == [1]  # another rule: decoded again, into a cache of its own
    assert len(list((tmp_path / "c" / "decoded").glob("*.npz"))) == 2 and old_cache.exists()
