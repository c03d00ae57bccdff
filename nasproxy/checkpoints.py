"""Epoch checkpoints: the epochs of a run after which its validation accuracy is recorded.

A run of E epochs measures its validation accuracy after a few of its own epochs as it goes
(``nasproxy.train.train``, ``nasproxy.multitrain.train_many``), so one unit gives the
accuracy of its architecture at several fidelities for the price of a few evaluations. A
checkpoint is the same run seen early: under the cosine schedule its learning rate at epoch
e < E has not decayed to zero, so it is not a run of e epochs (docs/search.md).

The setting (``TrainConfig.checkpoints``) is text, one of

* a count ``K`` (default 4): epochs E/3^(K-1), ..., E/9, E/3 and E, each rounded to the
  nearest whole epoch (halves up), at least 1, repeats dropped; E = 100 gives 4, 11, 33,
  100, E = 10 gives 1, 3, 10;
* a comma list of epochs (``10,30,100``; one epoch: ``5,``): those up to E, and E;
* ``none``: no checkpoints, not even the final one (the unit's ``val_checkpoints`` is "").

A list's epochs above a run's E (a training set with fewer epochs of its own) are left out
of that run. Checkpoints do not change training (no random draws, the norm layers back in
train mode, the same schedule), so the setting is not part of an experiment's protocol.
"""

from __future__ import annotations

import math

from nasproxy.settings import Check, SettingError, ref

DEFAULT = "4"  # E/27, E/9, E/3 and E
NONE = "none"
GROWTH = 3  # a count's checkpoints are E divided by powers of this
WANT = "none, a count K of checkpoints (E/3^(K-1), ..., E/3, E), or a comma list of epochs"


def _whole(text: str) -> bool:
    return text.isascii() and text.isdecimal()


def _epochs_list(text: str) -> list[int] | None:
    """A comma list's epochs (whole numbers >= 1, no repeats), or None when it is not one."""
    parts = [p.strip() for p in text.split(",")]
    if parts[-1] == "":
        parts = parts[:-1]  # "5," names one epoch
    if not parts or not all(_whole(p) and int(p) >= 1 for p in parts):
        return None
    epochs = [int(p) for p in parts]
    return epochs if len(set(epochs)) == len(epochs) else None


def canonical(text: str) -> str | None:
    """The setting's canonical text (``none``, ``K`` or ascending epochs each followed by a
    comma, ``4,11,``), or None when ``text`` is none of the forms of the module docstring."""
    text = str(text).strip().lower()
    if text == NONE:
        return NONE
    if "," not in text:
        return str(int(text)) if _whole(text) and int(text) >= 1 else None
    epochs = _epochs_list(text)
    return None if epochs is None else "".join(f"{e}," for e in sorted(epochs))


def parse_checkpoints(text: str) -> str:
    """The setting from text, canonical; anything else is a one-line ``SettingError``."""
    value = canonical(text)
    if value is None:
        epochs = [p.strip() for p in str(text).split(",") if p.strip()]
        twice = sorted({e for e in epochs if epochs.count(e) > 1})
        why = f"epoch {twice[0]} is repeated" if twice else f"want {WANT}"
        raise SettingError(f"bad value {text!r} for {ref('checkpoints')}: {why}")
    return value


CHECKPOINTS = Check(lambda v: canonical(v) is not None, WANT)


def checkpoint_epochs(spec: str, epochs: int) -> list[int]:
    """The epochs, ascending, after which a run of ``epochs`` epochs records its validation
    accuracy under the setting ``spec``: the last is ``epochs`` unless ``spec`` is none."""
    value = canonical(spec)
    if value is None:
        raise SettingError(f"bad value {spec!r} for {ref('checkpoints')}: want {WANT}")
    if value == NONE:
        return []
    if "," in value:
        chosen = {e for e in _epochs_list(value) or [] if e < epochs}
    else:
        chosen = set()
        for j in range(1, int(value)):
            epoch = max(1, math.floor(epochs / GROWTH**j + 0.5))
            chosen.add(epoch)
            if epoch == 1:  # every further one is 1 too
                break
    return sorted(chosen | {epochs})
