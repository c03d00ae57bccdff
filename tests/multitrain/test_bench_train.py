"""scripts/bench_train.py, the plain trainer against the stacked one: its JSON holds what it
measured, and every derived figure follows from the measured ones by its formula.

Truths: the closed forms the script documents (images = models x images x epochs, 6 x
MACs per training image and 2 x MACs per evaluated image, ratios of the times, linear
extrapolation), recomputed here from the raw per-architecture fields.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasproxy import spaces
from nasproxy.data import Dataset

REPO = Path(__file__).resolve().parents[2]


def test_bench_tiny_figures_follow_from_its_measurements(tmp_path: Path, digits: Dataset) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--tiny", "--archs", "1"]
        + ["--out", str(out)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    result = json.loads(out.read_text())
    assert len(result["archs"]) == 1 and set(result["workloads"]) == {"proxy", "whole"}
    evaluated = result["n_val_evaluated"] + result["n_test_evaluated"]
    arch = spaces.Arch.from_id(result["archs"][0])
    macs = arch.macs(digits.in_channels, digits.num_classes, digits.image_size)  # --tiny: digits
    for name, w in result["workloads"].items():
        (row,) = w["per_arch"]
        assert row["arch"] == result["archs"][0] and row["macs"] == macs
        models, images = w["models_per_arch"], w["images_per_model"] * w["epochs"]
        assert models == (4 if name == "proxy" else 2)  # 2 proxies x 2 seeds; 2 seeds
        assert w["plain"]["s"] == pytest.approx(row["plain_s"])
        assert w["fast"]["s"] == pytest.approx(row["fast_s"])
        assert w["speedup"] == pytest.approx(row["plain_s"] / row["fast_s"])
        assert row["speedup"] == pytest.approx(row["plain_s"] / row["fast_s"])
        for path in ("plain", "fast"):
            stats = w[path]
            assert stats["images_per_s"] * stats["s"] == pytest.approx(models * images)
            work = models * macs * (6 * images + 2 * evaluated)
            assert stats["tflops"] * stats["s"] * 1e12 == pytest.approx(work)
        diffs = [abs(f - p) for f, p in zip(row["val_acc_fast"], row["val_acc_plain"], strict=True)]
        assert len(diffs) == models and w["val_acc_diff_max"] == pytest.approx(max(diffs))
        # the paths agree up to a borderline example or so (float32 rounding differs)
        assert w["val_acc_diff_max"] <= 2 / w["val_examples"]
        if name == "proxy":
            scale = 100 / w["epochs"] * len(spaces.load("convnet720")) / len(result["archs"])
        else:
            scale = result["n_train"] / w["images_per_model"] / w["epochs"]
        assert w["extrapolated"]["plain_s"] == pytest.approx(w["plain"]["s"] * scale)
        assert w["extrapolated"]["fast_s"] == pytest.approx(w["fast"]["s"] * scale)
