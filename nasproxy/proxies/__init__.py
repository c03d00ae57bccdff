"""Proxy training sets: one method a module, all behind one registry.

Each entry is ``select(ctx) -> np.ndarray`` (sorted int64 train-split indices; see
``base.SelectionContext``). A new method is a new module plus one line here.
``nasproxy.proxies.build`` runs a method and writes the proxy file.
"""

from nasproxy.proxies import forgetting, herding, pruning, random
from nasproxy.proxies.base import Select

METHODS: dict[str, Select] = {
    "influence": pruning.select,
    "random": random.select,
    "herding": herding.select,
    "forgetting": forgetting.select,
}
