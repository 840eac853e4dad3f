"""How the ``spoken_digits`` clips are made: espeak-ng voices, rendering, log-mel features,
the split files, and the command that writes them.

The dataset and the model are in :mod:`tome_lab.tasks.spoken_digits` (which also documents
the task); this module is the generator they read, and imports neither.

**Clips.** Each *speaker* is one espeak-ng voice setting: an English accent (``-v``), a
voice variant (``+variant``), a speaking rate (``-s``, words per minute), a pitch (``-p``)
and an amplitude (``-a``). Each speaker says the ten digits, one clip each. A clip is the
synthesised word, trimmed of silence, placed at a random offset in a fixed window, scaled by a
random gain and mixed with white noise at a random signal-to-noise ratio. Everything is
drawn from numpy generators seeded by ``SEED``, the split and the clip's index, so clip ``i``
of a split is the same whatever order (or process) makes it.

**Features.** Log-mel spectrograms from librosa: ``N_MELS`` mel bands x ``FRAMES`` frames
(10 ms hop), in dB relative to full scale, clipped to ``[DB_MIN, DB_MAX]`` and stored as
uint8 (0.4 dB steps).

**The command** (``python -m tome_lab.tasks.spoken_digits`` runs it too)::

    python -m tome_lab.tasks.spoken_digits_synth --split test --out DIR --workers 2
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import shutil
import subprocess
import sys
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tome_lab.data import DataError

SEED = 13  # fixes the voice pools, every speaker's setting and every clip's draws
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# English accents of espeak-ng 1.51 (``espeak-ng --voices=en``, the non-MBROLA ones).
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")
HELD_OUT_ACCENTS = ("en-029", "en-gb-x-gbcwmd")  # heard in test only
# Voice variants of espeak-ng 1.51 (``espeak-ng --voices=variant``, file names).
VARIANTS = (
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "Demonic", "Denis", "Diogo", "ed", "edward", "edward2",
    "Gene", "Gene2", "gustave", "announcer", "Henrique", "Hugo", "iven", "iven2", "iven3",
    "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco", "Mario", "max",
    "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo", "paul", "pedro", "quincy",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert", "robosoft", "robosoft2",
    "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph",
    "steph2", "steph3", "Storm", "Tweaky", "UniRobot", "zac", "anika", "anikaRobot",
    "AnxiousAndy", "fast", "f2", "f3", "f4", "f5", "whisperf", "grandpa", "klatt", "klatt2",
    "klatt3", "klatt4", "klatt5", "klatt6", "m2", "m3", "m4", "m5", "m6", "m7", "norbert",
    "sandro", "shelby", "travis", "victor", "whisper", "m8", "f1", "croak", "m1", "grandma",
)
HELD_OUT_VARIANTS = tuple(sorted(np.random.default_rng(SEED).permutation(VARIANTS)[:25]))
# split -> speakers; every speaker says the ten words once.
SPLITS: dict[str, int] = {"train": 500, "val": 50, "test": 100}
RATE = (120, 240)  # words per minute (espeak-ng's default is 175)
PITCH = (20, 80)  # espeak-ng's 0..99 scale (default 50)
AMPLITUDE = (60, 160)  # espeak-ng's 0..200 scale (default 100)
GAIN_DB = (-8.0, 4.0)  # gain applied after synthesis
SNR_DB = (10.0, 40.0)  # white noise relative to the speech power

SAMPLE_RATE = 22050  # espeak-ng's output rate; kept, so no resampling
N_FFT = 1024  # 46 ms window
HOP = 220  # 10 ms hop
N_MELS = 64
FRAMES = 128  # 1.28 s window: the slowest digit at RATE[0], trimmed, fits
FMIN, FMAX = 50.0, 8000.0  # speech band
DB_MIN, DB_MAX = -110.0, -8.0  # dB: 0.2% of train bins fall below; none reach the top

ESPEAK_ENV = "TOME_LAB_ESPEAK"
CACHE_ENV = "TOME_LAB_CACHE"
_FORMAT = 1  # bump when anything above changes what a split holds


class EspeakNotFound(DataError):
    """espeak-ng is needed to synthesise clips and is not installed (or not where told)."""


class Speaker(NamedTuple):
    """One espeak-ng voice setting."""

    accent: str
    variant: str
    rate: int
    pitch: int
    amplitude: int

    def voice(self) -> str:
        """The ``-v`` argument: accent and variant."""
        return f"{self.accent}+{self.variant}"


class SpokenSplit(NamedTuple):
    """One generated split.

    Attributes:
        features: [N, N_MELS, FRAMES] uint8 log-mel (0 = ``DB_MIN``, 255 = ``DB_MAX``; low
            frequencies first, time along the last axis).
        labels: [N] int64, the digit spoken.
        speakers: [N] int64, index of the clip's speaker in :func:`speakers` of the split.
    """

    features: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown spoken_digits split {split!r}; valid: {', '.join(SPLITS)}")
    return list(SPLITS).index(split)


def speakers(split: str) -> list[Speaker]:
    """The voice settings of a split; ``test`` uses held-out variants only.

    Raises:
        ValueError: an unknown split.
    """
    sid = _split_id(split)
    rng = np.random.default_rng([SEED, sid, 0])
    if split == "test":
        accents, variants = ACCENTS, HELD_OUT_VARIANTS
    else:
        accents = tuple(a for a in ACCENTS if a not in HELD_OUT_ACCENTS)
        variants = tuple(v for v in VARIANTS if v not in HELD_OUT_VARIANTS)
    out = []
    for _ in range(SPLITS[split]):
        out.append(Speaker(
            accent=str(accents[rng.integers(len(accents))]),
            variant=str(variants[rng.integers(len(variants))]),
            rate=int(rng.integers(RATE[0], RATE[1] + 1)),
            pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
            amplitude=int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1))))
    return out


def espeak_binary() -> str:
    """The espeak-ng executable: ``$TOME_LAB_ESPEAK`` or ``espeak-ng`` on ``PATH``.

    Raises:
        EspeakNotFound: it is not there, with how to install it.
    """
    name = os.environ.get(ESPEAK_ENV) or "espeak-ng"
    found = shutil.which(name)
    if found is None:
        raise EspeakNotFound(
            f"espeak-ng is needed to synthesise the spoken_digits clips, and {name!r} was not "
            f"found (PATH, or ${ESPEAK_ENV}). Install it: `sudo apt-get install espeak-ng` "
            f"(Debian/Ubuntu), `brew install espeak-ng` (macOS), `sudo dnf install espeak-ng` "
            f"(Fedora); or set {ESPEAK_ENV}=/path/to/espeak-ng. The test split of the "
            f"committed model ships with tome_lab and needs no espeak-ng.")
    return found


@functools.lru_cache(maxsize=4)
def espeak_version(binary: str) -> str:
    """``espeak-ng --version`` without its data path (recorded with every generated split):
    ``"eSpeak NG text-to-speech: 1.51"``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[0].split("  Data at:")[0].strip()


