"""longseq: Mamba (selective state space) models for million-length DNA and raw audio.

Public names: ``load``, ``MambaConfig``, ``MambaLM``, ``MambaClassifier``, the tokenizers
``NucleotideTokenizer``, ``ByteTokenizer``, ``MuLawTokenizer``, and ``__version__``.
Kernels live in ``longseq.kernels``; data in ``longseq.datamodules``; training in ``longseq.tasks``.
"""
from importlib.metadata import PackageNotFoundError, version

from .heads import MambaClassifier, MambaLM
from .mamba import MambaConfig
from .tokenizers import ByteTokenizer, MuLawTokenizer, NucleotideTokenizer

try:
    __version__ = version("longseq")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+unknown"

__all__ = ["load", "MambaConfig", "MambaLM", "MambaClassifier", "NucleotideTokenizer", "ByteTokenizer",
           "MuLawTokenizer", "__version__"]


def __getattr__(name):
    # `load` pulls in Lightning and the data modules: import it only when asked for.
    if name == "load":
        from .api import load
        return load
    raise AttributeError(f"module 'longseq' has no attribute {name!r}")
