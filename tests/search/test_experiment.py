"""nasproxy.search.experiment: an experiment's manifest across runs: rebuilt from the unit
files, grown by a training set, proxy hashes old and new, stray units, run numbers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from nasproxy import results, spaces
from nasproxy.errors import NasproxyError
from nasproxy.proxies.build import write_proxy
from nasproxy.proxies.proxy_file import default_proxy_path, selection_hash
from nasproxy.report import make_report
from nasproxy.search import resolve_train_sets, run_search
from nasproxy.search.experiment import RAY_DIR, build_manifest, next_run_number
from nasproxy.train import TrainConfig
from tests.search.conftest import _config, _proxy, _units


def test_run_numbers_ignore_folders_that_only_look_numbered(tmp_path):
    for name in ("run-002", "run-\u00b2\u00b2\u00b2", "run-abc", "other"):
        (tmp_path / RAY_DIR / name).mkdir(parents=True)
    assert next_run_number(tmp_path) == 3


@pytest.mark.parametrize(
    "source", ["cifar10-jpeg.tgz", "cifar10-jpeg.tar.gz", "cifar10-jpeg.tar", "cifar10-jpeg/"]
)
def test_the_manifest_names_the_dataset_as_the_proxy_files_do(inputs, digits, tmp_path, source):
    """An ImageFolder archive is named without its suffix, whichever it is, in the manifest
    as in the default proxy file's name."""
    data = replace(digits, spec=f"imagefolder:/d/{source}")
    space = spaces.load(inputs["space"])
    train_sets = resolve_train_sets((), True, data)
    cfg = _config(inputs, tmp_path, "named", proxies=())
    manifest = build_manifest(cfg, data, space, {"whole": list(space)}, train_sets, None)
    assert manifest["dataset_name"] == "cifar10-jpeg"
    path = default_proxy_path(data.spec, "random", 100, 0)
    assert path.name == "cifar10-jpeg-random-100-s0.json"


@pytest.mark.slow
def test_a_damaged_or_missing_manifest_is_rebuilt_from_the_unit_files(cluster, inputs, tmp_path):
    cfg = _config(
        inputs, tmp_path, "rebuild", proxies=(str(inputs["proxies"][0]),), archs=("w8-d1-relu-*",)
    )
    exp_dir = run_search(cfg)
    original = results.read_manifest(exp_dir)
    units = _units(exp_dir)
    assert len(units) == 4

    for damage in ("torn", "missing"):
        manifest = exp_dir / results.MANIFEST
        if damage == "torn":
            manifest.write_text(manifest.read_text()[:40])
        else:
            manifest.unlink()
        with pytest.raises(NasproxyError, match="--rebuild-manifest"):
            run_search(cfg)
        wrong = replace(cfg, rebuild_manifest=True, train=TrainConfig(epochs=2))
        with pytest.raises(NasproxyError, match="has 1 epochs, this command gives 2"):
            run_search(wrong)
        lacking = replace(cfg, rebuild_manifest=True, whole=False)
        with pytest.raises(NasproxyError, match="training set 'whole', which this command lacks"):
            run_search(lacking)
        events = []
        run_search(replace(cfg, rebuild_manifest=True), progress=events.append)
        assert [e.row for e in events if e.row is not None] == []  # nothing retrained
        assert _units(exp_dir) == units
        rebuilt = results.read_manifest(exp_dir)
        for key in ("archs", "train_sets", "protocol", "fingerprint", "space", "wall_s"):
            assert rebuilt[key] == original[key], key
        assert rebuilt["rebuilt"]
    run_search(cfg)  # and the rebuilt manifest is accepted like the original


@pytest.mark.slow
def test_adding_a_proxy_trains_only_its_units_and_keeps_every_stored_one(
    cluster, inputs, digits, tmp_path
):
    random_proxy, herding_proxy = (str(p) for p in inputs["proxies"])
    first = _config(inputs, tmp_path, "grow", proxies=(random_proxy,), seeds=(0, 1))
    exp_dir = run_search(first)
    stored = {p: p.read_bytes() for p in _units(exp_dir)}
    assert len(stored) == 6 * 2 * 2  # archs x seeds x (random, whole)

    events = []
    grown = replace(first, proxies=(random_proxy, herding_proxy))
    run_search(grown, progress=events.append)
    trained = [e.row for e in events if e.row is not None]
    assert len(trained) == 6 * 2 and {r["train_set"] for r in trained} == {"herding"}
    assert all(p.read_bytes() == blob for p, blob in stored.items())  # byte-identical
    manifest = results.read_manifest(exp_dir)
    assert set(manifest["train_sets"]) == {"random", "herding", "whole"}
    table = results.read_trials(exp_dir)
    assert len(table) == 36 and not table.duplicated(["arch", "train_set", "seed"]).any()
    report = make_report(exp_dir, top_k=3, n_boot=10)
    assert set(report.table["train_set"]) == {"random", "herding", "whole"}

    # a changed proxy under a stored name is refused; so is a run that drops a stored set
    labels = digits.y_train.numpy()
    changed = tmp_path / "changed.json"
    indices = {
        name: [int(i) for i in np.flatnonzero(labels == c)[:10]]
        for c, name in enumerate(digits.classes)
    }
    write_proxy(_proxy("random", digits, indices), changed)
    with pytest.raises(NasproxyError, match="training set 'random'") as info:
        run_search(replace(grown, proxies=(f"random={changed}", herding_proxy)))
    assert "\n" not in str(info.value)
    with pytest.raises(NasproxyError, match=r"lacks \['herding'\]"):
        run_search(first)
    assert all(p.read_bytes() == blob for p, blob in stored.items())


