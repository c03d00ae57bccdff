"""The two synthetic experiments most report tests read, each reported once a module."""

from __future__ import annotations

import pytest

from nasproxy.report import make_report
from tests.report.experiments import controlled_experiment, partial_experiment


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory):
    """(folder, base accuracies, ReportResult) of the experiment with known answers."""
    exp, base = controlled_experiment(tmp_path_factory.mktemp("ctl") / "exp")
    return exp, base, make_report(exp, top_k=10, n_boot=50, seed=0)


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory):
    """(folder, trials, ReportResult) of the noisy sweep with gaps."""
    exp, trials = partial_experiment(tmp_path_factory.mktemp("partial") / "exp")
    return exp, trials, make_report(exp, top_k=5, n_boot=100, seed=3)