def synthesize(speaker: Speaker, word: str, binary: str | None = None) -> np.ndarray:
    """The waveform of ``word`` in ``speaker``'s voice.

    Returns:
        [T] float32 in -1..1 at ``SAMPLE_RATE``.

    Raises:
        EspeakNotFound: no espeak-ng.
        RuntimeError: espeak-ng failed or returned something other than 16-bit mono WAV.
    """
    binary = binary or espeak_binary()
    cmd = [binary, "-v", speaker.voice(), "-s", str(speaker.rate), "-p", str(speaker.pitch),
           "-a", str(speaker.amplitude), "--stdout", word]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): "
                           f"{res.stderr.decode(errors='replace').strip()}")
    with wave.open(io.BytesIO(res.stdout)) as w:
        rate, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
    if (rate, ch, width) != (SAMPLE_RATE, 1, 2):
        raise RuntimeError(f"espeak-ng returned {rate} Hz, {ch} channels, {8 * width}-bit; "
                           f"expected {SAMPLE_RATE} Hz mono 16-bit")
    # espeak-ng streams to stdout, so the header's frame count is a placeholder: read to the
    # end of the 44-byte canonical header instead.
    pcm = np.frombuffer(res.stdout[44:len(res.stdout) - len(res.stdout) % 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def render(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Places a clean waveform in the fixed window with a random offset, gain and noise.

    Args:
        audio: [T] float32 clean speech at ``SAMPLE_RATE``.
        rng: the clip's generator (offset, gain, SNR, noise are drawn in this order).

    Returns:
        [(FRAMES - 1) * HOP] float32, the clip the features are computed from.
    """
    import librosa

    length = (FRAMES - 1) * HOP  # centred STFT frames: 1 + length // HOP == FRAMES
    speech, _ = librosa.effects.trim(audio, top_db=40)
    if len(speech) == 0:
        raise RuntimeError("espeak-ng returned silence")
    speech = speech[:length]
    offset = int(rng.integers(0, length - len(speech) + 1))
    gain = 10.0 ** (rng.uniform(*GAIN_DB) / 20.0)
    snr = rng.uniform(*SNR_DB)
    clip = np.zeros(length, np.float32)
    clip[offset:offset + len(speech)] = gain * speech
    power = float(np.mean((gain * speech) ** 2))
    noise = rng.standard_normal(length).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    return clip + noise


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN,
                               fmax=FMAX)  # (N_MELS, N_FFT // 2 + 1), Slaney-normalised


def log_mel(clip: np.ndarray) -> np.ndarray:
    """uint8 log-mel of a rendered clip: [N_MELS, FRAMES], 0 = ``DB_MIN``, 255 = ``DB_MAX``.

    The same as ``librosa.feature.melspectrogram`` (Hann window, centred frames, power 2),
    with the filterbank built once instead of per clip.
    """
    import librosa

    spec = np.abs(librosa.stft(clip, n_fft=N_FFT, hop_length=HOP)) ** 2  # (F, FRAMES)
    # einsum, not BLAS: a 64x513x128 product is faster without BLAS threads on a busy CPU.
    mel = np.einsum("mf,ft->mt", _mel_basis(), spec, optimize=False)  # (N_MELS, FRAMES)
    # The STFT of a full-scale sine peaks near (N_FFT / 4) ** 2 in power with a Hann window:
    # referencing it puts 0 dB near full scale, whatever N_FFT is.
    db = librosa.power_to_db(mel, ref=(N_FFT / 4) ** 2, top_db=None)
    q = np.round((np.clip(db, DB_MIN, DB_MAX) - DB_MIN) / (DB_MAX - DB_MIN) * 255.0)
    return q.astype(np.uint8)[:, :FRAMES]


def make_clip(split: str, index: int, binary: str | None = None,
              spk: list[Speaker] | None = None) -> np.ndarray:
    """Features of clip ``index`` of ``split`` (speaker ``index // 10`` says digit
    ``index % 10``): [N_MELS, FRAMES] uint8, a pure function of the split and the index."""
    spk = spk if spk is not None else speakers(split)
    n = len(spk) * len(WORDS)
    if not 0 <= index < n:
        raise IndexError(f"clip {index} of split {split!r} (it has {n})")
    speaker, word = spk[index // len(WORDS)], WORDS[index % len(WORDS)]
    rng = np.random.default_rng([SEED, _split_id(split), 1, index])
    return log_mel(render(synthesize(speaker, word, binary), rng))


def generate(split: str, workers: int = 1, indices: Sequence[int] | None = None,
             progress: bool = False) -> SpokenSplit:
    """Synthesises a split (or the clips ``indices`` of it) with espeak-ng.

    Args:
        split: ``train``, ``val`` or ``test``.
        workers: espeak-ng processes at a time.
        indices: clips to make (default: all, in order).
        progress: a progress bar on stderr.

    Raises:
        ValueError: an unknown split or ``workers < 1``.
        EspeakNotFound: no espeak-ng.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    spk = speakers(split)
    idx = list(range(len(spk) * len(WORDS))) if indices is None else [int(i) for i in indices]
    binary = espeak_binary()
    from tome_lab.data import progress as bar

    with ThreadPoolExecutor(workers) as pool:  # threads: the work is in espeak-ng and FFTs
        feats = list(bar(pool.map(lambda i: make_clip(split, i, binary, spk), idx),
                         f"spoken_digits {split}", total=len(idx), enabled=progress))
    features = np.stack(feats) if feats else np.zeros((0, N_MELS, FRAMES), np.uint8)
    ids = np.asarray(idx, np.int64)
    return SpokenSplit(features, ids % len(WORDS), ids // len(WORDS))


def cache_dir() -> Path:
    """Where generated splits are kept: ``$TOME_LAB_CACHE/spoken_digits`` or
    ``~/.cache/tome_lab/spoken_digits``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tome_lab"
    return base / "spoken_digits"


def split_path(split: str, folder: Path | None = None) -> Path:
    """The file of ``split`` in ``folder`` (default: :func:`cache_dir`)."""
    _split_id(split)
    return (folder or cache_dir()) / f"{split}-v{_FORMAT}.npz"


def save_split(s: SpokenSplit, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Writes a split as a compressed npz, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, features=s.features, labels=s.labels, speakers=s.speakers,
                            format=np.int64(_FORMAT), meta=np.str_(repr(meta or {})))
    tmp.replace(path)


def read_split(path: Path) -> SpokenSplit:
    """Reads a split written by :func:`save_split`.

    Raises:
        DataError: not a spoken_digits split of this format.
    """
    try:
        with np.load(path) as z:
            fmt = int(z["format"])
            s = SpokenSplit(z["features"], z["labels"].astype(np.int64),
                            z["speakers"].astype(np.int64))
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{str(path)!r} is not a spoken_digits split: {e}") from e
    if fmt != _FORMAT or s.features.shape[1:] != (N_MELS, FRAMES):
        raise DataError(f"{str(path)!r} holds format {fmt} / {s.features.shape[1:]}; this "
                        f"tome_lab reads format {_FORMAT} / {(N_MELS, FRAMES)}: regenerate it")
    for a in s:
        a.setflags(write=False)
    return s


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tome_lab.tasks.spoken_digits_synth``: generate splits (exit 2 on bad input)."""
    p = argparse.ArgumentParser(
        prog="python -m tome_lab.tasks.spoken_digits_synth",
        description="Synthesise the spoken_digits splits with espeak-ng into the cache "
                    f"(${CACHE_ENV} or ~/.cache/tome_lab) or --out.")
    p.add_argument("--split", default="all", choices=["all", *SPLITS])
    p.add_argument("--out", default=None, help="folder for the .npz files (default: the cache)")
    p.add_argument("--workers", type=int, default=1, help="espeak-ng processes at a time")
    p.add_argument("--force", action="store_true", help="regenerate existing files")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    folder = Path(args.out).expanduser() if args.out else cache_dir()
    try:
        binary = espeak_binary()
    except EspeakNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split in SPLITS if args.split == "all" else [args.split]:
        path = split_path(split, folder)
        if path.is_file() and not args.force:
            print(f"{split}: {path} (cached)")
            continue
        s = generate(split, workers=args.workers, progress=True)
        save_split(s, path, {"espeak": espeak_version(binary)})
        print(f"{split}: {len(s.labels)} clips -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
