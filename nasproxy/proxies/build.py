"""Build a proxy training set, measure it, and write/read the proxy file.

``build_proxy`` runs (or reuses) the scoring run, refits the softmax head (or reads it
from its cache), runs one method (a built-in, a plug-in, or ``indices_method``'s wrapper
of a selection made elsewhere), checks its selection (``check_selection``), and measures
it on the paper's yardstick: epsilon =
||sum_{removed} S_i||_2 (Yang et al., ICLR 2023, Eq. 3), for every method alike, with the
mean loss and gradient norm of the kept examples beside those of the whole train split.

The proxy file (JSON, format ``nasproxy-proxy/1``) records the method, its options, the
seed, the dataset and its fingerprint, the backbone and the scoring artifact's hash, the
kept train-split indices per class name, n_images, epsilon, diagnostics and timings, and
where the build ran (``platform``: device, CPU threads, machine, CPU model, torch; the
scoring run's own is ``backbone.platform``, null for runs cached by earlier versions).
``proxy_record`` is the one place a record is made (by ``build_proxy``, and by scripts and
tests that need a proxy file without a build), ``write_proxy`` the one writer, and
``load_proxy`` the canonical reader: it checks the format, the dataset fingerprint and
every index before handing back the indices.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nasproxy import __version__
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError, first_line
from nasproxy.influence.head import RefitHead
from nasproxy.influence.solvers import (
    EPSILON_SOLVERS,
    OBJECTIVES,
    SOLVERS,
    objective_value,
    require_solver,
)
from nasproxy.io import atomic_write_json
from nasproxy.provenance import utc_now
from nasproxy.proxies import registry
from nasproxy.proxies.base import ProxyOptions, SelectionContext, check_budget
from nasproxy.proxies.registry import Method
from nasproxy.scoring import (
    ScoringArtifact,
    ScoringConfig,
    artifact_dir,
    platform_record,
    scoring_run,
)
from nasproxy.train import resolve_device

FORMAT = "nasproxy-proxy/1"

Progress = Callable[[str], None]


class _Scoring:
    """The scoring run and the refitted head of a build, each made (or read from the cache)
    on first use, with the seconds each took: a method that reads only the scoring run
    (herding, forgetting, ...) does not refit the head, which only epsilon then needs."""

    def __init__(
        self,
        data: Dataset,
        cfg: ScoringConfig,
        l2: float,
        cache_dir: str | Path,
        device: str,
        progress: Progress | None,
    ):
        self.data, self.cfg, self.l2 = data, cfg, l2
        self.cache_dir, self.device, self.progress = cache_dir, device, progress
        self.cached = artifact_dir(cache_dir, data, cfg).is_dir()  # before this build
        self.made_artifact: ScoringArtifact | None = None
        self.made_head: RefitHead | None = None
        self.scoring_s = self.head_s = 0.0

    def artifact(self) -> ScoringArtifact:
        """The scoring run, trained or read from the cache."""
        if self.made_artifact is None:
            start = time.perf_counter()
            self.made_artifact = scoring_run(
                self.data, self.cfg, self.cache_dir, self.device, self.progress
            )
            self.scoring_s = time.perf_counter() - start
        return self.made_artifact

    def head(self) -> RefitHead:
        """The head refitted on the scoring run (which it makes first if needed)."""
        if self.made_head is None:
            artifact = self.artifact()
            start = time.perf_counter()
            self.made_head = RefitHead.load_or_fit(artifact, self.l2, self.device, self.progress)
            self.head_s = time.perf_counter() - start
        return self.made_head


def build_proxy(
    data: Dataset,
    method: str | Method,
    per_class: int | None,
    seed: int,
    cache_dir: str | Path,
    scoring: ScoringConfig | None = None,
    options: ProxyOptions | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    measure: bool | None = None,
) -> dict[str, Any]:
    """Select a proxy of ``per_class`` examples per class with ``method``; its record.

    ``method`` is a built-in or installed method's name, ``MODULE:FUNCTION``, or a
    resolved ``Method`` (e.g. ``indices_method``). Whatever it is, its selection is checked
    (integers, in range, no duplicates, ``per_class`` of every class) before anything is
    measured. ``per_class`` is None only for the influence method with ``options.epsilon``:
    it then removes as many examples as the epsilon budget allows, and the classes are no
    longer balanced. The scoring run is cached under ``cache_dir`` and made only when the
    method reads it: epsilon and the diagnostics are then measured with it, and for a
    method that does not (random, a selection made elsewhere) only when a scoring run of
    this dataset and backbone is cached or ``measure`` is True (never when it is False);
    ``epsilon_from`` in the record says which.
    """
    scoring = scoring or ScoringConfig()
    options = options or ProxyOptions()
    chosen = method if isinstance(method, Method) else registry.resolve(method)
    _check_request(data, chosen.name, per_class, options)
    where = platform_record(resolve_device(device))  # a device it lacks: refused before work
    start = time.perf_counter()
    l2 = options.head_l2 if options.head_l2 is not None else scoring.backbone_weight_decay
    run = _Scoring(data, scoring, l2, cache_dir, device, progress)
    if progress is not None:
        progress(f"selecting with {chosen.name}")
    ctx = SelectionContext(data, per_class, seed, options, run.artifact, run.head)
    kept = run_method(chosen, ctx)
    select_s = time.perf_counter() - start - run.scoring_s - run.head_s
    method = chosen.name
    # the method's own scoring run is measured on unless told not to (the head refit that
    # epsilon needs may be all the memory it costs); a head the method refitted, always
    if run.made_head is not None or (run.made_artifact is not None and measure is not False):
        epsilon_from = "the scoring run the method used"
    elif measure or (measure is None and run.cached):
        epsilon_from = "a cached scoring run" if run.cached else "a scoring run made to measure it"
    else:
        epsilon_from = None
    epsilon = diagnostics = None
    params: dict[str, Any] = {}
    epsilon_s = 0.0
    if epsilon_from is not None:
        before, made_before = time.perf_counter(), run.scoring_s + run.head_s
        epsilon, diagnostics, head = _measure(run, kept, method)
        made_now = run.scoring_s + run.head_s - made_before  # a run made to measure it
        epsilon_s = time.perf_counter() - before - made_now
        params |= {
            "head_l2": l2,
            "head_grad_norm": head.info["grad_norm"],
            "head_iterations": head.info["iterations"],
            "head_newton_steps": head.info["newton_steps"],
            "head_loss": head.info["loss"],
        }
    if not chosen.builtin:
        params["source"] = chosen.source
    if method == "influence":
        assert run.made_head is not None  # the influence method reads the head
        params |= {
            "solver": options.solver,
            "project_dim": options.project_dim,
            "epsilon_budget": options.epsilon,
            "min_per_class": options.min_per_class if options.epsilon is not None else None,
            "class_balanced": options.epsilon is None,
        }
        if options.epsilon is None:
            params["objective"] = options.objective
            params["objective_value"] = objective_value(
                run.made_head.influence(), kept, options.objective
            )
    artifact = run.made_artifact
    return proxy_record(
        data,
        kept,
        method=method,
        per_class=per_class,
        seed=seed,
        params=params,
        epsilon=epsilon,
        backbone=None
        if artifact is None
        else {
            **scoring.record(),
            "device": artifact.meta.get("device"),
            "train_s": artifact.meta.get("train_s"),
            "train_acc_eval": artifact.meta.get("train_acc_eval"),
            "feature_dim": int(artifact.features.shape[1]),
            "platform": artifact.meta.get("platform"),
        },
        backbone_hash=None if artifact is None else artifact.hash,
        epsilon_from=epsilon_from,
        diagnostics=diagnostics,
        timings={
            "scoring_s": run.scoring_s,
            "head_s": run.head_s,
            "select_s": select_s,
            "epsilon_s": epsilon_s,
            "total_s": time.perf_counter() - start,
        },
        nasproxy_version=__version__,
        platform=where,
        created=utc_now(),
    )


def proxy_record(
    data: Dataset,
    kept: np.ndarray,
    *,
    method: str,
    per_class: int | None = None,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    epsilon: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The proxy record (format ``nasproxy-proxy/1``) that keeps the train-split indices
    ``kept`` of ``data``: the indices listed per class name, their count, the dataset and
    its fingerprint, the method, its budget, seed, parameters and epsilon, then ``extra``
    fields (``build_proxy`` adds the backbone, diagnostics and timings). ``kept`` is checked
    as a method's selection is (``check_selection``), so the record reads back with
    ``proxy_indices``; ``write_proxy`` writes it.
    """
    kept = check_selection(kept, data, per_class, f"the kept set of the {method} proxy")
    labels = data.y_train.numpy()
    record = {
        "format": FORMAT,
        "method": method,
        "per_class": per_class,
        "seed": seed,
        "params": dict(params or {}),
        "dataset": data.spec,
        "fingerprint": data.fingerprint,
        "indices": {name: kept[labels[kept] == c].tolist() for c, name in enumerate(data.classes)},
        "n_images": int(len(kept)),
        "epsilon": epsilon,
    }
    clash = sorted(record.keys() & extra.keys())
    if clash:  # these follow from data and kept: an extra field must not contradict them
        raise NasproxyError(f"proxy record: {', '.join(clash)} cannot be given as extra fields")
    return record | extra


