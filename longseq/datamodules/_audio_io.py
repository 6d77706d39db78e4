"""Reading audio for the waveform loader: probing, windowed reads, mono mixing, resampling cache.

Everything that touches an audio file lives here, so that every failure can name the file at
fault. Reads go through soundfile (libsndfile) with ``seek`` + ``read``: a window never decodes
more than the window itself (plus the codec's own block, e.g. one FLAC frame).

Multichannel files are mixed to mono by the mean of their channels, or one channel is taken
(``channel=k``). A file whose rate differs from the target is resampled once, whole, with soxr
(streamed in blocks, so memory stays flat) into a float32 WAV in the cache directory; windows
are then exact slices of ``soxr.resample(mono(file), file_rate, target_rate)``.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .._cache import cache_root

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_BLOCK = 1 << 18  # frames per block when resampling a whole file


class AudioFileError(ValueError):
    """A problem with one audio file; the message starts with the file's path."""


def default_cache_dir() -> Path:
    """Where resampled copies go: ``$LONGSEQ_CACHE/audio``, else ``~/.cache/longseq/audio``."""
    return cache_root() / "audio"


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says."""
    path: str
    frames: int
    samplerate: int
    channels: int
    format: str
    subtype: str


def probe(path) -> AudioInfo:
    """Read the header of ``path``; raise ``AudioFileError`` naming it if it is not usable audio."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioFileError(
            f"{path}: cannot be read as audio ({e}). Supported: WAV, FLAC, OGG (Vorbis/Opus) and "
            "the other formats libsndfile reads") from None
    if info.frames <= 0:
        raise AudioFileError(f"{path}: zero-length audio (the header says {info.frames} frames)")
    # libsndfile quietly shortens a WAV/AIFF whose data chunk runs past the end of the file;
    # its log says "data : <declared> (should be <present>)". A declared size beyond what is
    # there means a truncated copy (placeholder sizes of streamed writers are left alone).
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.M)
    if m and int(m.group(2)) < int(m.group(1)) < 0xFFFFFFFF:
        raise AudioFileError(f"{path}: truncated: its header declares {m.group(1)} bytes of audio "
                             f"data but only {m.group(2)} are present")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioFileError(f"{path}: invalid header (rate {info.samplerate} Hz, "
                             f"{info.channels} channels)")
    return AudioInfo(path, int(info.frames), int(info.samplerate), int(info.channels),
                     info.format, info.subtype)


def to_mono(block: np.ndarray, channel: int | None, path: str) -> np.ndarray:
    """(frames, channels) float32 -> (frames,) float32: mean of channels, or channel ``channel``."""
    n_ch = block.shape[1]
    if channel is not None:
        if not -n_ch <= channel < n_ch:
            raise AudioFileError(f"{path}: has {n_ch} channel(s); channel={channel} does not exist")
        return np.ascontiguousarray(block[:, channel])
    if n_ch == 1:
        return np.ascontiguousarray(block[:, 0])
    return block.mean(axis=1, dtype=np.float32)


def check_finite(x: np.ndarray, path: str, offset: int) -> None:
    """Raise naming the file and frame if ``x`` (read from ``offset``) holds NaN or inf."""
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise AudioFileError(f"{path}: non-finite sample ({x[bad]}) at frame {offset + bad}")


