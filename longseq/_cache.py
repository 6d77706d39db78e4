"""Where longseq keeps what it can recompute (decompressed genomes, resampled audio, kernel tunings)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The longseq cache folder: ``$LONGSEQ_CACHE`` if set, else ``~/.cache/longseq``."""
    root = os.environ.get("LONGSEQ_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "longseq"