def _measure(
    run: _Scoring, kept: np.ndarray, method: str
) -> tuple[float, dict[str, dict[str, float]], RefitHead]:
    """epsilon and the diagnostics of ``kept``, with the head (refitted now if the method
    did not); for a method other than influence, work that does not fit in memory is
    refused with epsilon named as the reason, and how to build the proxy without it."""
    try:
        head = run.head()
        epsilon = head.epsilon(kept)
    except NasproxyError as exc:
        if method == "influence":
            raise
        raise NasproxyError(
            f"measuring the proxy's epsilon (which needs the refitted head's Hessian; {method} "
            f"itself does not): {exc}; or build the proxy without epsilon "
            "(build-proxy --no-measure-epsilon; run always measures it for Table 1)"
        ) from None
    diagnostics = {
        "kept": head.diagnostics(kept),
        "all": head.diagnostics(np.arange(len(head.labels))),
    }
    return epsilon, diagnostics, head


# What a proxy record holds besides its selection: measurements of the head's fit (params)
# and of the scoring run (backbone), which may differ between two identical builds.
# (the indices themselves are the selection: how the scoring run went is not part of it)
RUN_PARAMS = frozenset(
    {
        "head_l2",
        "head_grad_norm",
        "head_iterations",
        "head_newton_steps",
        "head_loss",
        "objective_value",
    }
)
SELECTION_FIELDS = ("fingerprint", "method", "per_class", "seed", "params", "indices")


