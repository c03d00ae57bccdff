"""The experiment directory on top of ``nasproxy.results``: its protocol and manifest,
the refusal of a changed protocol, growth by training set, a manifest rebuilt from the unit
files, the whole split's recorded choice of architectures, removal (--fresh) and run
numbering. See docs/search.md#resume-and-the-manifest.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from nasproxy import __version__, results, settings, shortlist
from nasproxy.data import Dataset, dataset_name
from nasproxy.errors import NasproxyError
from nasproxy.provenance import git_commit, utc_now
from nasproxy.results import WHOLE, UnitKey
from nasproxy.search.config import SearchConfig, TrainSet
from nasproxy.search.lock import BREAK_NAME, LOCK_NAME, ensure_held, experiment_lock
from nasproxy.spaces import Arch, Space

RAY_DIR = "ray"
# protocol keys added later, with the value an experiment recorded before them meant
LATER_PROTOCOL: dict[str, Any] = {"nesterov": False}
# the settings that choose the whole split's architectures (nasproxy.search.sweep.whole_archs)
WHOLE_CHOICE = ("whole_archs", "whole_sample", "whole_top", "whole_by")


def protocol(cfg: SearchConfig) -> dict[str, Any]:
    """What makes two runs comparable: the training settings, seeds and data split (not
    the epoch checkpoints, which change no training: nasproxy.checkpoints)."""
    train = asdict(cfg.train)
    for key in ("seed", "device", "checkpoints"):
        train.pop(key)
    return {
        **train,
        "seeds": list(cfg.seeds),
        "whole_per_class": cfg.whole_per_class,
        "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed,
    }


# --- the experiment directory and its manifest -------------------------------------------


def remove_experiment(exp_dir: Path) -> None:
    """Delete an experiment (``--fresh``): never while another driver runs it (its lock is
    held meanwhile), and never a folder that holds anything nasproxy did not write
    (``results.foreign_entries``)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.exists() and not exp_dir.is_symlink():
        return
    foreign = results.foreign_entries(exp_dir)  # before the lock creates anything in it
    if not foreign:
        with experiment_lock(exp_dir):
            foreign = results.foreign_entries(exp_dir)
            if not foreign:
                for entry in exp_dir.iterdir():
                    if entry.name in (LOCK_NAME, BREAK_NAME):
                        continue
                    ensure_held(exp_dir)  # a driver that lost the lock deletes nothing
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise NasproxyError(
            f"{exp_dir} is not only a nasproxy experiment ({', '.join(foreign[:3])}{more}); "
            "refusing to delete it"
        )
    with contextlib.suppress(OSError):  # left in place while this process's driver holds it
        exp_dir.rmdir()


def check_existing(exp_dir: Path, rebuild: bool = False) -> dict[str, Any] | None:
    """The stored manifest, None for a new experiment (or one whose manifest is rebuilt).

    ``rebuild`` rebuilds only a manifest that is damaged or missing: an intact one stays,
    and a command that differs from its protocol is refused as without the flag.
    """
    hint = "rerun the command that made it with --rebuild-manifest, or use --fresh"
    try:
        previous = results.read_manifest(exp_dir)
        lacking = [k for k in ("protocol", "train_sets") if not isinstance(
            (previous or {}).get(k), dict)]  # fmt: skip
        if previous is not None and lacking:
            raise NasproxyError(f"{exp_dir / results.MANIFEST} lacks {lacking[0]!r}")
    except NasproxyError as exc:
        if rebuild:
            return None
        raise NasproxyError(f"{exc}; {hint}") from None
    if previous is None and (exp_dir / results.UNITS_DIR).is_dir() and not rebuild:
        raise NasproxyError(f"{exp_dir} holds results but no manifest.json; {hint}")
    return previous


