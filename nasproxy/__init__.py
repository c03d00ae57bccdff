"""nasproxy: how much of a dataset can a neural-architecture search throw away?

Implements "Dataset Pruning: Reducing Training Data by Examining Generalization
Influence" (Yang et al.) and its NAS experiment (Table 1).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nasproxy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
