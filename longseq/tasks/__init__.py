"""LightningModules that train longseq models (DESIGN §6).

- ``NextBaseTask``: next-base language model on a genome (bits per base).
- ``SpeciesClassificationTask``: species of a DNA window (accuracy, macro F1, confusion matrix).
- ``WaveformGenerationTask``: next-sample model of raw audio (bits per sample, generated WAVs).

All keep the model at ``self.model``, share one optimiser / schedule (``LongseqTask``) and save
``checkpoint["longseq"]`` so that ``longseq.load`` opens their checkpoints.
"""
from .base import LongseqTask
from .next_base import NextBaseTask
from .resume import LastCheckpoint, ResumableTrainLoader
from .species import SpeciesClassificationTask
from .waveform import WaveformGenerationTask

__all__ = ["LongseqTask", "NextBaseTask", "SpeciesClassificationTask", "WaveformGenerationTask",
           "ResumableTrainLoader", "LastCheckpoint"]
