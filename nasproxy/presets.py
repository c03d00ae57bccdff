"""Named experiments for ``nasproxy run``, and ``key=value`` overrides of their settings.

A ``Preset`` nests the proxies' settings, the scoring run's (``ScoringConfig``) and a
``SearchSettings``; its ``--set`` keys are their fields' names, parsed by
``nasproxy.settings`` as the flags of ``nasproxy search`` and ``build-proxy`` are.
The presets and their keys for users: docs/search.md, "Presets of nasproxy run".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nasproxy import settings
from nasproxy.scoring import RESNET18, ScoringConfig
from nasproxy.search.config import SearchSettings, parse_seeds
from nasproxy.settings import SEED, SettingError, at_least, check_fields, ref, setting

__all__ = ["PRESETS", "POOLED_W32", "SMALL_BACKBONE", "Preset", "parse_overrides", "parse_seeds"]

# 512-d penultimate features on 32x32 inputs: a 5,130-parameter head for 10 classes, so the
# exact Hessian of the influence step stays small.
SMALL_BACKBONE = "w32-d3-relu-instancenorm-avgpooling"
# The 120 width-32 nets that pool: the cheapest part of the space, for CPU-sized runs.
POOLED_W32 = ("w32-*-maxpooling", "w32-*-avgpooling")
NB201_SAMPLE = 100  # the nb201 preset's stratified sample of the 15,625 cells


@dataclass(frozen=True)
class Preset:
    """One whole experiment: the proxies' settings, the scoring run's, then the search's,
    nested rather than copied so that a new scoring or search setting is a preset setting
    (and a ``--set`` key) at once.

    A scoring or search setting reads as an attribute too (``preset.backbone``,
    ``preset.epochs``)."""

    methods: tuple[str, ...] = setting(
        ("influence", "random", "herding", "forgetting"),
        nonempty=True,
        help="proxy methods, one proxy each",
    )
    per_class: int = setting(100, check=at_least(1), help="proxy budget: images kept per class")
    proxy_seed: int = setting(0, check=SEED, help="seed of every proxy method")
    # the family of proxy draws and budgets (nasproxy.proxies.draws); both empty: one proxy a
    # method, named by the method alone, as before
    budgets: tuple[int, ...] = setting(
        (),
        check=at_least(1),
        help="proxy budgets: each method at each, e.g. 10,50,100,500 (instead of per_class)",
    )
    proxy_seeds: tuple[int, ...] = setting(
        (),
        parse=lambda text: parse_seeds(text) if text.strip() else (),  # empty: none
        check=SEED,
        help="proxy draws, as seeds: a count N (0..N-1) or a list (0,3,7); each method built "
        "from each seed, its scoring run seeded alike (instead of proxy_seed, backbone_seed)",
    )
    # the scoring run: backbone, backbone_epochs, backbone_seed (0, whatever proxy_seed), ...
    scoring: ScoringConfig = ScoringConfig(backbone=RESNET18)
    top_k: int = setting(10, check=at_least(1), help="Table 1's top-k by proxy")
    search: SearchSettings = SearchSettings(whole=True)  # the sweep (the whole split: on)

    def __post_init__(self) -> None:
        check_fields(self)
        for key in ("methods", "budgets", "proxy_seeds"):
            values = getattr(self, key)
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise SettingError(
                    f"{ref(key)} names {', '.join(map(str, repeated))} more than once"
                )

    @property
    def family(self) -> bool:
        """Whether the proxies are a family of budgets or draws (``budgets`` or
        ``proxy_seeds`` given): each then named ``METHOD-pcK-dSEED``."""
        return bool(self.budgets or self.proxy_seeds)

    @property
    def proxy_budgets(self) -> tuple[int, ...]:
        """The budgets every method is built at: ``budgets``, else ``per_class``."""
        return self.budgets or (self.per_class,)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in settings.leaves(Preset):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return settings.get(self, key)


def _scoring(epochs: int) -> ScoringConfig:
    """A small preset's scoring run: the small backbone, ``epochs`` epochs."""
    return ScoringConfig(backbone=SMALL_BACKBONE, backbone_epochs=epochs)


