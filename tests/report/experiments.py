"""Synthetic experiment directories written per the results-store schema, for the report's
tests: rows of known accuracies, a manifest, and the table read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

ARCHS = [f"w{w}-d{d}-relu-instancenorm-avgpooling" for w in (32, 64, 128) for d in (1, 2, 3, 4)]
SEEDS = [0, 1]


def trials_of(train_set: str, val: np.ndarray, test: np.ndarray, wall: float) -> list[dict]:
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


def write_experiment(exp: Path, trials: pd.DataFrame, names: list[str], **more) -> Path:
    """trials.parquet and a manifest of training sets ``names`` (``more``: added fields)."""
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
        **more,
    }
    (exp / "manifest.json").write_text(json.dumps(manifest))
    return exp


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#").set_index("train_set")


# ------------------------------------------------ controlled accuracies, known answers


def controlled_experiment(exp: Path) -> tuple[Path, np.ndarray]:
    """Accuracies with known answers: influence ranks like the whole set, random in
    reverse, herding not at all (constant); returns the folder and the base accuracies."""
    base = np.linspace(0.5, 0.9, len(ARCHS))[[3, 0, 7, 1, 11, 5, 2, 9, 4, 10, 6, 8]]
    shift = np.array(SEEDS, dtype=float)[:, None] * 0.01  # per-seed offset, same ranking
    whole_val = base + shift
    rows = trials_of("whole", whole_val, whole_val + 0.02, wall=10.0)
    # influence: a monotone transform of the whole-set accuracy; random: reversed;
    # herding: constant (no ranking at all)
    rows += trials_of("influence", 0.5 * base**2 + shift, base**2, wall=1.0)
    rows += trials_of("random", 1.0 - base + shift, 1.0 - base, wall=1.0)
    rows += trials_of("herding", np.full_like(whole_val, 0.3), np.full_like(whole_val, 0.3), 1.0)
    exp = write_experiment(
        exp,
        pd.DataFrame(rows),
        ["random", "herding", "influence", "whole"],
    )
    return exp, base


def partial_experiment(exp: Path) -> tuple[Path, pd.DataFrame]:
    """A noisy sweep with missing and diverged trials; returns the folder and its trials."""
    rng = np.random.default_rng(11)
    quality = rng.random(len(ARCHS))
    whole_val = 0.6 + 0.3 * quality + rng.normal(0, 0.03, (2, len(ARCHS)))
    whole_test = whole_val + rng.normal(0, 0.01, whole_val.shape)
    rows = trials_of("whole", whole_val, whole_test, wall=8.0)
    for name, noise in (("random", 0.2), ("influence", 0.05)):
        val = 0.3 + 0.2 * quality + rng.normal(0, noise, whole_val.shape)
        rows += trials_of(name, val, val, wall=1.5)
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
    exp = write_experiment(exp, trials, ["random", "influence", "whole"])
    return exp, trials
