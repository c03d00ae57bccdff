"""nasproxy.units and `nasproxy units`: the archive of unit files a GPU window returns."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nasproxy import cli, results, units
from nasproxy.errors import NasproxyError
from nasproxy.spaces import Arch
from nasproxy.train import TrainRecord

REPO = Path(__file__).resolve().parents[1]
ARCHS = [Arch(32, 1, "relu", "none", "maxpooling"), Arch(64, 2, "sigmoid", "batchnorm", "none")]


def _experiment(root: Path, name: str, finished: dict[tuple[str, str], float]) -> Path:
    """An experiment with a manifest (2 archs x seed 0 x {random, whole}) and a unit file
    for each (train set, arch) in ``finished``, finished at the given epoch seconds."""
    exp_dir = root / name
    manifest = {
        "archs": [a.id for a in ARCHS],
        "space_size": 720,
        "protocol": {"epochs": 3, "seeds": [0]},
        "train_sets": {"random": {"n_images": 100}, "whole": {"n_images": 1000}},
    }
    results.write_manifest(exp_dir, manifest)
    by_id = {a.id: a for a in ARCHS}
    for (train_set, arch_id), when in finished.items():
        n = manifest["train_sets"][train_set]["n_images"]
        record = TrainRecord(arch_id, "ok", "", seed=0, epochs=3, n_train=n)
        record.images_seen, record.val_acc, record.test_acc = 3 * n, 0.5, 0.4
        stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
        row = results.make_row(by_id[arch_id], train_set, "h", record)
        results.write_unit(exp_dir, row, {"finished": stamp})
    return exp_dir


def _files(exp_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(exp_dir)): p.read_bytes()
        for p in sorted(exp_dir.rglob("*.json"))
        if results.UNITS_DIR in p.parts or p.name == results.MANIFEST
    }


def test_pack_then_unpack_gives_the_same_files_and_a_table(tmp_path: Path) -> None:
    src = tmp_path / "src"
    done = {("random", ARCHS[0].id): 1e9, ("random", ARCHS[1].id): 1e9, ("whole", ARCHS[0].id): 1e9}
    a = _experiment(src, "exp", done)
    b = _experiment(src, "exp-proxies", {("random", ARCHS[1].id): 1e9})
    (a / results.UNITS_DIR / "random" / "s0" / ".x.json.tmp").write_text("torn")
    archive = tmp_path / "out" / "units.tar.gz"
    assert units.pack(src, ["exp", "exp-proxies", "not-yet"], archive) == 4
    with tarfile.open(archive) as tar:
        assert not any(name.endswith(".tmp") for name in tar.getnames())

    dst = tmp_path / "dst"
    assert units.unpack(archive, dst) == {"exp": 3, "exp-proxies": 1}
    assert _files(dst / "exp") == _files(a)
    assert _files(dst / "exp-proxies") == _files(b)
    table = results.read_trials(dst / "exp")
    assert sorted(map(tuple, table[["train_set", "arch"]].values)) == sorted(done)


def test_unpack_refuses_anything_but_manifests_and_units(tmp_path: Path) -> None:
    for name, kind in [
        ("exp/../../evil.json", tarfile.REGTYPE),
        ("/abs/manifest.json", tarfile.REGTYPE),
        ("exp/units/random/s0/a.json", tarfile.SYMTYPE),
        ("exp/ray/run-001/state.json", tarfile.REGTYPE),
    ]:
        archive = tmp_path / "bad.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            good = tarfile.TarInfo("exp/manifest.json")
            good.size = 2
            tar.addfile(good, io.BytesIO(b"{}"))
            bad = tarfile.TarInfo(name)
            bad.type = kind
            bad.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            bad.size = 0 if kind == tarfile.SYMTYPE else 2
            tar.addfile(bad, None if kind == tarfile.SYMTYPE else io.BytesIO(b"{}"))
        dst = tmp_path / "dst"
        with pytest.raises(NasproxyError, match="not a manifest or unit file"):
            units.unpack(archive, dst)
        assert not dst.exists()  # nothing written before the whole archive was checked


def test_rates_count_units_since_a_time(tmp_path: Path) -> None:
    since = 1_000_000.0
    done = {
        ("random", ARCHS[0].id): since - 50,  # before: stored, not in the rate
        ("random", ARCHS[1].id): since + 10,
        ("whole", ARCHS[0].id): since + 20,
    }
    _experiment(tmp_path, "exp", done)
    lines = units.rates(tmp_path, ["exp", "absent"], since, now=since + 60)
    assert len(lines) == 3
    random_line, whole_line, total_line = lines
    # random: 1 of its units finished since, 300 images in 60 s
    assert "2/2 units stored (3 epochs); 1 in the last 60 s = 1.0 units/min, 5 images/s" in (
        random_line
    )
    # whole: 1 unit of 3000 images in 60 s
    assert "1/2 units stored (3 epochs); 1 in the last 60 s = 1.0 units/min, 50 images/s" in (
        whole_line
    )
    # together: 2 units, 3300 images in 60 s; 1 missing at 30 s a unit; the full protocol
    # is 720 archs x 1 seed x (100 + 1000) images x 100 epochs at 55 images/s
    assert "3/4 units stored; 2 in the last 60 s = 2.0 units/min, 55 images/s" in total_line
    assert "the 1 missing at this rate: 30 s" in total_line
    assert f"{720 * 1100 * 100 / 55 / 60:.1f} min" in total_line


def test_has_gpu_bench_reads_the_device_type(tmp_path: Path) -> None:
    (tmp_path / "sweep-cpu.json").write_text(json.dumps({"device_type": "cpu"}))
    (tmp_path / "sweep-broken.json").write_text("{")
    assert units.has_gpu_bench(tmp_path) == []
    (tmp_path / "sweep-cuda.json").write_text(json.dumps({"device_type": "cuda"}))
    assert units.has_gpu_bench(tmp_path) == [tmp_path / "sweep-cuda.json"]


def test_check_data_refuses_a_proxy_of_another_dataset(tmp_path: Path) -> None:
    from nasproxy.data import load_dataset

    digits = load_dataset("digits", tmp_path)
    same, other = tmp_path / "same.json", tmp_path / "other.json"
    same.write_text(json.dumps({"fingerprint": digits.fingerprint}))
    other.write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    assert units.check_data("digits", [same], str(tmp_path)) == digits.fingerprint
    with pytest.raises(NasproxyError, match="0123456789abcdef"):
        units.check_data("digits", [same, other], str(tmp_path))


def test_shape_globs_pick_whole_shapes_evenly() -> None:
    from nasproxy import spaces
    from nasproxy.search.plan import select_archs

    space = spaces.load("convnet720")
    globs = units.shape_globs("convnet720", 32, seed=0)
    archs = select_archs(space, globs)
    acts = sorted({a.act for a in space})
    shapes: dict[tuple, list[str]] = {}
    for a in archs:
        shapes.setdefault((a.width, a.depth, a.norm, a.pool), []).append(a.act)
    assert len(globs) == len(shapes) == 32 and len(archs) == 32 * len(acts)
    assert all(sorted(found) == acts for found in shapes.values())
    for j, field in enumerate(("width", "depth", "norm", "pool")):
        options = sorted({getattr(a, field) for a in space})
        counts = [sum(shape[j] == v for shape in shapes) for v in options]
        assert max(counts) - min(counts) <= 1, (field, counts)
    inside = select_archs(space, units.shape_globs("convnet720", 2, 0, within=["w32-d1-*"]))
    assert len(inside) == 2 * len(acts) and {(a.width, a.depth) for a in inside} == {(32, 1)}


def test_the_command_packs_unpacks_and_refuses_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst, archive = tmp_path / "src", tmp_path / "dst", tmp_path / "units.tar.gz"
    a = _experiment(src, "exp", {("random", ARCHS[0].id): 1e9, ("whole", ARCHS[1].id): 1e9})
    assert cli.main(["units", "pack", "exp", "--results-dir", str(src), "--out", str(archive)]) == 0
    assert capsys.readouterr().out == f"packed 2 unit files into {archive}\n"
    assert cli.main(["units", "unpack", str(archive), "--results-dir", str(dst)]) == 0
    assert capsys.readouterr().out == f"{dst / 'exp'}: 2 unit files, trials table rebuilt\n"
    assert _files(dst / "exp") == _files(a)
    (tmp_path / "torn.tar.gz").write_bytes(b"not a tar")
    assert cli.main(["units", "unpack", str(tmp_path / "torn.tar.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasproxy: error: cannot read") and err.count("\n") == 1


def test_the_command_exits_1_without_a_gpu_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sweep-cpu.json").write_text(json.dumps({"device_type": "cpu"}))
    assert cli.main(["units", "has-gpu-bench", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"no CUDA sweep benchmark under {tmp_path}\n"
    (tmp_path / "sweep-cuda.json").write_text(json.dumps({"device_type": "cuda"}))
    assert cli.main(["units", "has-gpu-bench", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'sweep-cuda.json'}\n"


def test_the_command_prints_the_rates_and_the_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    since = 1_000_000.0
    _experiment(tmp_path, "exp", {("random", ARCHS[1].id): since + 10})
    monkeypatch.setattr("time.time", lambda: since + 60)
    argv = ["units", "rates", "exp", "--results-dir", str(tmp_path), "--since", str(since)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == units.rates(tmp_path, ["exp"], since, since + 60)
    assert cli.main(["units", "shapes", "2", "--seed", "1", "--within", "w32-d1-*"]) == 0
    assert capsys.readouterr().out.splitlines() == units.shape_globs(
        "convnet720", 2, 1, within=["w32-d1-*"]
    )


def test_the_old_script_still_works_and_names_the_command(tmp_path: Path) -> None:
    (tmp_path / "sweep-cuda.json").write_text(json.dumps({"device_type": "cuda"}))
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/table1_units.py"), "has-gpu-bench", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'sweep-cuda.json'}\n"
    assert done.stderr.count("\n") == 1 and "`nasproxy units`" in done.stderr
