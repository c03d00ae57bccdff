"""make_report on synthetic experiment directories written per the results-store schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nasproxy.errors import NasproxyError
from nasproxy.report import TABLE_COLUMNS, format_summary, make_report

ARCHS = [f"w{w}-d{d}-relu-instancenorm-avgpooling" for w in (32, 64, 128) for d in (1, 2, 3, 4)]
SEEDS = [0, 1]


def _trials(train_set: str, val: np.ndarray, test: np.ndarray, wall: float) -> list[dict]:
    """Rows of one train set; ``val``/``test`` broadcast to (seeds, archs)."""
    val = np.broadcast_to(val, (len(SEEDS), len(ARCHS)))
    test = np.broadcast_to(test, (len(SEEDS), len(ARCHS)))
    rows = []
    for si, seed in enumerate(SEEDS):
        for ai, arch in enumerate(ARCHS):
            rows.append(
                {
                    "arch": arch,
                    "width": int(arch.split("-")[0][1:]),
                    "depth": int(arch.split("-")[1][1:]),
                    "act": "relu",
                    "norm": "instancenorm",
                    "pool": "avgpooling",
                    "train_set": train_set,
                    "proxy_hash": "" if train_set == "whole" else f"hash-{train_set}",
                    "seed": seed,
                    "epochs": 2,
                    "val_acc": float(val[si, ai]),
                    "test_acc": float(test[si, ai]),
                    "train_loss": 0.5,
                    "status": "ok",
                    "reason": "",
                    "wall_s": wall,
                    "images_seen": 200,
                    "n_train": 1000 if train_set == "whole" else 100,
                    "device": "cpu",
                }
            )
    return rows


def _write_experiment(exp: Path, trials: pd.DataFrame, names: list[str]) -> Path:
    exp.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(exp / "trials.parquet", index=False)
    train_sets = {
        n: {
            "proxy_path": None if n == "whole" else f"proxies/{n}.json",
            "proxy_hash": "" if n == "whole" else f"hash-{n}",
            "n_images": 1000 if n == "whole" else 100,
            "bytes": 64_000 if n == "whole" else 6_400,
            "epsilon": None if n == "whole" else 0.25 * (i + 1),
        }
        for i, n in enumerate(names)
    }
    manifest = {
        "dataset": "digits",
        "dataset_name": "digits",
        "fingerprint": "fp_1234abcd",
        "space": "convnet720",
        "space_size": 720,
        "archs": ARCHS,
        "protocol": {"epochs": 2, "seeds": SEEDS, "batch_size": 64, "lr": 0.01},
        "train_sets": train_sets,
        "hardware": "test-cpu",
        "nasproxy_version": "0.1.0",
        "git_commit": "abc1234",
        "wall_s": {"whole": 99.0},
        "created": "2024-01-01T00:00:00",
    }
    (exp / "manifest.json").write_text(json.dumps(manifest))
    return exp


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#").set_index("train_set")


# ------------------------------------------------ controlled accuracies, known answers


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory):
    base = np.linspace(0.5, 0.9, len(ARCHS))[[3, 0, 7, 1, 11, 5, 2, 9, 4, 10, 6, 8]]
    shift = np.array(SEEDS, dtype=float)[:, None] * 0.01  # per-seed offset, same ranking
    whole_val = base + shift
    rows = _trials("whole", whole_val, whole_val + 0.02, wall=10.0)
    # influence: a monotone transform of the whole-set accuracy; random: reversed;
    # herding: constant (no ranking at all)
    rows += _trials("influence", 0.5 * base**2 + shift, base**2, wall=1.0)
    rows += _trials("random", 1.0 - base + shift, 1.0 - base, wall=1.0)
    rows += _trials("herding", np.full_like(whole_val, 0.3), np.full_like(whole_val, 0.3), 1.0)
    exp = _write_experiment(
        tmp_path_factory.mktemp("ctl") / "exp",
        pd.DataFrame(rows),
        ["random", "herding", "influence", "whole"],
    )
    return exp, base, make_report(exp, top_k=10, n_boot=50, seed=0)


def test_all_files_written(controlled) -> None:
    exp, _, res = controlled
    for name in ("table1.md", "table1.csv", "table1.tex", "table1_seeds.csv"):
        assert (exp / name).is_file()
        assert res.paths  # every written path is reported
    pngs = [p for p in res.paths.values() if p.suffix == ".png"]
    assert len(pngs) == 3
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(res.paths.values()) >= {exp / "table1.md", exp / "table1.csv", exp / "table1.tex"}


def test_known_answers(controlled) -> None:
    exp, base, _ = controlled
    t = _read_csv(exp / "table1.csv")
    whole_test = base + 0.02 + 0.005  # mean over the two seed offsets 0 and 0.01
    top10 = np.sort(whole_test)[-10:].mean()
    inf, rnd, whole = t.loc["influence"], t.loc["random"], t.loc["whole"]
    for col in ("spearman_topk", "spearman_all", "kendall_all"):
        assert inf[col] == pytest.approx(1.0)
        assert rnd[col] == pytest.approx(-1.0)
        assert whole[col] == pytest.approx(1.0)  # the reference against itself
    assert inf["regret"] == pytest.approx(0.0)
    assert inf["perf_topk"] == pytest.approx(top10)
    assert whole["perf_topk"] == pytest.approx(top10)
    assert rnd["regret"] == pytest.approx(whole_test.max() - whole_test.min())
    assert rnd["perf_topk"] == pytest.approx(np.sort(whole_test)[:10].mean())
    assert inf["perf_topk_std"] == pytest.approx(0.0)  # both seeds rank alike
    assert inf["n_seeds"] == 2 and whole["n_seeds"] == 2 and inf["n_archs"] == 12
    assert inf["epsilon"] == pytest.approx(0.75) and np.isnan(whole["epsilon"])
    assert inf["n_images"] == 100 and whole["bytes"] == 64_000
    assert inf["train_s"] == pytest.approx(24.0) and whole["train_s"] == pytest.approx(240.0)
    assert whole["sweep_wall_s"] == 99.0 and np.isnan(inf["sweep_wall_s"])
    assert (t["trials_expected"] == 24).all() and (t["trials_missing"] == 0).all()


def test_constant_proxy_reports_nan(controlled) -> None:
    exp, _, _ = controlled
    t = _read_csv(exp / "table1.csv")
    assert np.isnan(t.loc["herding", "spearman_all"])
    assert np.isnan(t.loc["herding", "kendall_all"])
    row = next(
        ln for ln in (exp / "table1.md").read_text().splitlines() if ln.startswith("| herding |")
    )
    assert "n/a" in row


def test_markdown_has_protocol_and_one_row_per_train_set(controlled) -> None:
    exp, _, res = controlled
    md = (exp / "table1.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")]
    assert rows == ["Train set", "random", "herding", "influence", "whole"]
    for needle in (
        "fp_1234abcd",
        "convnet720: 12 architectures swept of 720",
        "test-cpu",
        "abc1234",
        "seeds**: 0, 1",
        "epochs**: 2",
    ):
        assert needle in md
    assert list(res.table.columns) == list(TABLE_COLUMNS)


def test_csv_header_and_tex_caption_carry_the_conditions(controlled) -> None:
    exp, _, _ = controlled
    head = [ln for ln in (exp / "table1.csv").read_text().splitlines() if ln.startswith("#")]
    assert any("fp_1234abcd" in ln for ln in head)
    assert any("abc1234" in ln for ln in head)
    tex = (exp / "table1.tex").read_text()
    caption = next(ln for ln in tex.splitlines() if ln.startswith("\\caption{"))
    assert "fp\\_1234abcd" in caption and "test-cpu" in caption
    for name in ("random", "herding", "influence", "whole"):
        assert f"\n{name} & " in tex


def test_format_summary(controlled) -> None:
    exp, _, res = controlled
    text = format_summary(res)
    assert str(exp) in text and "table1.md" in text and "table1.csv" in text
    for name in ("random", "herding", "influence", "whole"):
        assert f"\n{name} " in text


# ------------------------------------------------ noisy partial sweep, recomputed here


def _independent_table(trials: pd.DataFrame, k: int) -> dict[str, dict[str, float]]:
    """Table 1 recomputed straight from the trials with pandas and scipy."""
    ok = trials[trials["status"] == "ok"]
    ref = (
        ok[ok["train_set"] == "whole"]
        .groupby("arch")[["val_acc", "test_acc"]]
        .mean()
        .rename(columns={"val_acc": "ref_val", "test_acc": "ref_test"})
        .dropna()
    )
    out = {}
    for name, g in ok[ok["train_set"] != "whole"].groupby("train_set"):
        per_seed = []
        for _, gs in g.groupby("seed"):
            m = gs.set_index("arch")[["val_acc"]].join(ref, how="inner").dropna()
            m = m.sort_values("val_acc", ascending=False)
            top = m.head(k)
            per_seed.append(
                {
                    "perf_topk": top["ref_test"].mean(),
                    "top1_test": top["ref_test"].iloc[0],
                    "regret": ref["ref_test"].max() - top["ref_test"].iloc[0],
                    "spearman_topk": stats.spearmanr(top["val_acc"], top["ref_val"]).statistic,
                    "spearman_all": stats.spearmanr(m["val_acc"], m["ref_val"]).statistic,
                    "kendall_all": stats.kendalltau(m["val_acc"], m["ref_val"]).statistic,
                    "n": len(m),
                }
            )
        df = pd.DataFrame(per_seed)
        out[name] = {c: df[c].mean() for c in df.columns} | {
            f"{c}_std": df[c].std(ddof=1) for c in df.columns
        }
    return out


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(11)
    quality = rng.random(len(ARCHS))
    whole_val = 0.6 + 0.3 * quality + rng.normal(0, 0.03, (2, len(ARCHS)))
    whole_test = whole_val + rng.normal(0, 0.01, whole_val.shape)
    rows = _trials("whole", whole_val, whole_test, wall=8.0)
    for name, noise in (("random", 0.2), ("influence", 0.05)):
        val = 0.3 + 0.2 * quality + rng.normal(0, noise, whole_val.shape)
        rows += _trials(name, val, val, wall=1.5)
    trials = pd.DataFrame(rows)
    drop = (
        # whole: both seeds of arch 0 missing -> proxies are scored on the other 11
        ((trials["train_set"] == "whole") & (trials["arch"] == ARCHS[0]))
        # random: three trials missing
        | (
            (trials["train_set"] == "random")
            & (trials["seed"] == 1)
            & trials["arch"].isin(ARCHS[5:8])
        )
    )
    trials = trials[~drop].reset_index(drop=True)
    failed = (
        (trials["train_set"] == "influence")
        & trials["arch"].isin(ARCHS[1:3])
        & (trials["seed"] == 0)
    )
    trials.loc[failed, ["status", "reason", "val_acc", "test_acc"]] = [
        "diverged",
        "nan loss",
        np.nan,
        np.nan,
    ]
    exp = _write_experiment(
        tmp_path_factory.mktemp("partial") / "exp", trials, ["random", "influence", "whole"]
    )
    return exp, trials, make_report(exp, top_k=5, n_boot=100, seed=3)


def test_numbers_recompute_from_trials(partial) -> None:
    exp, trials, _ = partial
    t = _read_csv(exp / "table1.csv")
    ref = _independent_table(pd.read_parquet(exp / "trials.parquet"), k=5)
    assert set(ref) == {"random", "influence"}
    for name, expect in ref.items():
        for col in (
            "perf_topk",
            "top1_test",
            "regret",
            "spearman_topk",
            "spearman_all",
            "kendall_all",
        ):
            assert t.loc[name, col] == pytest.approx(expect[col], abs=1e-12), (name, col)
            assert t.loc[name, f"{col}_std"] == pytest.approx(expect[f"{col}_std"], abs=1e-12)
        for col in ("spearman_topk", "spearman_all", "kendall_all"):
            assert t.loc[name, f"{col}_lo"] <= t.loc[name, f"{col}_hi"]
    assert t.loc["whole", "spearman_all"] == pytest.approx(1.0)
    assert t.loc["influence", "n_archs"] == 11 and t.loc["random", "n_archs"] == 11
    # training time counts every trial, failed ones included
    assert t.loc["influence", "train_s"] == pytest.approx(1.5 * 24)


def test_per_seed_file_recomputes(partial) -> None:
    exp, trials, _ = partial
    seeds = pd.read_csv(exp / "table1_seeds.csv", comment="#")
    assert sorted(zip(seeds["train_set"], seeds["seed"], strict=True)) == [
        ("influence", 0),
        ("influence", 1),
        ("random", 0),
        ("random", 1),
    ]
    row = seeds[(seeds["train_set"] == "random") & (seeds["seed"] == 1)].iloc[0]
    assert row["n_archs"] == 8  # 12 archs, minus 3 missing proxy trials, minus 1 without whole
    g = trials[
        (trials["train_set"] == "random") & (trials["seed"] == 1) & (trials["arch"] != ARCHS[0])
    ]
    assert row["top1_arch"] == g.sort_values("val_acc", ascending=False)["arch"].iloc[0]


def test_partial_sweep_is_reported(partial) -> None:
    exp, _, res = partial
    t = _read_csv(exp / "table1.csv")
    assert t.loc["whole", "trials_missing"] == 2 and t.loc["whole", "trials_present"] == 22
    assert t.loc["random", "trials_missing"] == 3 and t.loc["random", "trials_present"] == 21
    assert t.loc["influence", "trials_missing"] == 0 and t.loc["influence", "trials_not_ok"] == 2
    md = (exp / "table1.md").read_text()
    assert "random: 21/24 trials; 3 missing" in md
    assert "whole: 22/24 trials; 2 missing" in md
    assert "influence: 24/24 trials; 2 not ok" in md
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "| 21/24 (3 missing) |" in rows["random"]
    assert "| 24/24 (2 not ok) |" in rows["influence"]
    assert any("3 missing" in n for n in res.notes)


def test_report_is_deterministic(partial, tmp_path: Path) -> None:
    exp, trials, _ = partial
    again = _write_experiment(tmp_path / "exp", trials, ["random", "influence", "whole"])
    make_report(again, top_k=5, n_boot=100, seed=3)
    strip = [ln for ln in (exp / "table1.csv").read_text().splitlines() if "experiment:" not in ln]
    strip2 = [
        ln for ln in (again / "table1.csv").read_text().splitlines() if "experiment:" not in ln
    ]
    assert strip == strip2


def test_trials_csv_is_read_when_parquet_is_absent(partial, tmp_path: Path) -> None:
    exp, trials, _ = partial
    other = _write_experiment(tmp_path / "exp", trials, ["random", "influence", "whole"])
    (other / "trials.parquet").unlink()
    trials.to_csv(other / "trials.csv", index=False)
    res = make_report(other, top_k=5, n_boot=100, seed=3)
    expect = _read_csv(exp / "table1.csv")
    got = res.table.set_index("train_set")
    assert got["perf_topk"].to_numpy() == pytest.approx(expect["perf_topk"].to_numpy(), nan_ok=True)
    assert got["trials_missing"].tolist() == expect["trials_missing"].tolist()


# ------------------------------------------------ user mistakes


def test_missing_or_malformed_inputs_raise(tmp_path: Path, partial) -> None:
    _, trials, _ = partial
    with pytest.raises(NasproxyError, match="does not exist"):
        make_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NasproxyError, match="manifest.json"):
        make_report(empty)

    exp = _write_experiment(tmp_path / "a", trials, ["random", "influence", "whole"])
    (exp / "trials.parquet").unlink()
    with pytest.raises(NasproxyError, match="trials.parquet"):
        make_report(exp)

    exp = _write_experiment(tmp_path / "b", trials.drop(columns=["val_acc"]), ["whole"])
    with pytest.raises(NasproxyError, match="val_acc"):
        make_report(exp)

    exp = _write_experiment(tmp_path / "c", trials, ["whole"])
    (exp / "trials.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(NasproxyError, match="cannot read"):
        make_report(exp)

    exp = _write_experiment(tmp_path / "d", trials, ["whole"])
    man = json.loads((exp / "manifest.json").read_text())
    del man["archs"]
    (exp / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NasproxyError, match="archs"):
        make_report(exp)

    (exp / "manifest.json").write_text("{not json")
    with pytest.raises(NasproxyError, match="cannot read"):
        make_report(exp)

    exp = _write_experiment(tmp_path / "e", trials, ["whole"])
    with pytest.raises(NasproxyError, match="top_k"):
        make_report(exp, top_k=0)


# ------------------------------------------------ any number of proxy rows


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    blob = path.read_bytes()
    return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")


def test_report_with_nine_methods(tmp_path: Path) -> None:
    """Nine proxy rows and the whole set: every table has them all, in manifest order, with
    the ranking each was built to have, and the plots grow to fit them."""
    base = np.linspace(0.5, 0.9, len(ARCHS))[[3, 0, 7, 1, 11, 5, 2, 9, 4, 10, 6, 8]]
    methods = ["influence", "random", "herding", "forgetting", "el2n", "grand", "kcenter"]
    methods += ["ccs", "entropy"]
    rows = _trials("whole", base, base + 0.02, wall=10.0)
    for i, name in enumerate(methods):
        # even rows rank like the whole set, odd rows in reverse
        val = base**2 if i % 2 == 0 else 1.0 - base
        rows += _trials(name, val, val, wall=1.0 + i)
    exp = _write_experiment(tmp_path / "exp", pd.DataFrame(rows), [*methods, "whole"])
    res = make_report(exp, top_k=5, n_boot=20, seed=0)
    t = _read_csv(exp / "table1.csv")
    assert list(t.index) == [*methods, "whole"]
    for i, name in enumerate(methods):
        assert t.loc[name, "spearman_all"] == pytest.approx(1.0 if i % 2 == 0 else -1.0)
        assert t.loc[name, "epsilon"] == pytest.approx(0.25 * (i + 1))
        assert t.loc[name, "train_s"] == pytest.approx((1.0 + i) * len(ARCHS) * len(SEEDS))
    md = (exp / "table1.md").read_text().splitlines()
    md_rows = [ln.split("|")[1].strip() for ln in md if ln.startswith("| ")]
    assert [r for r in md_rows if r in (*methods, "whole")] == [*methods, "whole"]
    tex = (exp / "table1.tex").read_text()
    assert all(f"\n{name} & " in tex for name in methods)
    text = format_summary(res)
    assert all(f"\n{name} " in text for name in methods)
    # nine scatter panels: three rows of three, three times the height of one row
    width, height = _png_size(exp / "proxy_vs_whole.png")
    assert (width, height) == (round(4.2 * 3 * 120), round(3.8 * 3 * 120))
    corr_width, _ = _png_size(exp / "correlation.png")
    assert corr_width == round((1.3 * 10 + 2) * 120)  # one slot per train set


def test_report_of_a_path_outside_the_results_dir_writes_nothing(partial, tmp_path) -> None:
    from nasproxy.cli import main

    exp = tmp_path / "elsewhere"
    shutil.copytree(partial[0], exp)
    for written in exp.glob("table1*"):
        written.unlink()
    before = sorted(p.name for p in exp.iterdir())
    results_dir = tmp_path / "results"
    for name in (str(exp), f"../{exp.name}"):
        assert main(["report", name, "--results-dir", str(results_dir), "--n-boot", "5"]) == 2
        assert sorted(p.name for p in exp.iterdir()) == before
    # the same experiment inside the results directory is reported
    shutil.copytree(exp, results_dir / "exp")
    assert main(["report", "exp", "--results-dir", str(results_dir), "--n-boot", "5"]) == 0
    assert (results_dir / "exp" / "table1.md").is_file()
