"""Random access to FASTA files (plain, bgzip or plain gzip) through pyfaidx, with clear errors.

``IndexedFasta(path)`` does the one-time work in the calling (main) process: checks the file,
builds or refreshes the ``.fai`` index, validates every base once, and for plain gzip (which
cannot be seeked) decompresses the file once into the cache. The object then pickles cheaply into
dataloader workers, and each process opens its own pyfaidx handle on first use.

Where files go (nothing else is ever written next to the user's data):

- ``<file>.fai`` (and ``<file>.gzi`` for bgzip) next to the FASTA, as samtools/pyfaidx do; if
  that folder is not writable, into the cache instead;
- the cache, ``$LONGSEQ_CACHE`` or else ``~/.cache/longseq``: ``fasta/<key>/<name>.fa`` for
  decompressed plain gzip, GenBank/EMBL converted to FASTA, and re-wrapped files whose line
  widths pyfaidx refuses, and
  ``validated/<key>`` stamps that skip re-validation. ``<key>`` hashes the file's absolute path,
  size and modification time, so an edited file is processed again.

All writes go to a temporary file first and are renamed into place, so a crash leaves nothing
half-written.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pyfaidx
from tqdm.auto import tqdm

from .._atomic import atomic_path
from .._cache import cache_root

# A C G T, U (RNA), the IUPAC ambiguity codes and N, in either case (what NucleotideTokenizer accepts).
_VALID = b"ACGTURYSWKMBDHVNacgturyswkmbdhvn"
_INVALID_RE = re.compile(rb"[^" + _VALID + rb"]")
_WRAP = 80                      # line width of the files we rewrite into the cache
_SCAN_CHUNK = 1 << 24           # bases read at a time when validating


class FastaError(ValueError):
    """A FASTA file (or its index, or a BED file) is unusable; the message names file and place."""


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _compression(path: Path) -> str:
    """'plain', 'bgzip' or 'gzip', from the magic bytes (the BGZF extra field 'BC')."""
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    if len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzip"
    return "gzip"


def _open_text(path: Path, compression: str):
    return gzip.open(path, "rb") if compression != "plain" else open(path, "rb")


def _first_bad(seq: bytes) -> int | None:
    m = _INVALID_RE.search(seq)
    return None if m is None else m.start()


def normalise_fasta(src: Path, dst: Path, compression: str) -> None:
    """Stream ``src`` into ``dst`` as plain FASTA with fixed-width lines, validating as it goes.

    Raises FastaError naming the source line for: text before the first '>' header, a header
    without a name, a duplicate name, an empty record, or a character outside IUPAC (also giving
    the contig and 0-based offset in it). Memory stays bounded (about 1 MB of sequence buffered).
    """
    label = str(src)
    names: set[str] = set()
    name, header_line, n_bases, buf = None, 0, 0, bytearray()

    def flush(out, final: bool):
        nonlocal buf
        k = len(buf) // _WRAP
        if k:
            block = np.frombuffer(bytes(buf[:k * _WRAP]), dtype=np.uint8).reshape(k, _WRAP)
            out.write(np.hstack([block, np.full((k, 1), 10, np.uint8)]).tobytes())
            del buf[:k * _WRAP]
        if final and buf:
            out.write(bytes(buf) + b"\n")
            buf = bytearray()

    def end_record(out):
        if name is not None:
            if n_bases == 0:
                raise FastaError(f"{label}: line {header_line}: record {name!r} is empty (a header "
                                 "with no sequence after it)")
            flush(out, final=True)

    size = src.stat().st_size
    with atomic_path(dst) as tmp, open(tmp, "wb") as out, _open_text(src, compression) as f, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"Preparing {src.name}",
                 disable=size < (64 << 20), leave=False) as bar:
        raw = f.fileobj if compression != "plain" else f   # progress in compressed bytes read
        last = 0
        for lineno, line in enumerate(f, 1):
            s = line.rstrip(b"\r\n")
            if s.startswith(b">"):
                end_record(out)
                fields = s[1:].split()
                if not fields:
                    raise FastaError(f"{label}: line {lineno}: header '>' has no sequence name")
                name = fields[0].decode("ascii", "replace")
                if name in names:
                    raise FastaError(f"{label}: line {lineno}: duplicate sequence name {name!r}")
                names.add(name)
                header_line, n_bases = lineno, 0
                out.write(s + b"\n")
            elif name is None:
                if s.strip() and not s.startswith(b";"):
                    raise FastaError(f"{label}: line {lineno}: not a FASTA file: expected a '>' header "
                                     f"line before any sequence, found {s[:40]!r}")
            else:
                s = s.strip()
                bad = _first_bad(s)
                if bad is not None:
                    raise FastaError(
                        f"{label}: line {lineno}: invalid character {chr(s[bad])!r} in contig {name!r} "
                        f"at offset {n_bases + bad} (0-based); allowed: A C G T U N, IUPAC codes "
                        "R Y S W K M B D H V, lowercase")
                buf += s
                n_bases += len(s)
                if len(buf) >= (1 << 20):
                    flush(out, final=False)
            if lineno % 65536 == 0:
                pos = raw.tell()
                bar.update(pos - last)
                last = pos
        if name is None:
            raise FastaError(f"{label}: not a FASTA file: no '>' header line found")
        end_record(out)


def sniff_format(path: Path, compression: str) -> str:
    """'genbank', 'embl' or 'fasta' (anything else is left to the FASTA checks), from the first line."""
    with _open_text(path, compression) as f:
        for line in f:
            if line.strip():
                if line.startswith(b"LOCUS"):
                    return "genbank"
                if line.startswith(b"ID   "):
                    return "embl"
                return "fasta"
    return "fasta"


def convert_to_fasta(src: Path, dst: Path, compression: str, fmt: str) -> None:
    """Write the sequences of a GenBank/EMBL file as FASTA (Biopython reads one record at a time)."""
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    count = 0
    with atomic_path(dst) as tmp, open(tmp, "wb") as out, \
            (gzip.open(src, "rt") if compression != "plain" else open(src)) as f:
        try:
            for rec in SeqIO.parse(f, fmt):
                try:
                    seq = bytes(rec.seq)
                except UndefinedSequenceError:
                    raise FastaError(f"{src}: {fmt} record {rec.id!r} has no sequence (only features)") from None
                if not seq:
                    raise FastaError(f"{src}: {fmt} record {rec.id!r} is empty")
                bad = _first_bad(seq)
                if bad is not None:
                    raise FastaError(f"{src}: invalid character {chr(seq[bad])!r} in record {rec.id!r} at "
                                     f"offset {bad} (0-based)")
                out.write(f">{rec.id} {rec.description}\n".encode())
                for i in range(0, len(seq), _WRAP):
                    out.write(seq[i:i + _WRAP] + b"\n")
                count += 1
        except ValueError as e:
            if isinstance(e, FastaError):
                raise
            raise FastaError(f"{src}: not a readable {fmt} file: {e}") from None
    if not count:
        raise FastaError(f"{src}: no {fmt} records found")


class IndexedFasta:
    """A FASTA file ready for random access: ``contigs`` (name -> length) and ``fetch``.

    Args:
        path: FASTA file, plain, bgzip (``bgzip file.fa``) or plain gzip (decompressed once into
            the cache, see the module docstring). GenBank and EMBL files (plain or gzip) are
            converted once to FASTA in the cache with Biopython.
        cache_dir: overrides ``$LONGSEQ_CACHE`` / ``~/.cache/longseq``.
        validate: scan every base once (stamped in the cache, so later opens are instant) so that
            bad characters are reported up front rather than mid-training.
    """

    def __init__(self, path, cache_dir=None, validate: bool = True):
        self._handle, self._pid = None, None
        self.source = Path(path).expanduser()
        if not self.source.exists():
            raise FastaError(f"FASTA file not found: {self.source}")
        if not self.source.is_file():
            raise FastaError(f"not a file: {self.source}")
        if self.source.stat().st_size == 0:
            raise FastaError(f"{self.source}: the file is empty (not FASTA)")
        self.cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        compression = _compression(self.source)
        fmt = sniff_format(self.source, compression)
        if fmt != "fasta":
            self.path = self._cached_copy(compression, fmt)
        elif compression == "gzip":
            # Plain gzip cannot be seeked: decompress it once (validating while at it).
            self.path = self._cached_copy(compression)
        else:
            self.path = self.source
        self.compression = "bgzip" if compression == "bgzip" else "plain"
        try:
            self._index()
        except pyfaidx.FastaIndexingError as e:
            if "not consistent" not in str(e):
                raise FastaError(f"{self.source}: {e}") from None
            warnings.warn(f"{self.source}: irregular line widths ({e}); pyfaidx needs one width per "
                          f"record, so a re-wrapped copy is used from the cache ({self.cache / 'fasta'})",
                          stacklevel=2)
            self.path = self._cached_copy(compression)
            self.compression = "plain"
            self._index()
        self.contigs = self._read_fai()
        empty = [name for name, length in self.contigs.items() if length == 0]
        if empty:
            raise FastaError(f"{self.source}: record {empty[0]!r} is empty (a header with no sequence); "
                             f"{len(empty)} empty record(s) in all")
        if validate:
            self._validate()

    # --- one-time preparation (main process) ----------------------------------------------
    def _cached_copy(self, compression: str, fmt: str = "fasta") -> Path:
        name = self.source.name.removesuffix(".gz").removesuffix(".bgz")
        name = name if name.endswith((".fa", ".fasta", ".fna")) else name + ".fa"
        dst = self.cache / "fasta" / _file_key(self.source) / name
        if not dst.exists():
            if fmt == "fasta":
                normalise_fasta(self.source, dst, compression)
            else:
                convert_to_fasta(self.source, dst, compression, fmt)
            self._stamp(dst)    # normalise_fasta validated every base
        return dst

    def _stamp(self, path: Path) -> None:
        with atomic_path(self.cache / "validated" / _file_key(path)) as tmp:
            tmp.write_text(f"{self.source}\n")

    def _index_paths(self) -> tuple[Path, Path]:
        fai = Path(f"{self.path}.fai")
        if not os.access(self.path.parent, os.W_OK) and not (fai.exists() and not self._stale(fai)):
            fai = self.cache / "index" / _file_key(self.path) / f"{self.path.name}.fai"
        return fai, Path(f"{str(fai)[:-4]}.gzi")

    def _stale(self, index: Path) -> bool:
        return index.stat().st_mtime < self.path.stat().st_mtime

    def _index(self) -> None:
        self.fai, self.gzi = self._index_paths()
        need = not self.fai.exists() or (self.compression == "bgzip" and not self.gzi.exists())
        if self.fai.exists() and self._stale(self.fai):
            warnings.warn(f"{self.fai} is older than {self.path}: the FASTA changed after it was indexed; "
                          "rebuilding the index", stacklevel=3)
            need = True
        if not need:
            return
        # pyfaidx writes its index in place; build it under temporary names and rename, so a crash
        # (or another process reading meanwhile) never sees a half-written index.
        with contextlib.ExitStack() as stack:
            tmp_fai = stack.enter_context(atomic_path(self.fai))
            os.unlink(tmp_fai)
            kwargs = {}
            if self.compression == "bgzip":
                tmp_gzi = stack.enter_context(atomic_path(self.gzi))
                os.unlink(tmp_gzi)
                kwargs["gzi_indexname"] = str(tmp_gzi)
            pyfaidx.Faidx(str(self.path), indexname=str(tmp_fai), **kwargs).close()

    def _read_fai(self) -> dict[str, int]:
        contigs = {}
        with open(self.fai) as f:
            for lineno, line in enumerate(f, 1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 5:
                    raise FastaError(f"{self.fai}: line {lineno}: not a FASTA index line (expected 5 "
                                     "tab-separated fields); delete the file to rebuild it")
                contigs[fields[0]] = int(fields[1])
        return contigs

    def _validate(self) -> None:
        stamp = self.cache / "validated" / _file_key(self.path)
        if stamp.exists():
            return
        total = sum(self.contigs.values())
        with tqdm(total=total, unit="b", unit_scale=True, desc=f"Checking {self.source.name}",
                  disable=total < (200 << 20), leave=False) as bar:
            for name, length in self.contigs.items():
                for start in range(0, length, _SCAN_CHUNK):
                    seq = self.fetch(name, start, min(start + _SCAN_CHUNK, length)).encode("ascii", "replace")
                    bad = _first_bad(seq)
                    if bad is not None:
                        raise FastaError(
                            f"{self.source}: invalid character {chr(seq[bad])!r} in contig {name!r} at "
                            f"offset {start + bad} (0-based); allowed: A C G T U N, IUPAC codes "
                            "R Y S W K M B D H V, lowercase")
                    bar.update(len(seq))
        self._stamp(self.path)

    # --- access (any process) ---------------------------------------------------------------
    def _faidx(self) -> pyfaidx.Faidx:
        if self._handle is None or self._pid != os.getpid():
            # One handle per process: file offsets must not be shared with forked workers.
            kwargs = {"gzi_indexname": str(self.gzi)} if self.compression == "bgzip" else {}
            self._handle = pyfaidx.Faidx(str(self.path), indexname=str(self.fai), as_raw=True,
                                         strict_bounds=True, build_index=False, rebuild=False, **kwargs)
            self._pid = os.getpid()
        return self._handle

    def fetch(self, contig: str, start: int, end: int) -> str:
        """Bases ``[start, end)`` (0-based, half-open) of ``contig`` as a str, case preserved."""
        length = self.contigs.get(contig)
        if length is None:
            raise FastaError(f"{self.source}: no contig named {contig!r}")
        if not 0 <= start < end <= length:
            raise FastaError(f"{self.source}: interval [{start}, {end}) is outside contig {contig!r} "
                             f"(length {length})")
        return self._faidx().from_file(contig, start + 1, end)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None     # workers open their own handle
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __repr__(self) -> str:
        return f"IndexedFasta({str(self.source)!r}, {len(self.contigs)} contigs, {sum(self.contigs.values())} bp)"