def _search(**values: Any) -> SearchSettings:
    """A preset's search settings: the whole split on, ``values`` (by key) over defaults."""
    return settings.build(SearchSettings, {"whole": True, **values})


PRESETS: dict[str, Preset] = {
    # seconds: a wiring check of every stage
    "smoke": Preset(
        per_class=10,
        scoring=_scoring(2),
        top_k=3,
        search=_search(archs=("w32-*",), sample=4, epochs=1),
    ),
    # a few minutes on a laptop CPU, on the embedded digits data: width-32 nets with pooling
    "demo": Preset(
        per_class=20,
        scoring=_scoring(8),
        top_k=3,
        search=_search(archs=POOLED_W32, sample=8, epochs=4, seeds=(0, 1)),
    ),
    # the search itself, a few minutes on a laptop CPU: 24 width-32 nets with pooling on two
    # proxies, then each proxy's top 3 trained on the whole split to pick the architecture
    "find": Preset(
        methods=("influence", "random"),
        per_class=20,
        scoring=_scoring(8),
        top_k=3,
        search=_search(archs=POOLED_W32, sample=24, epochs=4, seeds=(0, 1), whole_top=3),
    ),
    # the frontier around Table 1's one point, minutes on a laptop CPU: four methods at three
    # budgets, three draws each, every unit's validation accuracy at epochs 1, 3 and 9, the
    # whole split at each proxy's compute (whole@N), and successive halving on each proxy
    "frontier": Preset(
        budgets=(5, 10, 20),
        proxy_seeds=(0, 1, 2),
        scoring=_scoring(8),
        top_k=3,
        search=_search(archs=POOLED_W32, sample=12, epochs=9, equal_compute=True, halving=3),
    ),
    # Table 1 on CIFAR-10 within an hour of a 2-core CPU: 8 of the 120 width-32 nets with
    # pooling, 2 seeds, 6 epochs, and 500 per class standing in for the whole set
    "cifar10-cpu": Preset(
        scoring=_scoring(4),
        top_k=3,
        search=_search(
            dataset="cifar10",
            archs=POOLED_W32,
            sample=8,
            epochs=6,
            seeds=(0, 1),
            whole_per_class=500,
        ),
    ),
    # the paper's protocol (Yang et al., Table 1): CIFAR-10, 100 per class, all 720, 100
    # epochs; the paper pruned with a ResNet, whose 512-d features keep the head small
    "paper": Preset(scoring=ScoringConfig(backbone=RESNET18), search=_search(dataset="cifar10")),
    # NAS-Bench-201 / NATS-Bench topology cells on CIFAR-10 with the benchmark's protocol
    # (NAS-Bench-201, Dong & Yang, ICLR 2020, Sec. 2.3, Table 1, kept by NATS-Bench for its
    # topology space; the official 200E.config of the benchmark's code: 200 epochs, SGD with
    # Nesterov momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4, batch 256), proxies at
    # 100 per class scored as in the paper, a stratified sample of cells.
    # The whole-set half is the whole split trained on the same sample, or, with
    # $NASPROXY_NATS naming a NATS-Bench directory, its published accuracies
    # (nasproxy.pipeline.nats_directory).
    "nb201": Preset(
        scoring=ScoringConfig(backbone=RESNET18),
        search=_search(
            dataset="cifar10",
            space="nb201",
            sample=NB201_SAMPLE,
            epochs=200,
            lr=0.1,
            batch_size=256,
            momentum=0.9,
            weight_decay=5e-4,
            nesterov=True,
        ),
    ),
}


def parse_overrides(preset: Preset, overrides: Sequence[str]) -> Preset:
    """Apply ``key=value`` strings to a preset, each value read by its setting's parser."""
    return settings.replace_settings(preset, settings.parse_overrides(Preset, overrides))
