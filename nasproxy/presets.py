"""Named experiments for ``nasproxy run``, and ``key=value`` overrides of their fields.

An experiment is a ``Preset`` (a small frozen dataclass): the dataset, the proxy methods
and budget, the scoring backbone, the slice of the space and the training protocol. Any
field can be overridden with ``key=value`` strings (``epochs=3``, ``seeds=0,1``,
``sample=none``); ``seeds`` reads as ``search --seeds`` does (a count, or a comma list).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nasproxy.errors import NasproxyError

# 512-d penultimate features on 32x32 inputs: a 5,130-parameter head for 10 classes, so the
# exact Hessian of the influence step stays small.
SMALL_BACKBONE = "w32-d3-relu-instancenorm-avgpooling"
# The 120 width-32 nets that pool: the cheapest part of the space, for CPU-sized runs.
POOLED_W32 = ("w32-*-maxpooling", "w32-*-avgpooling")


@dataclass(frozen=True)
class Preset:
    """One whole experiment; every field can be overridden from the command line."""

    dataset: str = "digits"  # as for --dataset
    methods: tuple[str, ...] = ("influence", "random", "herding", "forgetting")
    per_class: int = 100  # proxy budget: images kept per class
    proxy_seed: int = 0  # seed of every proxy method
    backbone: str = "resnet18"  # scoring network: a ConvNet id or resnet18
    backbone_epochs: int = 50
    space: str = "convnet720"
    sample: int | None = None  # a stratified sample of the space; None = all of it
    archs: tuple[str, ...] = ()  # id patterns (globs, or "re:" regexes) to restrict to
    epochs: int = 100  # training epochs of every searched architecture
    seeds: tuple[int, ...] = (0,)  # training seeds of the sweep
    whole: bool = True  # also train every architecture on the whole train split
    whole_per_class: int | None = None  # a class-balanced subset as the reference; None = all
    # the whole split's own architectures (as nasproxy search's --whole-archs,
    # --whole-sample), and the top K of the proxies confirmed on it (--whole-top, --by)
    whole_archs: tuple[str, ...] = ()
    whole_sample: int | None = None
    whole_top: int | None = None
    whole_by: str = "all"
    top_k: int = 10  # Table 1's "top-k by proxy"
    # the sweep's stacked training (as nasproxy search's flags; None: the device's default)
    fuse: str = "auto"
    max_stack: int | None = None
    rng: str | None = None
    bf16: bool | None = None
    channels_last: bool | None = None
    cuda_graphs: bool | None = None


PRESETS: dict[str, Preset] = {
    # seconds: a wiring check of every stage
    "smoke": Preset(
        per_class=10,
        backbone=SMALL_BACKBONE,
        backbone_epochs=2,
        archs=("w32-*",),
        sample=4,
        epochs=1,
        top_k=3,
    ),
    # a few minutes on a laptop CPU, on the embedded digits data: width-32 nets with pooling
    "demo": Preset(
        per_class=20,
        backbone=SMALL_BACKBONE,
        backbone_epochs=8,
        archs=POOLED_W32,
        sample=8,
        epochs=4,
        seeds=(0, 1),
        top_k=3,
    ),
    # the search itself, a few minutes on a laptop CPU: 24 width-32 nets with pooling on two
    # proxies, then each proxy's top 3 trained on the whole split to pick the architecture
    "find": Preset(
        methods=("influence", "random"),
        per_class=20,
        backbone=SMALL_BACKBONE,
        backbone_epochs=8,
        archs=POOLED_W32,
        sample=24,
        epochs=4,
        seeds=(0, 1),
        whole_top=3,
        top_k=3,
    ),
    # Table 1 on CIFAR-10 within an hour of a 2-core CPU: 8 of the 120 width-32 nets with
    # pooling, 2 seeds, 6 epochs, and 500 per class standing in for the whole set
    "cifar10-cpu": Preset(
        dataset="cifar10",
        backbone=SMALL_BACKBONE,
        backbone_epochs=4,
        archs=POOLED_W32,
        sample=8,
        epochs=6,
        seeds=(0, 1),
        whole_per_class=500,
        top_k=3,
    ),
    # the paper's protocol (Yang et al., Table 1): CIFAR-10, 100 per class, all 720, 100
    # epochs; the paper pruned with a ResNet, whose 512-d features keep the head small
    "paper": Preset(dataset="cifar10", backbone="resnet18"),
}


def parse_seeds(text: str) -> tuple[int, ...]:
    """Training seeds as ``search --seeds`` and ``run --set seeds=`` both take them.

    A count N means seeds 0..N-1; a comma list names them (``0,3,7``; one seed: ``5,``).
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if text.strip() == "0":
        raise NasproxyError("seeds: want a count of at least 1 (or a comma list), got '0'")
    if not parts or not all(p.isdecimal() for p in parts):
        raise NasproxyError(
            f"seeds: want a count N (seeds 0..N-1) or a comma list (0,3,7; one seed: 5,), "
            f"got {text!r}"
        )
    return tuple(int(p) for p in parts) if "," in text else tuple(range(int(parts[0])))


def parse_overrides(preset: Preset, overrides: Sequence[str]) -> Preset:
    """Apply ``key=value`` strings to a preset, converting each value to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    hints = typing.get_type_hints(Preset)
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise NasproxyError(
                f"bad override {item!r}: use key=value with a key among {', '.join(fields)}"
            )
        value = raw.strip()
        changes[key] = parse_seeds(value) if key == "seeds" else _convert(key, value, hints[key])
    return dataclasses.replace(preset, **changes)


def _convert(key: str, raw: str, hint: Any) -> Any:
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if optional:
        if raw.lower() in ("none", ""):
            return None
        hint = next(a for a in hint.__args__ if a is not type(None))
    try:
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            return tuple(item(v.strip()) for v in raw.split(",") if v.strip())
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        return hint(raw)
    except ValueError:
        raise NasproxyError(f"bad value {raw!r} for {key}") from None