def selection_fields(record: dict[str, Any]) -> dict[str, str]:
    """A short digest of each field that defines a proxy's selection: the dataset, the
    method, its budget, seed and parameters, and the indices (not when or how fast it was
    built, its epsilon or scoring run, nor the JSON layout)."""
    params = record.get("params")
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if k not in RUN_PARAMS}
    values = {**{k: record.get(k) for k in SELECTION_FIELDS}, "params": params}
    return {k: _digest(v) for k, v in values.items()}


def selection_hash(record: dict[str, Any]) -> str:
    """The hash of what defines a proxy's selection (``selection_fields``): the same for a
    proxy rebuilt with the same command or rewritten with another layout."""
    return _digest(selection_fields(record))


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_proxy(record: dict[str, Any], path: str | Path) -> Path:
    """Write a proxy record as indented JSON, atomically."""
    return atomic_write_json(path, record)


def parse_proxy(blob: bytes, path: str | Path) -> dict[str, Any]:
    """The record in a proxy file's bytes (JSON only, never unpickled), checking its format."""
    try:
        record = json.loads(blob)
    except ValueError as exc:
        raise NasproxyError(f"proxy file {path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise NasproxyError(f"{path} is not a nasproxy proxy file (format {FORMAT})")
    return record


def read_proxy(path: str | Path) -> dict[str, Any]:
    """The raw record of a proxy file, after checking that it is one."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise NasproxyError(f"cannot read proxy file {path} ({exc.strerror or exc})") from None
    return parse_proxy(blob, path)


def proxy_indices(record: dict[str, Any], data: Dataset, source: str) -> np.ndarray:
    """A proxy record's sorted int64 train-split indices, checked against ``data``.

    Refuses a record built on another dataset (fingerprint), class names the dataset does
    not have, and indices that are out of range, duplicated, of the wrong class, or none.
    """
    if record.get("fingerprint") != data.fingerprint:
        raise NasproxyError(
            f"{source} was built on dataset fingerprint {record.get('fingerprint')}, "
            f"this dataset is {data.fingerprint}"
        )
    per_class = record.get("indices")
    if not isinstance(per_class, dict):
        raise NasproxyError(f"{source} has no per-class indices")
    labels = data.y_train.numpy()
    parts = []
    for name, members in per_class.items():
        if name not in data.classes:
            raise NasproxyError(f"{source} names class {name!r}, which this dataset lacks")
        if not isinstance(members, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in members
        ):
            raise NasproxyError(f"{source}: indices of class {name!r} are not integers")
        outside = [i for i in members if not 0 <= i < len(labels)]  # before int64 can overflow
        if outside:
            raise NasproxyError(
                f"{source}: index {outside[0]} of class {name!r} is outside the train "
                f"split (0..{len(labels) - 1})"
            )
        idx = np.asarray(members, dtype=np.int64)
        wrong = idx[labels[idx] != data.classes.index(name)]
        if wrong.size:
            raise NasproxyError(
                f"{source}: train image {int(wrong[0])} is not of class {name!r} but of "
                "another class"
            )
        parts.append(idx)
    indices = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    if indices.size == 0:
        raise NasproxyError(f"{source} selects no images")
    if np.unique(indices).size != indices.size:
        raise NasproxyError(f"{source} lists an image twice")
    if record.get("n_images") != len(indices):
        raise NasproxyError(
            f"{source} says n_images={record.get('n_images')} but lists {len(indices)}"
        )
    return indices


def load_proxy(path: str | Path, data: Dataset) -> np.ndarray:
    """The sorted int64 train-split indices of the proxy file at ``path``, checked."""
    return proxy_indices(read_proxy(path), data, f"proxy {path}")


def default_proxy_path(
    dataset: str, method: str, per_class: int | None, seed: int, epsilon: float | None = None
) -> Path:
    """``results/proxies/<dataset-name>-<method>-<per_class or eps...>-s<seed>.json``."""
    budget = f"eps{epsilon:g}" if epsilon is not None else str(per_class)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", method).strip("-.") or "method"
    return Path("results") / "proxies" / f"{_dataset_name(dataset)}-{name}-{budget}-s{seed}.json"


def _dataset_name(spec: str) -> str:
    """``cifar10`` -> cifar10; ``imagefolder:/d/cifar10-jpeg.tar.gz`` -> cifar10-jpeg."""
    if not spec.startswith("imagefolder:"):
        return spec
    name = Path(spec.split(":", 1)[1].rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return name or "imagefolder"


def _check_request(
    data: Dataset, method: str, per_class: int | None, options: ProxyOptions
) -> None:
    """Refuse a bad request before any training starts."""
    if options.solver not in SOLVERS:
        raise NasproxyError(f"unknown solver {options.solver!r}; choose from {', '.join(SOLVERS)}")
    require_solver(options.solver)  # a missing extra fails before the scoring run
    if options.objective not in OBJECTIVES:
        raise NasproxyError(
            f"unknown objective {options.objective!r}; choose from {', '.join(OBJECTIVES)}"
        )
    if options.epsilon is not None:
        if method != "influence":
            raise NasproxyError("an epsilon budget applies to the influence method only")
        if per_class is not None:
            raise NasproxyError("give either a per-class budget or an epsilon budget, not both")
        if options.solver not in EPSILON_SOLVERS:
            raise NasproxyError(
                f"solver {options.solver!r} has no epsilon form; "
                f"choose from {', '.join(EPSILON_SOLVERS)}"
            )
        return
    if per_class is None:
        raise NasproxyError("a per-class budget is required (--per-class)")
    check_budget(data, per_class)


def run_method(method: Method, ctx: SelectionContext) -> np.ndarray:
    """Run ``method`` on ``ctx`` and check what it returns: sorted int64 indices.

    A plug-in that raises, or any method whose result is not a list of distinct
    train-split indices with ``ctx.per_class`` of every class, ends in one line naming it.
    """
    if method.builtin:
        result = method.select(ctx)
    else:
        try:
            result = method.select(ctx)
        except NasproxyError as exc:
            raise NasproxyError(f"method {method.name!r}: {exc}") from None
        except registry.ESCAPES as exc:  # a user's selector may raise anything, or exit
            reason = first_line(exc, with_type=True)
            raise NasproxyError(f"method {method.name!r} failed ({reason})") from None
    return check_selection(result, ctx.data, ctx.per_class, f"method {method.name!r}")


def check_selection(result: Any, data: Dataset, per_class: int | None, source: str) -> np.ndarray:
    """``result`` as sorted int64 train-split indices, refused in one line unless it is a
    flat list of distinct integers in range with ``per_class`` of every class (when given)."""
    n = len(data.y_train)
    try:
        array = np.asarray(result)
    except Exception:  # a ragged or exotic object
        raise NasproxyError(f"{source} gave {type(result).__name__}, not indices") from None
    if array.ndim == 0 and array.dtype == object:  # None, a generator, any non-sequence
        raise NasproxyError(f"{source} gave {type(result).__name__}, not a list of indices")
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise NasproxyError(
            f"{source} gave an array of shape {array.shape} and dtype {array.dtype}, "
            "not a flat list of integer indices"
        )
    indices = array.astype(np.int64)
    outside = indices[(indices < 0) | (indices >= n)]
    if outside.size:
        raise NasproxyError(
            f"{source} gave index {int(outside[0])}, outside the train split (0..{n - 1})"
        )
    indices = np.sort(indices)
    repeated = indices[1:][np.diff(indices) == 0]
    if repeated.size:
        raise NasproxyError(f"{source} gave index {int(repeated[0])} more than once")
    if indices.size == 0:
        raise NasproxyError(f"{source} gave no indices")
    if per_class is not None:
        counts = np.bincount(data.y_train.numpy()[indices], minlength=data.num_classes)
        for c, count in enumerate(counts):
            if count != per_class:
                raise NasproxyError(
                    f"{source} gave {count} images of class {data.classes[c]!r}, "
                    f"expected {per_class} (the per-class budget)"
                )
    return indices


INTEGER = re.compile(r"[+-]?[0-9]+")


def read_indices(path: str | Path) -> np.ndarray:
    """Train-split indices from a file: ``.npy`` or ``.npz`` with one array (integers, never
    unpickled), ``.json`` (a list of integers) or text (integers separated by whitespace or
    commas); the suffix in any case."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            values: Any = _read_numpy(path, suffix)
        elif suffix == ".json":
            try:
                values = json.loads(path.read_bytes())
            except (ValueError, UnicodeError) as exc:
                raise NasproxyError(f"indices file {path} is not valid JSON ({exc})") from None
            if not isinstance(values, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in values
            ):
                raise NasproxyError(f"indices file {path} is not a JSON list of integers")
        else:
            try:
                words = path.read_bytes().decode("utf-8").replace(",", " ").split()
            except UnicodeError:
                raise NasproxyError(
                    f"indices file {path} is not text; give a .npy, .npz, .json or text file"
                ) from None
            bad = next((w for w in words if not INTEGER.fullmatch(w)), None)
            if bad is not None:
                raise NasproxyError(f"indices file {path}: {bad!r} is not an integer")
            values = [int(w) for w in words]
    except OSError as exc:
        raise NasproxyError(f"cannot read indices file {path} ({exc.strerror or exc})") from None
    return np.asarray(values)


def _read_numpy(path: Path, suffix: str) -> np.ndarray:
    """The one array of a ``.npy`` or ``.npz`` file, never unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npy" or not isinstance(loaded, np.lib.npyio.NpzFile):
            if not isinstance(loaded, np.ndarray):
                raise ValueError("not an array")
            return loaded
        with loaded:
            if len(loaded.files) != 1:
                raise ValueError(f"it holds {len(loaded.files)} arrays, not one")
            return loaded[loaded.files[0]]
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise NasproxyError(
            f"indices file {path} is not a plain {suffix} of integers ({exc})"
        ) from None


def infer_per_class(indices: np.ndarray, data: Dataset, source: str) -> int:
    """The per-class budget a selection keeps: the same count of every class, else refused."""
    array = check_selection(indices, data, None, source)
    counts = np.bincount(data.y_train.numpy()[array], minlength=data.num_classes)
    if counts.min() != counts.max():
        low, high = int(counts.argmin()), int(counts.argmax())
        raise NasproxyError(
            f"{source} keeps {counts[low]} images of class {data.classes[low]!r} but "
            f"{counts[high]} of {data.classes[high]!r}; a proxy keeps the same number of "
            "every class (give --per-class to say how many)"
        )
    return int(counts[0])


def indices_method(path: str | Path, data: Dataset, per_class: int | None) -> tuple[Method, int]:
    """A ``Method`` that keeps the indices listed in ``path``, and its per-class budget
    (``per_class``, or the count of every class in the file when None). The indices are
    checked now, before anything else runs; the method reads no scoring run."""
    path = Path(path)
    source = f"indices file {path}"
    values = read_indices(path)
    if per_class is None:
        per_class = infer_per_class(values, data, source)
    kept = check_selection(values, data, per_class, source)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def select(ctx: SelectionContext) -> np.ndarray:
        return kept

    return Method("from-indices", f"{path} (sha256 {digest})", select, builtin=False), per_class
