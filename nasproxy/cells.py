"""The NAS-Bench-201 / NATS-Bench topology cell: six edges of a four-node cell, one
operation each, and the benchmark's names and index of every cell.

A cell is a DAG on nodes 0..3 (node 0 the cell's input, node 3 its output); node ``j`` sums
one operation of each earlier node. The six edges, in the benchmark string's order, are
1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2; each takes one of :data:`OPS`. A cell has two names
that map both ways:

* the benchmark's string ``|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|...~0|...~1|...~2|``
  (``op~i`` is the edge from node i; ``+`` separates nodes 1, 2, 3);
* the canonical id, a file-name-safe short form: nodes 1, 2, 3 separated by ``-``, a
  node's edges by ``.``, each operation as its two-letter code (:data:`CODES`), e.g.
  ``c3-no.c3-sk.c3.ap``.

``index`` is the cell's position in the benchmark (0..15624), the order NATS-Bench and
NAS-Bench-201 store their results in: every cell listed with the first edge's operation
most significant (operations in :data:`OPS` order), then shuffled by Python's ``random``
seeded with 88. The network is the benchmark's skeleton (``nasproxy.models_nb201``);
the parameter and multiply-accumulate counts here are its closed forms.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache

from nasproxy.errors import NasproxyError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
CODES = {
    "none": "no",
    "skip_connect": "sk",
    "nor_conv_1x1": "c1",
    "nor_conv_3x3": "c3",
    "avg_pool_3x3": "ap",
}
OP_OF_CODE = {code: op for op, code in CODES.items()}
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), the string's order
NODES = 4
CHANNELS = 16  # the first stage's channels (NATS-Bench's ``channel``)
CELLS_PER_STAGE = 5  # NATS-Bench's ``num_cells``
STAGES = 3  # at CHANNELS, 2 * CHANNELS, 4 * CHANNELS, with a reduction block between
BENCHMARK_SIZE = len(OPS) ** len(EDGES)  # 15,625
SHUFFLE_SEED = 88  # the benchmark's fixed shuffle of its cells
EXAMPLE = "c3-no.c3-sk.c3.ap"
_CONV_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


@dataclass(frozen=True)
class Cell:
    """One NAS-Bench-201 cell: ``ops[e]`` is the operation of edge ``EDGES[e]``."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(EDGES):
            raise NasproxyError(f"a cell has {len(EDGES)} edges, got {len(self.ops)}")
        for op in self.ops:
            if op not in OPS:
                raise NasproxyError(f"unknown cell operation {op!r}; choose from {', '.join(OPS)}")

    def __str__(self) -> str:
        groups, e = [], 0
        for node in range(1, NODES):
            groups.append(".".join(CODES[op] for op in self.ops[e : e + node]))
            e += node
        return "-".join(groups)

    @property
    def id(self) -> str:
        """The canonical id (the short form), used as the key of every result."""
        return str(self)

    @property
    def benchmark(self) -> str:
        """The benchmark's own string, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        groups, e = [], 0
        for node in range(1, NODES):
            groups.append(
                "|" + "|".join(f"{op}~{i}" for i, op in enumerate(self.ops[e : e + node])) + "|"
            )
            e += node
        return "+".join(groups)

    @property
    def aliases(self) -> tuple[str, str]:
        """Both names, which ``--archs`` patterns match."""
        return (self.id, self.benchmark)

    @property
    def index(self) -> int:
        """The cell's index in the benchmark (0..15624)."""
        return _benchmark_index()[self._lex]

    @property
    def _lex(self) -> int:
        """The cell's position with the first edge's operation most significant."""
        lex = 0
        for op in self.ops:
            lex = lex * len(OPS) + OPS.index(op)
        return lex

    @classmethod
    def from_index(cls, index: int) -> Cell:
        """The cell at the benchmark's ``index``."""
        if type(index) is not int or not 0 <= index < BENCHMARK_SIZE:
            raise NasproxyError(f"a cell index is 0..{BENCHMARK_SIZE - 1}, got {index!r}")
        return _from_lex(_benchmark_order()[index])

    @classmethod
    def from_id(cls, text: str) -> Cell:
        """Parse either name of a cell (the short form or the benchmark's string)."""
        text = text.strip()
        if text.startswith("|") or "~" in text:
            return cls(_parse_benchmark(text))
        return cls(_parse_short(text))

    def op_counts(self) -> dict[str, int]:
        """How many edges take each operation, in :data:`OPS` order."""
        return {op: self.ops.count(op) for op in OPS}

    def strata(self) -> tuple[str, ...]:
        """The values a stratified sample balances: each edge's operation."""
        return self.ops

    def describe(self) -> dict[str, object]:
        """The cell's fields as a record: both names, index, edges and operation counts."""
        edges = {f"{to}<-{src}": op for (to, src), op in zip(EDGES, self.ops, strict=True)}
        return {
            "benchmark": self.benchmark,
            "benchmark_index": self.index,
            "edges": edges,
            "op_counts": self.op_counts(),
        }

    def row_fields(self) -> dict[str, object]:
        """The trials table's ConvNet columns (width, depth, act, norm, pool) for a cell:
        its skeleton's first-stage channels, cells a stage, ReLU, batch norm and global
        pooling (the cell itself is the row's ``arch``)."""
        return {
            "width": CHANNELS,
            "depth": CELLS_PER_STAGE,
            "act": "relu",
            "norm": "batchnorm",
            "pool": "global",
        }

    def check_input(self, image_size: int) -> None:
        """Refuse an image the two stride-2 reduction blocks cannot halve twice evenly (the
        residual path's 2x2 average pool and the stride-2 conv must agree in size)."""
        if image_size < 4 or image_size % 4:
            raise NasproxyError(
                f"a NAS-Bench-201 network takes images whose side is a multiple of 4, "
                f"got {image_size}x{image_size}"
            )

    def param_count(self, in_channels: int, num_classes: int, image_size: int) -> int:
        """Trainable parameters, in closed form: the stem conv and its BN, the cells'
        convolutions (ReLU-conv-BN, no conv bias), the two residual reduction blocks, the
        last BN and the linear head. Parameter-free edges (none, skip, pooling) add
        nothing; the image size changes nothing."""
        c = CHANNELS
        total = 9 * in_channels * c + 2 * c  # stem
        for stage in range(STAGES):
            ch = c << stage
            per_cell = sum(k * k * ch * ch + 2 * ch for k in self._conv_kernels())
            total += CELLS_PER_STAGE * per_cell
            if stage + 1 < STAGES:
                total += _reduction_params(ch, 2 * ch)
        last = c << (STAGES - 1)
        return total + 2 * last + last * num_classes + num_classes

    def macs(self, in_channels: int, num_classes: int, image_size: int) -> int:
        """Multiply-accumulates of one forward pass: every convolution and the head."""
        c, size = CHANNELS, image_size
        total = size * size * 9 * in_channels * c  # stem
        for stage in range(STAGES):
            ch = c << stage
            per_cell = sum(size * size * k * k * ch * ch for k in self._conv_kernels())
            total += CELLS_PER_STAGE * per_cell
            if stage + 1 < STAGES:
                half = size // 2
                total += half * half * (9 * ch * 2 * ch + 9 * 4 * ch * ch + ch * 2 * ch)
                size = half
        return total + (c << (STAGES - 1)) * num_classes

    def _conv_kernels(self) -> list[int]:
        return [_CONV_KERNEL[op] for op in self.ops if op in _CONV_KERNEL]


