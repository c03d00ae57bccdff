"""Proxy training sets: one method a module, named as the method, behind one lazy registry.

The influence machinery the methods read (the Eq. 2 estimate, the refitted head, the
solvers) is ``nasproxy.influence``; the methods themselves are in docs/methods.md.
Each method is ``select(ctx) -> np.ndarray`` (sorted int64 train-split indices; see
``base.SelectionContext``). ``registry`` names them without importing them, so that
reading a proxy file (``nasproxy.proxies.proxy_file``) or building one never loads a
solver's dependencies.
A new built-in method is a new module plus one line in ``registry.BUILTIN``; installed
packages add theirs under the ``nasproxy.methods`` entry-point group.
"""

from nasproxy.proxies.registry import BUILTIN as METHODS

__all__ = ["METHODS"]
