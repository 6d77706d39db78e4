#!/usr/bin/env python3
"""Build a larger real audio set than the one bundled in the wheel.

    python scripts/build_audio_set.py OUTDIR [--data /work/shared/data] [--no-render] [--force]

Writes, under OUTDIR:

- ``digits_tts/<digit>/<speaker>_<digit>.flac`` + ``speakers.tsv``: all spoken-digit clips of the
  shared data set (750 clips, 75 TTS voices; the wheel ships 100 of them), copied after checking
  each one decodes, is 16 kHz mono and 1.000 s long.
- ``piano_16k/*.flac``: the bundled prelude plus every other MIDI score of
  ``audio/music/midi_music21_piano`` rendered to 16 kHz mono 16-bit FLAC by
  ``tools/render_midi_16k.sh`` (FluidSynth + FluidR3 GM piano, then sox). Rendering needs the
  Debian packages fluidsynth, fluid-soundfont-gm and sox; without them the script says so and
  builds the rest (or pass ``--no-render``). All 42 scores give 27.4 minutes (36 MB); the
  rendering took 31 s on 2 cores.
- ``MANIFEST.tsv``: every file with its frames, rate and SHA-256, for provenance.

Every output file is written to a temporary name and renamed when complete, so an interrupted
run leaves no half-written file; rerunning skips files already built (``--force`` rebuilds).
Use the result with e.g.
``WaveformDataModule("OUTDIR/digits_tts", split_group=r"^(.*)_[a-z]+\\.")`` (speaker-disjoint) or
``WaveformDataModule("OUTDIR/piano_16k")`` (split by file).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_checked(src: Path, dst: Path, frames: int | None = None) -> None:
    """Copy an audio file after checking it decodes whole at 16 kHz mono (and has `frames`)."""
    info = sf.info(str(src))
    if info.samplerate != 16000 or info.channels != 1:
        raise SystemExit(f"{src}: expected 16 kHz mono, found {info.samplerate} Hz, {info.channels} channel(s)")
    x, _ = sf.read(str(src), dtype="int16")  # decodes every frame: catches truncation
    if len(x) != info.frames or (frames is not None and len(x) != frames):
        raise SystemExit(f"{src}: decoded {len(x)} frames, header says {info.frames}"
                         + (f", expected {frames}" if frames else ""))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def build_digits(data: Path, out: Path, force: bool) -> int:
    src = data / "audio" / "digits_tts"
    speakers = src / "speakers.tsv"
    if not speakers.is_file():
        raise SystemExit(f"{speakers}: not found (is --data the shared data folder?)")
    clips = sorted(src.glob("*/*.flac"))
    bad = [c for c in clips if c.parent.name not in DIGITS or not c.stem.endswith("_" + c.parent.name)]
    if bad:
        raise SystemExit(f"{bad[0]}: not in the <digit>/<speaker>_<digit>.flac layout")
    for c in tqdm(clips, desc="digits", unit="clip"):
        dst = out / "digits_tts" / c.parent.name / c.name
        if force or not dst.exists():
            copy_checked(c, dst, frames=16000)
    copy_checked_text(speakers, out / "digits_tts" / "speakers.tsv")
    return len(clips)


def copy_checked_text(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def build_piano(data: Path, out: Path, render: bool, force: bool) -> int:
    piano = out / "piano_16k"
    bach = data / "audio" / "music" / "piano_16k" / "bwv846.flac"
    if force or not (piano / bach.name).exists():
        copy_checked(bach, piano / bach.name)
    if not render:
        return 1
    script = data / "tools" / "render_midi_16k.sh"
    missing = [t for t in ("fluidsynth", "sox") if shutil.which(t) is None]
    sf2 = Path(os.environ.get("SF2", "/usr/share/sounds/sf2/FluidR3_GM.sf2"))
    if missing or not sf2.is_file():
        print(f"skipping MIDI rendering: needs {' and '.join(missing) or ''}"
              f"{' and ' if missing and not sf2.is_file() else ''}{'' if sf2.is_file() else str(sf2)}"
              " (Debian: apt-get install fluidsynth fluid-soundfont-gm sox)", file=sys.stderr)
        return 1
    midis = sorted((data / "audio" / "music" / "midi_music21_piano").glob("*.mid"))
    for m in tqdm(midis, desc="render MIDI", unit="score"):
        dst = piano / (m.stem + ".flac")
        if dst.exists() and not force:  # bwv846.mid is the score of the bundled recording
            continue
        with tempfile.TemporaryDirectory() as tmp:  # render elsewhere, then move in whole
            subprocess.run(["bash", str(script), tmp, str(m)], check=True)
            rendered = Path(tmp) / dst.name
            x, _ = sf.read(str(rendered), dtype="int16")
            if len(x) == 0:
                raise SystemExit(f"{m}: rendered to empty audio")
            copy_checked(rendered, dst)
    return len(list(piano.glob("*.flac")))


def write_manifest(out: Path) -> int:
    rows = []
    for p in sorted(out.rglob("*.flac")):
        info = sf.info(str(p))
        rows.append(f"{p.relative_to(out)}\t{info.frames}\t{info.samplerate}\t{sha256(p)}\n")
    tmp = out / ".MANIFEST.tsv.tmp"
    tmp.write_text("path\tframes\tsample_rate\tsha256\n" + "".join(rows))
    os.replace(tmp, out / "MANIFEST.tsv")
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"),
                    help="the shared real-data folder (with audio/ and tools/)")
    ap.add_argument("--no-render", action="store_true", help="do not render the MIDI scores")
    ap.add_argument("--force", action="store_true", help="rebuild files that exist")
    args = ap.parse_args()
    if not (args.data / "audio").is_dir():
        raise SystemExit(f"{args.data}: no audio/ folder here; pass --data")
    args.outdir.mkdir(parents=True, exist_ok=True)
    n_digits = build_digits(args.data, args.outdir, args.force)
    n_piano = build_piano(args.data, args.outdir, not args.no_render, args.force)
    n = write_manifest(args.outdir)
    print(f"{args.outdir}: {n_digits} digit clips, {n_piano} piano recordings ({n} files in MANIFEST.tsv)")


if __name__ == "__main__":
    main()
