"""``nasproxy reference import-nats`` on a tiny benchmark directory that the test writes in
NATS-Bench's own on-disk format, with the official package's own classes and writer, and
that the import loads through ``nats_bench.create``: it yields the accuracies put into it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nasproxy import cli, natsbench
from nasproxy.errors import NasproxyError
from nasproxy.reference import read_reference

nats_bench = pytest.importorskip("nats_bench")

CELLS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
]
SEEDS = (777, 888)
# the benchmark's evaluation sets of each of its training runs
SETS = {
    "cifar10-valid": ("x-valid", "ori-test"),
    "cifar10": ("ori-test",),
    "cifar100": ("x-valid", "x-test", "ori-test"),
}


def accuracy(cell: int, hp: str, dataset: str, setname: str, seed: int) -> float:
    """The made-up final accuracy (percent) of one run and evaluation set: distinct for
    every argument, so that a wrong set, schedule, seed or cell gives another number."""
    sets = ("x-valid", "ori-test", "x-test")
    return (
        40.0
        + 10.0 * cell
        + (5.0 if hp == "200" else 0.0)
        + 2.0 * list(SETS).index(dataset)
        + 0.5 * sets.index(setname)
        + 0.25 * SEEDS.index(seed)
    )


def run_result(cell: int, hp: str, dataset: str, seed: int) -> object:
    """One training run of the benchmark (its ``ResultsCount``), every epoch recorded."""
    epochs = int(hp)
    result = nats_bench.ResultsCount(
        dataset,
        None,
        {e: 10.0 + e * 0.1 for e in range(epochs)},
        {e: 2.0 - e * 0.001 for e in range(epochs)},
        0.1 + cell,
        10.0 + cell,
        {"name": "infer.tiny", "C": 16, "N": 5, "arch_str": CELLS[cell], "class_num": 10},
        seed,
        epochs,
        [0.01],
    )
    accs, losses, times = {}, {}, {}
    for setname in SETS[dataset]:
        final = accuracy(cell, hp, dataset, setname, seed)
        for e in range(epochs):
            key = f"{setname}@{e}"
            # earlier epochs lower, so that a result read at the wrong epoch differs
            accs[key] = final - (epochs - 1 - e) * 0.01
            losses[key], times[key] = 1.0, 0.5
    result.update_eval(accs, losses, times)
    return result


def write_benchmark(folder: Path) -> Path:
    """A NATS-Bench topology directory (``fast_mode=True`` layout): ``meta.pickle.pbz2``
    with the cell strings, one ``NNNNNN.pickle.pbz2`` per cell keyed by schedule."""
    folder.mkdir(parents=True)
    meta = {"meta_archs": list(CELLS), "arch2infos": {}, "evaluated_indexes": []}
    nats_bench.pickle_save(meta, str(folder / "meta.pickle"))
    for cell, arch in enumerate(CELLS):
        by_hp = {}
        for hp in ("12", "200"):
            results = nats_bench.ArchResults(cell, arch)
            for dataset in SETS:
                for seed in SEEDS:
                    results.update(dataset, seed, run_result(cell, hp, dataset, seed))
            by_hp[hp] = results.state_dict()
        nats_bench.pickle_save(by_hp, str(folder / f"{cell:06d}.pickle"))
    return folder


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark(tmp_path_factory.mktemp("nats") / "NATS-tss-v1_0-3ffb9-simple")


def mean_pct(cell: int, hp: str, dataset: str, setname: str) -> float:
    return sum(accuracy(cell, hp, dataset, setname, s) for s in SEEDS) / len(SEEDS) / 100


def test_the_fixture_is_the_packages_own_format(benchmark: Path) -> None:
    api = nats_bench.create(str(benchmark), "tss", fast_mode=True, verbose=False)
    assert len(api) == len(CELLS)
    info = api.get_more_info(1, "cifar10-valid", hp="200", is_random=777)
    assert info["valid-accuracy"] == accuracy(1, "200", "cifar10-valid", "x-valid", 777)


@pytest.mark.parametrize("epochs", [200, 12])
def test_import_yields_the_accuracies_put_in(benchmark: Path, tmp_path: Path, epochs: int) -> None:
    out = tmp_path / "ref.csv"
    code = cli.main(
        [
            "reference",
            "import-nats",
            str(benchmark),
            "--dataset",
            "cifar10",
            "--epochs",
            str(epochs),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    ref = read_reference(out)
    hp = str(epochs)
    assert ref.protocol["dataset"] == "cifar10" and ref.protocol["epochs"] == hp
    assert "NATS-Bench" in ref.protocol["source"]
    assert list(ref.val) == CELLS
    for cell, arch in enumerate(CELLS):
        assert ref.val[arch] == pytest.approx(mean_pct(cell, hp, "cifar10-valid", "x-valid"))
        assert ref.test[arch] == pytest.approx(mean_pct(cell, hp, "cifar10", "ori-test"))


def test_cifar100_reads_its_own_halves(benchmark: Path, tmp_path: Path) -> None:
    rows = natsbench.read_nats(benchmark, "cifar100", 200)
    assert [r["index"] for r in rows] == [0, 1, 2]
    for cell, row in enumerate(rows):
        assert row["val_acc"] == pytest.approx(mean_pct(cell, "200", "cifar100", "x-valid"))
        assert row["test_acc"] == pytest.approx(mean_pct(cell, "200", "cifar100", "x-test"))


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nasproxy: error: ")
    return err


def test_a_directory_the_package_cannot_read_is_refused(
    benchmark: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ref.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "cannot read" in refused(
        [
            "reference",
            "import-nats",
            str(empty),
            "--dataset",
            "cifar10",
            "--epochs",
            "200",
            "-o",
            str(out),
        ],
        capsys,
    )
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "meta.pickle.pbz2").write_bytes((benchmark / "meta.pickle.pbz2").read_bytes())
    (damaged / "000000.pickle.pbz2").write_bytes(b"not bz2")  # and no file for cells 1, 2
    assert "cannot read architecture 0" in refused(
        [
            "reference",
            "import-nats",
            str(damaged),
            "--dataset",
            "cifar10",
            "--epochs",
            "200",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert "no 90-epoch results" in refused(
        [
            "reference",
            "import-nats",
            str(benchmark),
            "--dataset",
            "cifar10",
            "--epochs",
            "90",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_the_missing_extra_names_it(
    benchmark: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nats_bench", None)  # import nats_bench -> ImportError
    with pytest.raises(NasproxyError, match=r"pip install 'nasproxy\[nats\]'"):
        natsbench.import_nats(benchmark, "cifar10", 200, tmp_path / "ref.csv")
    assert not (tmp_path / "ref.csv").exists()


def test_a_dataset_the_benchmark_does_not_publish_is_refused(benchmark: Path) -> None:
    with pytest.raises(NasproxyError, match="use cifar10 or cifar100"):
        natsbench.read_nats(benchmark, "digits", 200)