def test_a_proxy_rebuilt_or_rewritten_resumes_and_a_changed_one_names_the_field(
    cluster, inputs, digits, tmp_path
):
    """The proxy hash covers what defines the selection, not when it was built or the JSON
    layout; an experiment of an older nasproxy (whole-file hashes) still resumes."""
    proxy = tmp_path / "random.json"
    record = json.loads(inputs["proxies"][0].read_text())
    proxy.write_text(json.dumps({**record, "created": "then", "timings": {"total_s": 1.0}}))
    cfg = _config(inputs, tmp_path, "rehash", proxies=(str(proxy),), whole=False,
                  archs=("w8-d1-relu-*",))  # fmt: skip
    exp_dir = run_search(cfg)
    units = _units(exp_dir)
    assert len(units) == 2

    # rebuilt by the same command (other time stamps), written with another layout
    proxy.write_text(
        json.dumps({**record, "created": "now", "timings": {"total_s": 2.0}}, indent=4)
    )
    events = []
    run_search(cfg, progress=events.append)
    assert not [e for e in events if e.row is not None] and _units(exp_dir) == units

    # really changed: refused, naming what changed
    changed = json.loads(json.dumps(record))
    first_class = next(iter(changed["indices"]))
    labels = digits.y_train.numpy()
    members = set(changed["indices"][first_class])
    spare = next(int(i) for i in np.flatnonzero(labels == 0) if int(i) not in members)
    changed["indices"][first_class] = sorted([*list(members)[1:], spare])
    proxy.write_text(json.dumps(changed))
    with pytest.raises(NasproxyError, match=r"its proxy's indices changed") as info:
        run_search(cfg)
    assert "\n" not in str(info.value) and "'random'" in str(info.value)
    changed = {**record, "params": {"solver": "other"}}
    proxy.write_text(json.dumps(changed))
    with pytest.raises(NasproxyError, match=r"its proxy's params changed"):
        run_search(cfg)

    # an experiment stored by an older nasproxy: proxy hash = the file's sha256[:12]
    proxy.write_text(json.dumps(record))
    old_hash = hashlib.sha256(proxy.read_bytes()).hexdigest()[:12]
    manifest = results.read_manifest(exp_dir)
    entry = manifest["train_sets"]["random"]
    entry["proxy_hash"] = old_hash
    del entry["selection"]
    results.write_manifest(exp_dir, manifest)
    for path in units:
        unit = json.loads(path.read_text())
        unit["row"]["proxy_hash"] = old_hash
        path.write_text(json.dumps(unit))
    events = []
    run_search(cfg, progress=events.append)
    assert not [e for e in events if e.row is not None]
    entry = results.read_manifest(exp_dir)["train_sets"]["random"]
    assert entry["proxy_hash"] == selection_hash(record) and entry["legacy_hashes"] == [old_hash]
    run_search(cfg)  # and again, now under the new hash
    (exp_dir / results.MANIFEST).unlink()
    run_search(replace(cfg, rebuild_manifest=True))  # its old units fit a rebuilt manifest
    entry = results.read_manifest(exp_dir)["train_sets"]["random"]
    assert entry["legacy_hashes"] == [old_hash]


