"""NATS-Bench's published accuracies as a whole-set reference (``nasproxy reference import-nats``).

NATS-Bench (Dong et al., TPAMI 2021; its topology space is NAS-Bench-201, Dong & Yang, ICLR
2020) publishes the accuracies of all 15,625 cells. Its files are Python pickles. nasproxy
unpickles no file of a user's anywhere else: this module is the one place that reads them,
only through the benchmark's official package ``nats_bench`` (the extra ``nasproxy[nats]``),
only on the user's explicit request, from a benchmark directory the user downloaded from the
benchmark's authors (the topology space's ``NATS-tss-v1_0-3ffb9-simple`` directory, opened
with ``nats_bench.create(PATH, "tss", fast_mode=True)``). It writes a plain reference file
(``nasproxy.reference``) that everything else reads.

Which accuracies, by the package's own naming (``nats_bench.api_utils.remap_dataset_set_names``,
the rule of its ``find_best``; NAS-Bench-201, Sec. 2.3): for CIFAR-10 the validation accuracy
is the ``cifar10-valid`` run's ``x-valid`` (trained on 25,000 training images, measured on
the other 25,000), the test accuracy the ``cifar10`` run's ``ori-test`` (trained on all
50,000, measured on the 10,000 test images); for CIFAR-100 both come from the ``cifar100``
run (trained on the 50,000 training images), ``x-valid`` and ``x-test`` the two halves of
its test images. Each is the mean over the benchmark's training seeds of the accuracy after
the last epoch of the ``--epochs`` schedule (12 or 200 in the topology space), divided by
100 (the package gives percent, nasproxy fractions).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasproxy.errors import NasproxyError, first_line
from nasproxy.io import check_output_file
from nasproxy.reference import write_reference

EXTRA = "pip install 'nasproxy[nats]'"
SPACE = "tss"  # NATS-Bench's topology search space (the NAS-Bench-201 cells)
# dataset -> ((benchmark dataset, key of get_more_info) of validation, the same of test)
ACCURACIES = {
    "cifar10": (("cifar10-valid", "valid-accuracy"), ("cifar10", "test-accuracy")),
    "cifar100": (("cifar100", "valid-accuracy"), ("cifar100", "test-accuracy")),
}
MEANING = {
    "cifar10": (
        "cifar10-valid x-valid: trained on 25,000 training images, measured on the other 25,000",
        "cifar10 ori-test: trained on all 50,000 training images, measured on the 10,000 "
        "test images",
    ),
    "cifar100": (
        "cifar100 x-valid: trained on the 50,000 training images, measured on half the test images",
        "cifar100 x-test: trained on the 50,000 training images, measured on the other half",
    ),
}


def default_output(dataset: str, epochs: int) -> Path:
    """The reference file ``import-nats`` writes without ``-o``: in the current folder."""
    return Path(f"nats-{SPACE}-{dataset}-{epochs}ep.csv")


def _package() -> Any:
    """The official ``nats_bench`` package, or the one-line error naming the extra."""
    try:
        import nats_bench
    except ImportError:
        raise NasproxyError(
            f"reading NATS-Bench needs its official package nats_bench: {EXTRA}"
        ) from None
    return nats_bench


def read_nats(
    path: str | Path,
    dataset: str,
    epochs: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every cell of the benchmark directory ``path`` with its accuracies (see the module
    docstring): rows of arch (the benchmark's own string), val_acc, test_acc, index.

    ``progress(done, total)`` is called as cells are read. A directory the package cannot
    read, or a cell without results for ``epochs``: one-line error.
    """
    if dataset not in ACCURACIES:
        raise NasproxyError(
            f"NATS-Bench import of dataset {dataset!r}: use {' or '.join(ACCURACIES)}"
        )
    if epochs < 1:
        raise NasproxyError(f"--epochs must be at least 1, got {epochs}")
    nats_bench = _package()
    path = Path(path)
    if not path.is_dir():
        raise NasproxyError(
            f"{path} is not a folder: give the NATS-Bench topology benchmark's directory "
            "(e.g. NATS-tss-v1_0-3ffb9-simple)"
        )
    try:
        api = nats_bench.create(str(path), SPACE, fast_mode=True, verbose=False)
        total = len(api)
    except Exception as exc:  # the package's own errors: ValueError, OSError, unpickling
        raise NasproxyError(
            f"{path}: the official nats_bench package cannot read it as a NATS-Bench topology "
            f"benchmark directory ({first_line(exc, with_type=True)})"
        ) from None
    (val_set, val_key), (test_set, test_key) = ACCURACIES[dataset]
    rows = []
    for index in range(total):
        try:
            val = api.get_more_info(index, val_set, hp=str(epochs), is_random=False)
            test = api.get_more_info(index, test_set, hp=str(epochs), is_random=False)
            arch = api.arch(index)
        except Exception as exc:
            hps = sorted(api.avaliable_hps, key=str)
            if hps and str(epochs) not in hps:  # the schedules of the cells read so far
                raise NasproxyError(
                    f"{path}: architecture {index} has no {epochs}-epoch results (the "
                    f"benchmark's schedules: {', '.join(hps) or 'none'} epochs)"
                ) from None
            raise NasproxyError(
                f"{path}: the official nats_bench package cannot read architecture {index} "
                f"({first_line(exc, with_type=True)})"
            ) from None
        rows.append(
            {
                "arch": str(arch),
                "val_acc": _fraction(val.get(val_key)),
                "test_acc": _fraction(test.get(test_key)),
                "index": index,
            }
        )
        if progress is not None:
            progress(index + 1, total)
    return rows


def _fraction(percent: Any) -> float:
    """The package's percent as a fraction; NaN when it gives none."""
    return float(percent) / 100 if isinstance(percent, int | float) else float("nan")


def import_nats(
    path: str | Path,
    dataset: str,
    epochs: int,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the reference file of NATS-Bench directory ``path`` (:func:`read_nats`) to
    ``out`` (default :func:`default_output`) atomically, once every cell is read."""
    target = check_output_file(out if out is not None else default_output(dataset, epochs))
    rows = read_nats(path, dataset, epochs, progress)
    nats_bench = _package()
    val_means, test_means = MEANING[dataset]
    protocol = {
        "dataset": dataset,
        "epochs": epochs,
        "source": f"NATS-Bench topology space ({SPACE}, Dong et al., TPAMI 2021), "
        f"read with nats_bench {nats_bench.version()} from {Path(path).name}",
        "val_acc": f"{val_means}; mean over the benchmark's seeds",
        "test_acc": f"{test_means}; mean over the benchmark's seeds",
        "arch": "the benchmark's own cell string; index: its index in the benchmark",
    }
    return write_reference(target, protocol, rows)
