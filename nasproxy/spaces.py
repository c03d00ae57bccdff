"""Search spaces: YAML option lists expanded into an ordered, indexable set of architectures.

A space file (``search_spaces/NAME.yaml``, installed with the package as
``nasproxy.search_spaces``) names its family (its kind of architecture) and lists the
options of each of the family's fields; the space is their Cartesian product in a fixed
order, so an index and an id name the same architecture on every machine. The families:

* ``convnet`` (the default): the ConvNet of :class:`Arch`, ids such as
  ``w128-d3-relu-instancenorm-avgpooling``; fields width, depth, act, norm, pool;
* ``nb201``: the NAS-Bench-201 / NATS-Bench topology cell (:class:`nasproxy.cells.Cell`),
  ids such as ``c3-no.c3-sk.c3.ap`` or the benchmark's ``|nor_conv_3x3~0|+|...|``; one
  field, ``ops``, the operations an edge may take; the cells in the benchmark's index order.

``load`` checks the whole file (keys, types, values, family, name) before any architecture
is made, so a mistake is one line before any work. ``parse_arch`` reads an id of any family.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nasproxy import cells
from nasproxy.cells import Cell
from nasproxy.errors import NasproxyError

SPACES_PACKAGE = "nasproxy.search_spaces"  # the top-level search_spaces/ folder, as package data
FIELDS = ("width", "depth", "act", "norm", "pool")
ACTIVATIONS = ("sigmoid", "relu", "leakyrelu")
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
POOLINGS = ("none", "maxpooling", "avgpooling")
GROUPNORM_GROUPS = 4  # Dataset Condensation's "groupnorm" is GroupNorm(4, C)
FAMILIES = ("convnet", "nb201")  # a space file's ``family`` (optional; convnet by default)
CELL_FIELDS = ("ops",)  # the options of an nb201 space file
SPACE_KEYS = ("name", "family", "options")  # a space file's top-level keys
_CONVNET_ID = re.compile(r"w\d")  # how a ConvNet id starts


@dataclass(frozen=True, order=True)
class Arch:
    """One ConvNet: ``depth`` blocks of conv(3x3, ``width``) -> norm -> act -> pool."""

    width: int
    depth: int
    act: str
    norm: str
    pool: str

    def __post_init__(self) -> None:
        if type(self.width) is not int or type(self.depth) is not int:
            raise NasproxyError(
                f"width and depth must be integers, got {self.width!r}, {self.depth!r}"
            )
        if self.width < 1 or self.depth < 1:
            raise NasproxyError(f"width and depth must be positive, got {self.width}, {self.depth}")
        for value, allowed, what in (
            (self.act, ACTIVATIONS, "activation"),
            (self.norm, NORMS, "norm"),
            (self.pool, POOLINGS, "pooling"),
        ):
            if value not in allowed:
                raise NasproxyError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
        if self.norm == "groupnorm" and self.width % GROUPNORM_GROUPS:
            raise NasproxyError(f"groupnorm needs a width divisible by {GROUPNORM_GROUPS}")

    def __str__(self) -> str:
        return f"w{self.width}-d{self.depth}-{self.act}-{self.norm}-{self.pool}"

    @property
    def id(self) -> str:
        """The canonical id, used as the key of every result."""
        return str(self)

    @property
    def aliases(self) -> tuple[str]:
        """The names ``--archs`` patterns match: the id."""
        return (self.id,)

    def strata(self) -> tuple[int | str, ...]:
        """The values a stratified sample balances: the fields."""
        return tuple(getattr(self, f) for f in FIELDS)

    def describe(self) -> dict[str, Any]:
        """The architecture's fields as a record."""
        return {f: getattr(self, f) for f in FIELDS}

    def row_fields(self) -> dict[str, Any]:
        """The trials table's architecture columns (``FIELDS``): the fields."""
        return self.describe()

    @classmethod
    def from_id(cls, arch_id: str) -> Arch:
        """Parse ``w128-d3-relu-instancenorm-avgpooling`` back into an Arch."""
        parts = arch_id.split("-")
        if len(parts) != 5 or not parts[0].startswith("w") or not parts[1].startswith("d"):
            raise NasproxyError(
                f"bad architecture id {arch_id!r}; "
                "expected e.g. w128-d3-relu-instancenorm-avgpooling"
            )
        try:
            width, depth = int(parts[0][1:]), int(parts[1][1:])
        except ValueError:
            raise NasproxyError(
                f"bad architecture id {arch_id!r}: width/depth not integers"
            ) from None
        return cls(width, depth, parts[2], parts[3], parts[4])

    def feature_sizes(self, image_size: int) -> list[int]:
        """Spatial size entering each block, then the size after the last block."""
        sizes = [image_size]
        for _ in range(self.depth):
            sizes.append(sizes[-1] // 2 if self.pool != "none" else sizes[-1])
        return sizes

    def check_input(self, image_size: int) -> None:
        """Refuse a depth that pools the image below 1x1."""
        if self.feature_sizes(image_size)[-1] < 1:
            raise NasproxyError(
                f"{self} pools a {image_size}x{image_size} input below 1x1; use a smaller depth"
            )

    def param_count(self, in_channels: int, num_classes: int, image_size: int) -> int:
        """Trainable parameters, in closed form (conv weights + biases, norm affines, head)."""
        sizes = self.feature_sizes(image_size)
        total, cin = 0, in_channels
        for block in range(self.depth):
            total += 9 * cin * self.width + self.width
            if self.norm == "layernorm":  # LayerNorm([C, H, W]) over the pre-pooling map
                total += 2 * self.width * sizes[block] ** 2
            elif self.norm != "none":
                total += 2 * self.width
            cin = self.width
        features = self.width * sizes[-1] ** 2
        return total + features * num_classes + num_classes

    def macs(self, in_channels: int, num_classes: int, image_size: int) -> int:
        """Multiply-accumulates of one forward pass (convolutions and the head)."""
        sizes = self.feature_sizes(image_size)
        total, cin = 0, in_channels
        for block in range(self.depth):
            total += sizes[block] ** 2 * self.width * cin * 9
            cin = self.width
        return total + self.width * sizes[-1] ** 2 * num_classes


AnyArch = Arch | Cell  # an architecture of any family


def parse_arch(text: str) -> AnyArch:
    """The architecture an id of any family names: a ConvNet id (``w32-d3-...``), a cell's
    short id (``c3-no.c3-sk.c3.ap``) or the benchmark's string (``|nor_conv_3x3~0|+|...|``)."""
    if _CONVNET_ID.match(text):
        return Arch.from_id(text)
    if not any(mark in text for mark in ".|~"):  # no mark of a cell: say both forms
        raise NasproxyError(
            f"bad architecture id {text!r}; expected a ConvNet id (e.g. "
            f"w128-d3-relu-instancenorm-avgpooling) or a NAS-Bench-201 cell (e.g. "
            f"{cells.EXAMPLE} or |nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|...|)"
        )
    return Cell.from_id(text)


def canonical_id(text: str) -> str:
    """The canonical id of an architecture given in any of its forms (a reference file's
    ids may be a benchmark's own strings)."""
    return parse_arch(text).id


def describe(arch: AnyArch, in_channels: int, num_classes: int, image_size: int) -> dict[str, Any]:
    """One architecture as a record: its id and fields, parameters and MACs on the given
    input shape (``nasproxy space --json`` and ``--describe``)."""
    return {
        "id": arch.id,
        **arch.describe(),
        "params": arch.param_count(in_channels, num_classes, image_size),
        "macs": arch.macs(in_channels, num_classes, image_size),
    }


def unit_cost(
    arch: AnyArch, n_images: int, in_channels: int, num_classes: int, image_size: int
) -> float:
    """The planner's cost model of one work unit: the multiply-accumulates of one forward
    pass of ``arch`` on images of the given shape, times the ``n_images`` of its training
    set. Units of one training set share epochs and batch size, so this is proportional
    to a unit's training work per epoch; the search multiplies it by each set's epochs
    (a set ``BASE@N`` trains N) to balance chunks and estimate the time left, and the
    report estimates the units that did not run by it (docs/find.md)."""
    return float(arch.macs(in_channels, num_classes, image_size)) * n_images


class Space(Sequence[AnyArch]):
    """An ordered, indexable collection of architectures with an id <-> index round trip."""

    def __init__(self, name: str, archs: Sequence[AnyArch]):
        self.name = name
        self._archs = tuple(archs)
        self._index = {str(a): i for i, a in enumerate(self._archs)}
        if len(self._index) != len(self._archs):
            raise NasproxyError(f"space {name!r} lists an architecture twice")

    def __len__(self) -> int:
        return len(self._archs)

    def __getitem__(self, i):  # type: ignore[override]
        return self._archs[i]

    def __iter__(self) -> Iterator[AnyArch]:
        return iter(self._archs)

    @property
    def ids(self) -> list[str]:
        """All ids, in the space's order."""
        return list(self._index)

    def index(self, arch_id: str | AnyArch) -> int:  # type: ignore[override]
        """Position of an id (a cell's in either form) in the space; a clear error for an
        unknown one."""
        key = str(arch_id)
        if key not in self._index and isinstance(arch_id, str) and not _CONVNET_ID.match(key):
            try:
                key = str(Cell.from_id(key))  # the benchmark's string of a cell
            except NasproxyError:
                pass
        if key not in self._index:
            raise NasproxyError(f"architecture {key!r} is not in space {self.name!r}")
        return self._index[key]

    def get(self, arch_id: str) -> AnyArch:
        """The architecture with this id."""
        return self._archs[self.index(arch_id)]


def spaces_dir() -> Path:
    """The folder of the shipped space files, wherever the package is installed."""
    return Path(str(resources.files(SPACES_PACKAGE)))


def available() -> list[str]:
    """Names of the spaces shipped in ``search_spaces/``."""
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


def resolve_path(name_or_path: str | Path) -> Path:
    """A space name (``convnet720``) or a path to a YAML file, as a path that exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise NasproxyError(f"space file {path} does not exist")
        return path
    candidate = spaces_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise NasproxyError(
            f"unknown space {str(name_or_path)!r}; available: {', '.join(available()) or 'none'}"
            " (or give a path to a .yaml file)"
        )
    return candidate


def load(name_or_path: str | Path, image_size: int = 32) -> Space:
    """Load a space by name or YAML path, checking the file's schema (``_check_spec``) and
    that every architecture fits ``image_size``."""
    path = resolve_path(name_or_path)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NasproxyError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    name, family, lists = _check_spec(spec, path)
    if family == "nb201":
        allowed = set(lists[0])
        archs: list[AnyArch] = [c for c in cells.all_cells() if allowed.issuperset(c.ops)]
    else:
        archs = [Arch(*combo) for combo in itertools.product(*lists)]
    for arch in archs:
        arch.check_input(image_size)
    return Space(name, archs)


def _check_spec(spec: object, path: str | Path) -> tuple[str, str, list[list[int | str]]]:
    """The name, the family and the option lists (in the family's field order) of a parsed
    space file, or one line naming what is wrong: an unknown key, a missing or non-string
    name, an unknown family, a missing or unknown field, or an option of the wrong type or
    value."""
    if not isinstance(spec, dict):
        raise NasproxyError(f"{path}: expected a mapping of {', '.join(SPACE_KEYS)}")
    unknown = sorted(str(k) for k in spec if k not in SPACE_KEYS)
    if unknown:
        raise NasproxyError(
            f"{path}: unknown key {', '.join(unknown)}; a space file has {', '.join(SPACE_KEYS)}"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise NasproxyError(f"{path}: 'name' must be a non-empty string, got {name!r}")
    family = spec.get("family", FAMILIES[0])
    if family not in FAMILIES:
        raise NasproxyError(f"{path}: unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    fields = CELL_FIELDS if family == "nb201" else FIELDS
    options = spec.get("options")
    if not isinstance(options, dict):
        raise NasproxyError(f"{path}: expected an 'options' mapping of {', '.join(fields)}")
    unknown = sorted(str(k) for k in options if k not in fields)
    if unknown:
        raise NasproxyError(
            f"{path}: unknown option {', '.join(unknown)}; the fields are {', '.join(fields)}"
        )
    missing = [f for f in fields if f not in options]
    if missing:
        raise NasproxyError(f"{path}: options lack {', '.join(missing)}")
    choices = {"act": ACTIVATIONS, "norm": NORMS, "pool": POOLINGS, "ops": cells.OPS}
    lists = []
    for field in fields:
        values = options[field]
        if not isinstance(values, list) or not values:
            raise NasproxyError(f"{path}: options.{field} must be a non-empty list")
        for value in values:
            if field in choices and value not in choices[field]:
                raise NasproxyError(
                    f"{path}: options.{field} holds {value!r}; choose from "
                    f"{', '.join(choices[field])}"
                )
            if field not in choices and (type(value) is not int or value < 1):
                raise NasproxyError(
                    f"{path}: options.{field} holds {value!r}; it takes positive integers"
                )
            if values.count(value) > 1:
                raise NasproxyError(f"{path}: options.{field} lists {value!r} twice")
        lists.append(values)
    return name, family, lists