def _reduction_params(cin: int, cout: int) -> int:
    """The residual reduction block: two ReLU-conv3x3-BN (the first of stride 2) and a
    2x2 average pool then 1x1 conv on the shortcut."""
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + cin * cout


def _from_lex(lex: int) -> Cell:
    ops = []
    for _ in EDGES:
        lex, digit = divmod(lex, len(OPS))
        ops.append(OPS[digit])
    return Cell(tuple(reversed(ops)))


@cache
def _benchmark_order() -> tuple[int, ...]:
    """``order[index]``: the lexicographic position of the benchmark's cell ``index``."""
    order = list(range(BENCHMARK_SIZE))
    random.Random(SHUFFLE_SEED).shuffle(order)
    return tuple(order)


@cache
def _benchmark_index() -> tuple[int, ...]:
    """``index[lex]``: the inverse of :func:`_benchmark_order`."""
    inverse = [0] * BENCHMARK_SIZE
    for index, lex in enumerate(_benchmark_order()):
        inverse[lex] = index
    return tuple(inverse)


def all_cells() -> list[Cell]:
    """Every cell, in the benchmark's index order."""
    return [_from_lex(lex) for lex in _benchmark_order()]


_TOKEN = re.compile(r"([^~|]*)~(.*)")


def _parse_benchmark(text: str) -> tuple[str, ...]:
    """The six operations of a benchmark string, or one line naming what is wrong."""
    where = f"bad cell {text!r}"
    groups = text.split("+")
    if len(groups) != NODES - 1:
        raise NasproxyError(
            f"{where}: {len(groups)} node(s), a cell has {NODES - 1} ('+' between nodes 1, 2, 3)"
        )
    ops = []
    for node, group in enumerate(groups, start=1):
        if not (group.startswith("|") and group.endswith("|")) or len(group) < 2:
            raise NasproxyError(f"{where}: node {node} must read |op~0|...|")
        tokens = group[1:-1].split("|")
        if len(tokens) != node:
            raise NasproxyError(
                f"{where}: node {node} has {len(tokens)} edge(s), it takes {node} (from nodes "
                f"0..{node - 1})"
            )
        for source, token in enumerate(tokens):
            match = _TOKEN.fullmatch(token)
            if match is None:
                raise NasproxyError(f"{where}: edge {token!r} is not op~node")
            op, src = match.groups()
            if op not in OPS:
                raise NasproxyError(
                    f"{where}: unknown operation {op!r}; choose from {', '.join(OPS)}"
                )
            if src != str(source):
                raise NasproxyError(
                    f"{where}: node {node}'s edge {source + 1} reads node {src!r}, expected "
                    f"{source} (edges from nodes 0..{node - 1}, in order)"
                )
            ops.append(op)
    return tuple(ops)


def _parse_short(text: str) -> tuple[str, ...]:
    """The six operations of a short id, or one line naming what is wrong."""
    where = f"bad cell id {text!r}"
    groups = text.split("-")
    if len(groups) != NODES - 1:
        raise NasproxyError(
            f"{where}: {len(groups)} node(s), a cell has {NODES - 1} ('-' between nodes 1, 2, "
            f"3, e.g. {EXAMPLE})"
        )
    ops = []
    for node, group in enumerate(groups, start=1):
        codes = group.split(".")
        if len(codes) != node:
            raise NasproxyError(
                f"{where}: node {node} has {len(codes)} edge(s), it takes {node} ('.' between "
                f"edges, e.g. {EXAMPLE})"
            )
        for code in codes:
            if code not in OP_OF_CODE:
                known = ", ".join(f"{c}={op}" for op, c in CODES.items())
                raise NasproxyError(f"{where}: unknown operation code {code!r}; codes: {known}")
            ops.append(OP_OF_CODE[code])
    return tuple(ops)
