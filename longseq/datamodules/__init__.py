"""Lightning DataModules that stream windows of genomes and waveforms.

Names are imported lazily so that using one modality never imports the other's dependencies.
"""
import importlib

_EXPORTS = {
    "GenomeDataModule": "genome",
    "SpeciesDataModule": "species",
    "WaveformDataModule": "audio",
    "SequenceLengthWarmup": "warmup",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'longseq.datamodules' has no attribute {name!r}")