def check_units_fit(
    exp_dir: Path,
    manifest: dict[str, Any],
    space: Space,
    train_sets: Sequence[TrainSet] = (),
    rebuilding: bool = True,
) -> None:
    """Refuse unit files that contradict ``manifest``, naming them; when ``rebuilding`` it,
    add their archs.

    What a unit file records is checked: its training set (name, proxy hash, size), epochs,
    seed and architecture. The rest of the protocol (learning rate, batch size, split) is
    not in the unit files: the user vouches for it by giving the original command. A unit
    whose proxy hash is its proxy file's digest (older nasproxy) matches, kept as legacy.
    On a resume, a unit that does not fit (another experiment's, dropped into the store)
    would be taken as done: it is refused, by its path. When a manifest is rebuilt, a few
    units that contradict a command the rest agree with are named as strays; when most
    do, the command is what differs.
    """
    sets = manifest["train_sets"]
    protocol_ = manifest["protocol"]
    file_hashes = {ts.name: ts.file_hash for ts in train_sets if ts.file_hash}
    stored = results.read_units(exp_dir)
    problems: list[tuple[UnitKey, str]] = []
    for key, row in sorted(stored.items()):
        entry = sets.get(key.train_set)
        if rebuilding and entry is not None and row["proxy_hash"] == file_hashes.get(key.train_set):
            if row["proxy_hash"] not in _hashes(entry):
                entry.setdefault("legacy_hashes", []).append(row["proxy_hash"])
        problem = unit_problem(row, entry, protocol_, space)
        if problem is not None:
            problems.append((key, problem))
    if problems:
        key, problem = problems[0]
        path = results.unit_path(exp_dir, key).relative_to(exp_dir)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        if not rebuilding:
            raise NasproxyError(
                f"unit file {path}{more} in {exp_dir} is not of this experiment: it has "
                f"{problem}; move it out of {exp_dir / results.UNITS_DIR}, or use --fresh"
            )
        if 2 * len(problems) < len(stored):
            raise NasproxyError(
                f"cannot rebuild the manifest of {exp_dir}: unit file {path}{more} has "
                f"{problem}, unlike the other {len(stored) - len(problems)} units; move it "
                f"out of {exp_dir / results.UNITS_DIR} if it is not of this experiment"
            )
        raise NasproxyError(
            f"cannot rebuild the manifest of {exp_dir}: unit {path}{more} has {problem}; "
            "give the command that made the experiment"
        )
    if rebuilding:
        union = set(manifest["archs"]) | {key.arch for key in stored}
        manifest["archs"] = [a for a in space.ids if a in union]
        for name, entry in sets.items():
            mine = set(entry["archs"]) | {key.arch for key in stored if key.train_set == name}
            entry["archs"] = [a for a in space.ids if a in mine]
        manifest["rebuilt"] = utc_now()


def unit_problem(
    row: Mapping[str, Any], entry: Mapping[str, Any] | None, protocol_: Mapping[str, Any],
    space: Space,
) -> str | None:  # fmt: skip
    """How a unit's row contradicts the experiment (its training set's manifest entry,
    the protocol, the space), or None when it fits."""
    key = results.row_key(row)
    name = key.train_set
    if entry is None:
        return f"training set {name!r}, which this command lacks"
    if row["proxy_hash"] not in _hashes(entry):
        return (
            f"proxy hash {row['proxy_hash']!r} for {name!r}, this command gives "
            f"{entry['proxy_hash']!r}"
        )
    if row["n_train"] != entry["n_images"]:
        return f"{row['n_train']} images for {name!r}, this command gives {entry['n_images']}"
    epochs = entry.get("epochs", protocol_["epochs"])  # a set BASE@N trains its own
    if row["epochs"] != epochs:
        return f"{row['epochs']} epochs, this command gives {epochs} for {name!r}"
    if key.seed not in protocol_["seeds"]:
        return f"seed {key.seed}, not among this command's seeds {protocol_['seeds']}"
    if key.arch not in space.ids:
        return f"architecture {key.arch}, not in space {space.name}"
    return None


def _hashes(entry: Mapping[str, Any]) -> set[str]:
    """The proxy hashes a stored unit of a training set may carry (older ones too)."""
    return {entry.get("proxy_hash") or "", *entry.get("legacy_hashes", [])}