class WindowReader:
    """Reads mono windows ``[start, start + n)`` of audio files, keeping a few handles open.

    Handles belong to the process that opened them: after a fork (dataloader workers) the
    child opens its own, so no file offset is ever shared between processes.
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._handles: OrderedDict[str, sf.SoundFile] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self):  # handles never travel to workers
        return {"max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(state["max_open"])

    def _handle(self, path: str) -> sf.SoundFile:
        if self._pid != os.getpid():
            self._handles, self._pid = OrderedDict(), os.getpid()
        f = self._handles.get(path)
        if f is not None:
            self._handles.move_to_end(path)
            return f
        try:
            f = sf.SoundFile(path)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioFileError(f"{path}: cannot be opened as audio ({e})") from None
        self._handles[path] = f
        if len(self._handles) > self.max_open:
            self._handles.popitem(last=False)[1].close()
        return f

    def _read_frames(self, path: str, start: int, n: int, dtype: str, always_2d: bool) -> np.ndarray:
        """Frames ``[start, start + n)`` as soundfile gives them; a failed or short read names the file."""
        f = self._handle(path)
        try:
            f.seek(start)
            block = f.read(n, dtype=dtype, always_2d=always_2d)
        except (sf.LibsndfileError, RuntimeError) as e:
            self._handles.pop(path, None)
            raise AudioFileError(f"{path}: read failed at frame {start} ({e}); the file may be "
                                 "truncated or corrupt") from None
        if block.shape[0] != n:
            raise AudioFileError(
                f"{path}: truncated or corrupt: the header says {f.frames} frames, but reading "
                f"{n} frames from frame {start} returned only {block.shape[0]}")
        return block

    def read(self, path: str, start: int, n: int, channel: int | None = None) -> np.ndarray:
        """Mono float32 samples ``[start, start + n)``; the caller keeps ``start + n <= frames``."""
        block = self._read_frames(path, start, n, "float32", always_2d=True)
        x = to_mono(block, channel, path)
        check_finite(x, path, start)
        return x

    def read_int16(self, path: str, start: int, n: int) -> np.ndarray:
        """Frames ``[start, start + n)`` of a mono 16-bit file as int16 (no float conversion).

        soundfile's float read of 16-bit PCM is exactly ``int16 / 32768``, so the loader can
        quantise these through a 65536-entry table built with the tokenizer itself."""
        return self._read_frames(path, start, n, "int16", always_2d=False)

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


def resampled_path(info: AudioInfo, rate: int, channel: int | None, quality: str,
                   cache_dir: Path) -> Path:
    """Cache file name for ``info`` resampled to ``rate``: keyed by the source's absolute path,
    size and modification time, the target rate, the channel choice and the soxr quality, so
    an edited source or a different setting never reuses a stale copy."""
    st = os.stat(info.path)
    key = "|".join(map(str, (os.path.abspath(info.path), st.st_size, st.st_mtime_ns, rate,
                             channel, quality, "v1")))
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / f"{Path(info.path).stem}-{digest}-{rate}hz.wav"


def ensure_resampled(info: AudioInfo, rate: int, channel: int | None, quality: str,
                     cache_dir: Path) -> Path:
    """Resample the whole of ``info.path`` (mono-mixed) to ``rate`` into the cache, once.

    Streams blocks through ``soxr.ResampleStream``, whose output equals ``soxr.resample`` of the
    whole signal sample for sample. Writes a float32 WAV (RF64 past 4 GB) to a temporary name
    and renames it, so a crash never leaves a half-written file under the final name.
    """
    import soxr

    out = resampled_path(info, rate, channel, quality, cache_dir)
    if out.exists():
        return out
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the audio cache directory {cache_dir} ({e}); set "
                      "cache_dir= or $LONGSEQ_CACHE to a writable place") from None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    container = "RF64" if info.frames * 4 * rate / info.samplerate > 2**31 else "WAV"
    stream = soxr.ResampleStream(info.samplerate, rate, 1, dtype="float32", quality=quality)
    done = 0
    try:
        with sf.SoundFile(info.path) as src, sf.SoundFile(tmp, "w", samplerate=rate, channels=1,
                                                          format=container, subtype="FLOAT") as dst:
            while True:
                try:
                    block = src.read(_BLOCK, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioFileError(f"{info.path}: read failed at frame {done} ({e}); the "
                                         "file may be truncated or corrupt") from None
                if block.shape[0] == 0:
                    break
                x = to_mono(block, channel, info.path)
                check_finite(x, info.path, done)
                done += block.shape[0]
                dst.write(stream.resample_chunk(x, last=False))
            dst.write(stream.resample_chunk(np.zeros(0, np.float32), last=True))
        if done != info.frames:
            raise AudioFileError(f"{info.path}: truncated or corrupt: the header says "
                                 f"{info.frames} frames but only {done} could be decoded")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