@pytest.mark.slow
def test_rebuild_manifest_leaves_an_intact_one_and_a_stray_unit_is_named(cluster, inputs, tmp_path):
    """--rebuild-manifest on an intact manifest changes nothing of the protocol or history;
    a unit file of another protocol dropped into the store is refused, by its path, on a
    resume and on a rebuild (not blamed on the command)."""
    cfg = _config(inputs, tmp_path, "intact", proxies=(str(inputs["proxies"][0]),),
                  whole=False, archs=("w8-d1-relu-*",))  # fmt: skip
    exp_dir = run_search(cfg)
    manifest = (exp_dir / results.MANIFEST).read_bytes()
    units = _units(exp_dir)
    assert len(units) == 2
    with pytest.raises(
        NasproxyError, match="was run with seeds \\[0\\], this run asks for \\[5\\]"
    ):
        run_search(replace(cfg, seeds=(5,), rebuild_manifest=True))
    assert (exp_dir / results.MANIFEST).read_bytes() == manifest and _units(exp_dir) == units
    events = []
    run_search(replace(cfg, rebuild_manifest=True), progress=events.append)
    assert not [e for e in events if e.row is not None]
    kept = results.read_manifest(exp_dir)
    assert len(kept["runs"]) == 2 and "rebuilt" not in kept  # the history goes on

    # a unit trained for 5 epochs, dropped in as if it belonged here
    space = spaces.load(inputs["space"], image_size=8)
    other = next(a for a in space.ids if not a.startswith("w8-d1-relu"))
    row = results.read_unit(next(iter(units)))
    stray_row = {**row, "arch": other, "epochs": 5, **_fields(other)}
    stray = results.write_unit(exp_dir, stray_row)
    name = str(stray.relative_to(exp_dir))
    with pytest.raises(NasproxyError, match=f"unit file {name} in .* has 5 epochs") as info:
        run_search(cfg)
    assert "\n" not in str(info.value)
    (exp_dir / results.MANIFEST).unlink()
    with pytest.raises(NasproxyError, match=f"unit file {name} has 5 epochs.*unlike the other 2"):
        run_search(replace(cfg, rebuild_manifest=True))
    stray.unlink()
    run_search(replace(cfg, rebuild_manifest=True))
    assert len(results.read_trials(exp_dir)) == 2

    # a damaged unit trains again, and the run says so
    torn = next(iter(units))
    torn.write_text(torn.read_text()[:30])
    events = []
    run_search(cfg, progress=events.append)
    said = [e.message for e in events if "is damaged" in e.message]
    assert said == [
        f"unit file {torn} is damaged or misplaced; it is ignored, and its unit trains again"
    ]
    assert [results.row_key(e.row) for e in events if e.row is not None] == [results.row_key(row)]


def _fields(arch_id: str) -> dict:
    arch = spaces.Arch.from_id(arch_id)
    return {"width": arch.width, "depth": arch.depth, "act": arch.act, "norm": arch.norm,
            "pool": arch.pool}  # fmt: skip


def test_a_manifest_from_before_nesterov_compares_equal_to_it_off():
    """An experiment recorded before the protocol had ``nesterov`` ran without it: it
    resumes under nesterov=False, and nesterov=True is a change of protocol."""
    from nasproxy.search.experiment import _refuse_different, protocol_checks

    new = {"protocol": {"epochs": 3, "lr": 0.1, "nesterov": False}, "train_sets": {}}
    old = {"protocol": {"epochs": 3, "lr": 0.1}, "train_sets": {}}
    assert all(before == now for _, before, now in protocol_checks(old, new))
    _refuse_different("e", old, new)  # no error
    turned_on = {**new, "protocol": {**new["protocol"], "nesterov": True}}
    with pytest.raises(NasproxyError, match="nesterov False, this run asks for True"):
        _refuse_different("e", old, turned_on)


def test_checkpoints_are_no_part_of_the_protocol_and_old_units_resume(inputs, tmp_path):
    """Units record their checkpoints (the final one their val_acc); the setting is not in
    the manifest's protocol, so an experiment of an older nasproxy (unit files without the
    column) resumes under any setting without training again, and reports."""
    cfg = _config(inputs, tmp_path, "ckpt", proxies=(str(inputs["proxies"][0]),),
                  archs=("w8-d1-relu-*",), runner="local", train=TrainConfig(epochs=3))  # fmt: skip
    exp_dir = run_search(cfg)
    table = results.read_trials(exp_dir)
    assert len(table) == 4
    for row in table.to_dict("records"):
        accs = results.checkpoint_accs(row["val_checkpoints"])
        assert list(accs) == [1, 3] and accs[3] == row["val_acc"]  # 3/9, 3/27 round to 1
    manifest = results.read_manifest(exp_dir)
    assert "checkpoints" not in manifest["protocol"]

    units = _units(exp_dir)
    for path in units:  # as an older nasproxy wrote them
        unit = json.loads(path.read_text())
        del unit["row"]["val_checkpoints"]
        path.write_text(json.dumps(unit))
    older = _units(exp_dir)
    for setting in ("none", "4", "2,"):
        events = []
        again = replace(cfg, train=replace(cfg.train, checkpoints=setting))
        run_search(again, progress=events.append)
        assert not [e for e in events if e.row is not None] and _units(exp_dir) == older
    table = results.read_trials(exp_dir)
    assert table["val_checkpoints"].tolist() == [""] * 4
    assert make_report(exp_dir, top_k=1, n_boot=10).table is not None