def build_manifest(
    cfg: SearchConfig,
    data: Dataset,
    space: Space,
    archs_by_set: Mapping[str, Sequence[Arch]],
    train_sets: Sequence[TrainSet],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest of this run; refuses a protocol that differs from an existing one.

    Each training set records its architectures (``archs``), the top level their union.
    Against a stored manifest each set's list is the union with the stored one (a set's
    architectures may grow between runs, never shrink); a manifest written before sets
    had their own lists gave every set the top-level ``archs``.
    """
    ids = {name: [a.id for a in archs] for name, archs in archs_by_set.items()}
    every = {a for names in ids.values() for a in names}
    manifest: dict[str, Any] = {
        "dataset": data.spec,
        "dataset_name": dataset_name(data.spec),
        "fingerprint": data.fingerprint,
        # what the planner's cost model needs (the report estimates units that did not run)
        "data_shape": {
            "in_channels": data.in_channels,
            "num_classes": data.num_classes,
            "image_size": data.image_size,
        },
        "space": space.name,
        "space_size": len(space),
        "archs": [a for a in space.ids if a in every],
        "protocol": protocol(cfg),
        "train_sets": {ts.name: ts.manifest_entry(data, ids[ts.name]) for ts in train_sets},
        "hardware": "",
        "nasproxy_version": __version__,
        "git_commit": git_commit(),
        "wall_s": {},
        "sweep_wall_s": 0.0,
        "runs": [],
        "created": utc_now(),
    }
    if cfg.whole:
        manifest["whole_choice"] = whole_choice(cfg)
    if previous is None:
        return manifest
    _carry_hashes(previous, manifest, train_sets)
    _refuse_different(cfg.name, previous, manifest)
    union = set(previous.get("archs", [])) | set(manifest["archs"])
    manifest["archs"] = [a for a in space.ids if a in union]
    for name, entry in manifest["train_sets"].items():
        if name in previous.get("train_sets", {}):
            mine = set(entry["archs"]) | set(shortlist.train_set_archs(previous, name))
            entry["archs"] = [a for a in space.ids if a in mine]
    if "whole_top" in previous:
        manifest["whole_top"] = previous["whole_top"]
    for key in ("hardware", "wall_s", "sweep_wall_s", "runs", "created"):
        manifest[key] = previous.get(key, manifest[key])
    return manifest


def _carry_hashes(
    previous: dict[str, Any], manifest: dict[str, Any], train_sets: Sequence[TrainSet]
) -> None:
    """Carry the older proxy hashes of each stored training set into ``manifest``.

    Older nasproxy hashed a proxy file's bytes; a stored entry with that hash matches a file
    with those very bytes and moves to the selection hash, the old one kept in
    ``legacy_hashes`` (its stored units still carry it).
    """
    stored = previous.get("train_sets", {})
    for ts in train_sets:
        old = stored.get(ts.name)
        if not isinstance(old, dict):
            continue
        legacy = list(old.get("legacy_hashes", []))
        if ts.file_hash and old.get("proxy_hash") == ts.file_hash != ts.proxy_hash:
            legacy.append(ts.file_hash)
            old["proxy_hash"], old["selection"] = ts.proxy_hash, ts.selection
        if legacy:
            manifest["train_sets"][ts.name]["legacy_hashes"] = legacy


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Which fields of a training set's proxy changed, as far as the manifest tells."""
    before, now = old.get("selection"), new.get("selection")
    if isinstance(before, dict) and isinstance(now, dict):
        fields = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        if fields:
            return f"its proxy's {', '.join(fields)} changed"
    return "its proxy file differs"


def protocol_checks(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, old value, new value) of everything two manifests of one experiment share:
    the dataset's fingerprint, the space, the protocol and each common training set's proxy
    hash and size (a resume and ``nasproxy units unpack`` refuse the first that differs)."""

    def sets(m: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: {"proxy_hash": v.get("proxy_hash"), "n_images": v.get("n_images")}
            for k, v in m.get("train_sets", {}).items()
        }

    checks = [  # the fingerprint, not the spec: the same images may move to another path
        ("dataset fingerprint", old.get("fingerprint"), new.get("fingerprint")),
        ("space", old.get("space"), new.get("space")),
        ("space size", old.get("space_size"), new.get("space_size")),
    ]
    old_protocol = {**LATER_PROTOCOL, **old.get("protocol", {})}
    new_protocol = {**LATER_PROTOCOL, **new.get("protocol", {})}
    for key in sorted(set(old_protocol) | set(new_protocol)):
        checks.append((key, old_protocol.get(key), new_protocol.get(key)))
    old_sets, new_sets = sets(old), sets(new)
    for ts in sorted(set(old_sets) & set(new_sets)):
        checks.append((f"training set {ts!r}", old_sets[ts], new_sets[ts]))
    return checks


def _refuse_different(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """One-line error naming the first difference between two protocols."""
    old_sets, new_sets = old.get("train_sets", {}), new["train_sets"]
    for ts in sorted(set(old_sets) & set(new_sets)):
        before, now = old_sets[ts], new_sets[ts]
        if before.get("proxy_hash") != now.get("proxy_hash"):
            raise NasproxyError(
                f"experiment {name!r} was run with training set {ts!r} of proxy hash "
                f"{before.get('proxy_hash')}, this run gives {now.get('proxy_hash')} "
                f"({_changed_fields(before, now)}: {now.get('proxy_path')}); give the proxy "
                "it was run with, use another --name, or --fresh to start over"
            )
    for what, before, now in protocol_checks(old, new):
        if before != now:
            raise NasproxyError(
                f"experiment {name!r} was run with {what} {before}, this run asks for {now}; "
                "use another --name, or --fresh to start over"
            )
    lacking = sorted(set(old_sets) - set(new_sets))
    if lacking:  # the training sets may grow, never shrink (every stored set is re-checked)
        raise NasproxyError(
            f"experiment {name!r} was run with training sets {sorted(old_sets)}, this run "
            f"lacks {lacking}; give every stored one (new ones may be added), use another "
            "--name, or --fresh to start over"
        )


def whole_choice(cfg: SearchConfig) -> dict[str, Any]:
    """How ``cfg`` chooses the whole split's architectures, as the manifest records it."""
    choice = {key: getattr(cfg, key) for key in WHOLE_CHOICE}
    return choice | {"whole_archs": list(cfg.whole_archs)}


