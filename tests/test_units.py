"""nasproxy.units and `nasproxy units`: the archive of unit files a GPU window returns."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from nasproxy import cli, results, units
from nasproxy.errors import NasproxyError
from nasproxy.proxies.proxy_file import proxy_record, write_proxy
from nasproxy.results import UnitKey
from nasproxy.search import resolve_train_sets
from nasproxy.search.trial import make_row
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
        "train_sets": {
            "random": {"n_images": 100, "proxy_hash": "h"},
            "whole": {"n_images": 1000, "proxy_hash": "h"},
        },
    }
    results.write_manifest(exp_dir, manifest)
    by_id = {a.id: a for a in ARCHS}
    for (train_set, arch_id), when in finished.items():
        n = manifest["train_sets"][train_set]["n_images"]
        record = TrainRecord(arch_id, "ok", "", seed=0, epochs=3, n_train=n)
        record.images_seen, record.val_acc, record.test_acc = 3 * n, 0.5, 0.4
        stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
        row = make_row(by_id[arch_id], train_set, "h", record)
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
    assert units.pack(src, ["exp", "exp-proxies"], archive) == 4
    with tarfile.open(archive) as tar:
        assert not any(name.endswith(".tmp") for name in tar.getnames())

    dst = tmp_path / "dst"
    assert units.unpack(archive, dst) == {"exp": 3, "exp-proxies": 1}
    assert _files(dst / "exp") == _files(a)
    assert _files(dst / "exp-proxies") == _files(b)
    table = results.read_trials(dst / "exp")
    assert sorted(map(tuple, table[["train_set", "arch"]].values)) == sorted(done)
    before = _tree(dst)
    assert units.unpack(archive, dst) == {"exp": 3, "exp-proxies": 1}  # again: no change
    assert _tree(dst) == before


def test_a_set_with_its_own_epochs_packs_and_unpacks_and_keeps_them(tmp_path: Path) -> None:
    """Units of whole@1 (the whole split for 1 epoch, the protocol's 3) travel like any
    unit; one that claims the protocol's epochs for whole@1 is refused on unpack."""
    src = _experiment(tmp_path / "src", "exp", {("whole", ARCHS[0].id): 1e9})
    manifest = results.read_manifest(src)
    manifest["train_sets"]["whole@1"] = {"n_images": 1000, "proxy_hash": "h", "epochs": 1}
    results.write_manifest(src, manifest)
    for epochs, folder in ((1, "src"), (3, "bad")):
        exp_dir = src if folder == "src" else tmp_path / folder / "exp"
        if folder == "bad":
            exp_dir.mkdir(parents=True)
            results.write_manifest(exp_dir, manifest)
        record = TrainRecord(ARCHS[0].id, "ok", "", seed=0, epochs=epochs, n_train=1000)
        record.images_seen, record.val_acc = epochs * 1000, 0.5
        results.write_unit(exp_dir, make_row(ARCHS[0], "whole@1", "h", record))
    archive = tmp_path / "units.tar.gz"
    assert units.pack(tmp_path / "src", ["exp"], archive) == 2
    assert units.unpack(archive, tmp_path / "dst") == {"exp": 2}
    assert _files(tmp_path / "dst" / "exp") == _files(src)
    bad = tmp_path / "bad.tar.gz"
    units.pack(tmp_path / "bad", ["exp"], bad)
    with pytest.raises(NasproxyError, match="3 epochs, this command gives 1 for 'whole@1'"):
        units.unpack(bad, tmp_path / "dst2")


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
    assert len(lines) == 4 and lines[3] == "rate absent: no manifest yet"
    random_line, whole_line, total_line = lines[:3]
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
    for bad in (tmp_path / "none", tmp_path / "exp" / "manifest.json"):  # missing, a file
        with pytest.raises(NasproxyError, match="no results folder"):
            units.rates(bad, ["exp"], since, now=since + 60)
    with pytest.raises(NasproxyError):
        units.rates(tmp_path, ["../exp"], since, now=since + 60)


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
    record = proxy_record(digits, np.arange(10), method="random")
    write_proxy(record, same)
    write_proxy({**record, "fingerprint": "0123456789abcdef"}, other)
    assert units.check_data("digits", [same], str(tmp_path)) == digits.fingerprint
    with pytest.raises(NasproxyError, match="0123456789abcdef"):
        units.check_data("digits", [same, other], str(tmp_path))


def test_check_data_refuses_a_bad_proxy_file_as_the_sweep_does(
    digits, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A file that is not a proxy file (a fingerprint alone), broken JSON or no file: one
    line, the sweep's own refusal of the same file."""
    lone = tmp_path / "lone.json"
    lone.write_text(json.dumps({"fingerprint": digits.fingerprint}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "nasproxy-proxy/1", "indices": ')
    for path in (lone, broken, tmp_path / "absent.json"):
        with pytest.raises(NasproxyError) as sweep:
            resolve_train_sets([str(path)], False, digits)
        assert cli.main(["units", "check-data", "--dataset", "digits", str(path)]) == 2
        assert capsys.readouterr().err == f"nasproxy: error: {sweep.value}\n"


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


# --- unpack into a store that holds the experiment already ---------------------------------


def _archive(tmp_path: Path, members: dict[str, bytes], name: str = "in.tar.gz") -> Path:
    """A tar.gz holding ``members`` (name -> bytes), in that order."""
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for member, blob in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the lock's included), by relative path."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _set_val(exp_dir: Path, train_set: str, arch: str, val: float, status: str = "ok") -> None:
    """Rewrite one stored unit with another validation accuracy and status."""
    path = results.unit_path(exp_dir, UnitKey(train_set, 0, arch))
    payload = json.loads(path.read_text())
    payload["row"].update(val_acc=val, status=status)
    path.write_text(json.dumps(payload) + "\n")


def test_unpack_refuses_while_a_driver_holds_the_experiment(tmp_path: Path) -> None:
    import os

    from nasproxy.search import lock

    src, dst = tmp_path / "src", tmp_path / "dst"
    _experiment(src, "exp", {("random", ARCHS[0].id): 1e9})
    archive = tmp_path / "units.tar.gz"
    units.pack(src, ["exp"], archive)
    _experiment(dst, "exp", {})
    holder = {  # a live driver on this host (this very process, under another token)
        "pid": os.getpid(),
        "host": "here",
        "host_id": lock.host_id(),
        "process_start": lock._process_start(os.getpid()),
        "started": "2026-01-01T00:00:00+00:00",
        "token": "another",
    }
    (dst / "exp" / results.LOCK).write_text(json.dumps(holder))
    before = _tree(dst)
    with pytest.raises(NasproxyError, match="'exp' is in use"):
        units.unpack(archive, dst)
    assert _tree(dst) == before


def test_unpack_never_replaces_a_stored_unit_unless_asked(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    both = {("random", ARCHS[0].id): 1e9, ("random", ARCHS[1].id): 1e9}
    _experiment(src, "exp", {**both, ("whole", ARCHS[0].id): 1e9})
    _set_val(src / "exp", "random", ARCHS[0].id, 0.503)
    archive = tmp_path / "units.tar.gz"
    units.pack(src, ["exp"], archive)
    stored = _experiment(dst, "exp", both)
    _set_val(stored, "random", ARCHS[0].id, 0.999)  # newer here than in the archive
    _set_val(stored, "random", ARCHS[1].id, 0.1, status="failed")  # to be retried
    before = _tree(dst)
    with pytest.raises(NasproxyError, match=f"units/random/s0/{ARCHS[0].id}.json") as exc:
        units.unpack(archive, dst)
    assert "\n" not in str(exc.value)
    assert _tree(dst) == before  # a refusal writes nothing

    # a stored failed unit is replaced (a resume would retrain it), an identical one kept
    _set_val(stored, "random", ARCHS[0].id, 0.503)
    assert units.unpack(archive, dst) == {"exp": 3}
    unit_files = {k: v for k, v in _files(src / "exp").items() if k != results.MANIFEST}
    assert unit_files.items() <= _files(dst / "exp").items()

    _set_val(stored, "random", ARCHS[0].id, 0.999)
    argv = ["units", "unpack", str(archive), "--results-dir", str(dst), "--replace"]
    assert cli.main(argv) == 0
    unpacked = results.read_unit(results.unit_path(stored, UnitKey("random", 0, ARCHS[0].id)))
    assert unpacked["val_acc"] == 0.503
    table = results.read_trials(stored)
    assert sorted(table["val_acc"]) == [0.5, 0.5, 0.503]


def test_unpack_merges_the_manifests_runs_and_sets(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    first = {"started": "2026-01-01T00:00:00+00:00", "wall_s": 10.0, "cluster": "cpu"}
    second = {"started": "2026-01-02T00:00:00+00:00", "wall_s": 20.0}
    gpu = {"started": "2026-01-03T00:00:00+00:00", "wall_s": 5.0, "cluster": "gpu"}
    stored = _experiment(dst, "exp", {("random", ARCHS[0].id): 1e9})
    manifest = results.read_manifest(stored)
    manifest["runs"] = [first, second]
    manifest["whole_top"] = {"k": 3}
    manifest["train_sets"]["random"]["archs"] = [ARCHS[0].id]
    results.write_manifest(stored, manifest)
    packed = _experiment(src, "exp", {("random", ARCHS[1].id): 1e9})
    other = results.read_manifest(packed)
    other["runs"] = [first, gpu]  # the archive's host resumed from the first run
    other["whole_top"] = {"k": 10}
    other["train_sets"]["random"]["archs"] = [ARCHS[1].id]
    other["train_sets"]["more"] = {"n_images": 10, "proxy_hash": "m", "archs": [ARCHS[1].id]}
    results.write_manifest(packed, other)
    archive = tmp_path / "units.tar.gz"
    units.pack(src, ["exp"], archive)

    assert units.unpack(archive, dst) == {"exp": 1}
    merged = results.read_manifest(stored)
    assert merged["runs"] == [first, second, gpu]
    assert merged["whole_top"] == {"k": 10}  # of the run that started last
    assert merged["sweep_wall_s"] == 35.0
    assert set(merged["train_sets"]) == {"random", "whole", "more"}
    assert sorted(merged["train_sets"]["random"]["archs"]) == sorted(a.id for a in ARCHS)
    assert merged["wall_s"]["random"] == 0.0 and "cpu; gpu" in merged["hardware"]
    assert len(results.read_trials(stored)) == 2


def _good(tmp_path: Path) -> dict[str, bytes]:
    """The members of a sound archive of one experiment with one unit."""
    src = tmp_path / "good"
    exp_dir = _experiment(src, "exp", {("random", ARCHS[0].id): 1e9})
    return {f"exp/{k}": v for k, v in _files(exp_dir).items()}


def _unit_of(members: dict[str, bytes]) -> tuple[str, dict]:
    name = next(k for k in members if "/units/" in k)
    return name, json.loads(members[name])


@pytest.mark.parametrize(
    "case",
    [
        "garbage manifest",
        "list manifest",
        "no manifest",
        "train_sets a list",
        "seeds a string",
        "archs not ids",
        "garbage unit",
        "unit of other epochs",
        "unit of an unknown set",
        "unit with a text accuracy",
        "unit at another path",
        "twice the same member",
        "hidden experiment name",
    ],
)
def test_unpack_checks_the_whole_archive_before_writing(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    members = _good(tmp_path)
    name, unit = _unit_of(members)
    manifest = json.loads(members["exp/manifest.json"])
    extra = {"exp/units/random/s0/zzz.json": b"{"} if case == "garbage unit" else {}
    if case == "garbage manifest":
        members["exp/manifest.json"] = b"{not json"
    elif case == "list manifest":
        members["exp/manifest.json"] = b"[1, 2]"
    elif case == "no manifest":
        del members["exp/manifest.json"]
    elif case == "train_sets a list":
        manifest["train_sets"] = ["random", "whole"]
    elif case == "seeds a string":
        manifest["protocol"]["seeds"] = "0"
    elif case == "archs not ids":
        manifest["archs"] = [1, 2]
    elif case == "unit of other epochs":
        unit["row"]["epochs"] = 5
    elif case == "unit of an unknown set":
        unit["row"]["train_set"] = "other"
        name = name.replace("/random/", "/other/")
    elif case == "unit with a text accuracy":
        unit["row"]["val_acc"] = "high"
    elif case == "unit at another path":
        name = name.replace("/s0/", "/s1/")
    if case not in ("garbage manifest", "list manifest", "no manifest"):
        if "exp/manifest.json" in members:
            members["exp/manifest.json"] = json.dumps(manifest).encode()
    members = {k: v for k, v in members.items() if "/units/" not in k}
    members[name] = json.dumps(unit).encode()
    members.update(extra)
    if case == "hidden experiment name":
        members = {"." + k: v for k, v in members.items()}
    archive = _archive(tmp_path, members)
    if case == "twice the same member":
        with tarfile.open(archive, "w:gz") as tar:  # the unit, then another one of its name
            for blob in (members[name], members[name].replace(b"0.5", b"0.7")):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            info = tarfile.TarInfo("exp/manifest.json")
            info.size = len(members["exp/manifest.json"])
            tar.addfile(info, io.BytesIO(members["exp/manifest.json"]))
    dst = tmp_path / "dst"
    assert cli.main(["units", "unpack", str(archive), "--results-dir", str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasproxy: error: ") and err.count("\n") == 1, err
    assert not dst.exists()  # nothing written, not even the experiment's folder


def test_unpack_refuses_a_manifest_unlike_the_stored_one(tmp_path: Path) -> None:
    members = _good(tmp_path)
    dst = tmp_path / "dst"
    stored = _experiment(dst, "exp", {("whole", ARCHS[1].id): 1e9})
    manifest = results.read_manifest(stored)
    manifest["protocol"]["epochs"] = 5
    results.write_manifest(stored, manifest)
    before = _tree(dst)
    with pytest.raises(NasproxyError, match="epochs 5, the archive's 3"):
        units.unpack(_archive(tmp_path, members), dst)
    assert _tree(dst) == before


def test_unpack_of_a_truncated_archive_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = _good(tmp_path)
    members["exp/units/random/s0/pad.json"] = bytes(range(256)) * 400  # does not compress
    blob = _archive(tmp_path, members).read_bytes()
    for cut in (len(blob) // 2, len(blob) - 30):
        torn = tmp_path / "torn.tar.gz"
        torn.write_bytes(blob[:cut])
        dst = tmp_path / "dst"
        assert cli.main(["units", "unpack", str(torn), "--results-dir", str(dst)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nasproxy: error: ") and err.count("\n") == 1, err
        assert not dst.exists()


def test_pack_checks_names_and_refuses_a_missing_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    results_dir = root / "results"
    _experiment(root, "outside", {("random", ARCHS[0].id): 1e9})
    _experiment(results_dir, "exp", {("random", ARCHS[0].id): 1e9})
    (results_dir / "empty").mkdir()
    archive = tmp_path / "units.tar.gz"
    for names, what in [
        (["exp", "../outside"], "bad experiment name '../outside'"),
        (["exp", "a/b"], "bad experiment name 'a/b'"),
        (["exp", "absent"], "no experiment 'absent'"),
        (["empty"], "no experiment 'empty'"),
    ]:
        argv = ["units", "pack", *names, "--results-dir", str(results_dir), "--out", str(archive)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nasproxy: error: {what}") and err.count("\n") == 1, err
        assert not archive.exists()


@pytest.mark.parametrize("where", ["a file", "a folder", "under a file", "unwritable"])
def test_pack_and_unpack_refuse_an_output_they_cannot_write(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    if where == "unwritable" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    src = tmp_path / "src"
    _experiment(src, "exp", {("random", ARCHS[0].id): 1e9})
    archive = tmp_path / "units.tar.gz"
    units.pack(src, ["exp"], archive)
    bad = tmp_path / "bad"
    if where == "a file":
        bad.write_text("x")
    elif where == "a folder":
        bad.mkdir()
    elif where == "under a file":
        bad.write_text("x")
        bad = bad / "deeper"
    else:
        bad.mkdir()
        bad.chmod(0o500)
    pack = ["units", "pack", "exp", "--results-dir", str(src), "--out"]
    if where == "a folder":  # an archive there is fine, the folder itself is no archive
        runs = [[*pack, str(bad)]]
    else:  # inside (or in place of) a file or an unwritable folder: neither writes
        runs = [
            [*pack, str(bad / "u.tar.gz")],
            ["units", "unpack", str(archive), "--results-dir", str(bad)],
        ]
    if where == "under a file":
        runs.append([*pack, str(bad)])
    try:
        for argv in runs:
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("nasproxy: error: ") and err.count("\n") == 1, err
        assert where != "a folder" or not any(bad.iterdir())
    finally:
        if where == "unwritable":
            bad.chmod(0o700)