def recorded_whole_choice(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The choice of the whole split's architectures a stored manifest records, or {} (no
    whole split; or an older manifest without ``--whole-top``, which records none: of
    ``--whole-top`` it records K and ``--by``)."""
    if WHOLE not in (manifest.get("train_sets") or {}):
        return {}
    choice = manifest.get("whole_choice")
    top = shortlist.recorded(manifest)
    if choice is None and top is not None:
        choice = {key: top[key] for key in ("whole_top", "whole_by")}
    if choice is None:
        return {}
    if not isinstance(choice, dict) or not all(_fits(k, v) for k, v in choice.items()):
        raise NasproxyError(
            f"manifest.json's record of how the whole split's architectures are chosen is "
            f"damaged ({choice!r}); give --grow-whole to choose them as this command says"
        )
    return choice


def keep_whole_choice(
    cfg: SearchConfig, previous: Mapping[str, Any] | None
) -> tuple[SearchConfig, str]:
    """``cfg`` choosing the whole split's architectures as the stored manifest ``previous``
    recorded, with a line that says so, when the command asks for another choice and not
    for ``grow_whole``; else ``cfg`` as it is and "".

    A resume that leaves out ``--whole-top`` would otherwise train every architecture of
    the proxies on the whole split (at paper scale 720 x seeds units instead of K)."""
    if previous is None or not cfg.whole or cfg.grow_whole:
        return cfg, ""
    recorded = recorded_whole_choice(previous)
    asked = whole_choice(cfg)
    if all(asked[key] == value for key, value in recorded.items()):
        return cfg, ""
    changes = dict(recorded)
    if "whole_archs" in changes:
        changes["whole_archs"] = tuple(changes["whole_archs"])
    return replace(cfg, **changes), (
        f"experiment {cfg.name!r} chose the whole split's architectures with "
        f"{_describe(recorded)}; this command asks for {_describe(asked)}: the recorded "
        "choice is kept (--grow-whole, or run --set grow_whole=true, takes this command's)"
    )


def _fits(key: str, value: Any) -> bool:
    """Whether ``value`` may be the recorded setting ``key`` of the whole split's choice."""
    if key == "whole_archs":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if key in ("whole_sample", "whole_top"):
        return value is None or isinstance(value, int) and not isinstance(value, bool)
    return key == "whole_by" and isinstance(value, str)


def _describe(choice: Mapping[str, Any]) -> str:
    """A choice of the whole split's architectures as the flags that give it."""
    flags = settings.leaves(SearchConfig)
    parts = []
    for key in WHOLE_CHOICE:
        value = choice.get(key)
        values = value if isinstance(value, list) else [] if value is None else [value]
        if key != "whole_by" or value != shortlist.ALL:
            parts += [f"{flags[key].flag} {v}" for v in values]
    return " ".join(parts) or "the proxies' architectures"


def finish_manifest(exp_dir: Path, run_info: dict[str, Any]) -> None:
    """Add this run's provenance, the wall times and the hardware seen to the manifest."""
    manifest = results.read_manifest(exp_dir) or {}
    manifest["runs"] = [*manifest.get("runs", []), run_info]
    add_totals(manifest, results.read_trials(exp_dir))
    ensure_held(exp_dir)
    results.write_manifest(exp_dir, manifest)


def add_totals(manifest: dict[str, Any], table: pd.DataFrame) -> None:
    """Set the manifest's totals from its runs and the trials ``table``: ``sweep_wall_s``,
    per training set the summed training seconds (``wall_s``), the hardware seen."""
    manifest["sweep_wall_s"] = sum(r.get("wall_s", 0.0) for r in manifest.get("runs", []))
    manifest["wall_s"] = {
        name: float(table.loc[table["train_set"] == name, "wall_s"].sum())
        for name in manifest.get("train_sets", {})
    }
    devices = sorted({str(d) for d in table["device"].dropna() if str(d)})
    clusters = sorted({r["cluster"] for r in manifest.get("runs", []) if "cluster" in r})
    if devices or clusters:
        manifest["hardware"] = f"{', '.join(devices) or 'none yet'} ({'; '.join(clusters)})"
    manifest["updated"] = utc_now()


def next_run_number(exp_dir: Path) -> int:
    runs = (exp_dir / RAY_DIR).glob("run-*")
    numbers = [int(p.name[4:7]) for p in runs if p.name[4:7].isascii() and p.name[4:7].isdigit()]
    return max(numbers, default=0) + 1
