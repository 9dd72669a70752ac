"""Real speech corpus from Debian's Asterisk prompt packages (5 languages, ~2 h).

`asterisk-core-sounds-XX-g722` holds one professional voice per language as raw G.722
(16 kHz wideband, 64 kbit/s, so exactly 2 samples per byte); `asterisk-core-sounds-XX`
holds the transcripts (`core-sounds-XX.txt.gz`, lines `path/name: text`). Both come from
`apt-get download` and are unpacked with `dpkg-deb -x` into the output directory, so
nothing is installed system-wide. Output, as fairseq's fine-tuning recipe expects:

    OUT/audio/XX/<name>.flac          16 kHz mono PCM_16
    OUT/{train,valid}.tsv             manifests (root = OUT/audio)
    OUT/{train,valid}.wrd / .ltr      words / letters ("H I | T H E R E |"), line-aligned
    OUT/dict.ltr.txt                  letter counts over train, most frequent first

Every step is cached: .debs, extraction and decoded files are reused when present.
Transcript text becomes words in `text.py`, words become .ltr lines in `labels.py`.

`main` (the CLI) can then cut the low-resource experiment out of the prepared corpus:
`splits.make_finetune_splits`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import logging
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from wav2vec2.data.corpora.splits import make_finetune_splits
from wav2vec2.data.corpora.text import normalize_transcript
from wav2vec2.data.labels import Dictionary, letters, write_label_lines
from wav2vec2.data.manifest import write_manifest
from wav2vec2.files import atomic_output, atomic_write

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "es", "fr", "it", "ru")
SAMPLE_RATE = 16000  # G.722 is wideband: 16 kHz


def packages(languages: list[str]) -> list[str]:
    return [p for lang in languages for p in (f"asterisk-core-sounds-{lang}", f"asterisk-core-sounds-{lang}-g722")]


def download_debs(languages: list[str], debs_dir: str) -> list[str]:
    """`apt-get download` the packages not already in debs_dir; returns the .deb paths."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: prepare_asterisk needs a Debian-based system")
    os.makedirs(debs_dir, exist_ok=True)
    missing = [p for p in packages(languages) if not glob.glob(os.path.join(debs_dir, f"{p}_*.deb"))]
    if missing:
        logger.info("apt-get download %s", " ".join(missing))
        result = _apt_download(missing, debs_dir)
        if result.returncode != 0:  # usually stale or absent package lists
            update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            result = _apt_download(missing, debs_dir)
            if result.returncode != 0:
                raise RuntimeError(
                    f"apt-get download {' '.join(missing)} failed (exit {result.returncode}):\n"
                    f"{result.stderr.strip()[-2000:]}\napt-get update said:\n{update.stderr.strip()[-1000:]}"
                )
    return sorted(glob.glob(os.path.join(debs_dir, "*.deb")))


def _apt_download(pkgs: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", *pkgs], cwd=cwd, capture_output=True, text=True)


def extract_debs(debs: list[str], extract_dir: str) -> None:
    """`dpkg-deb -x` each .deb once (a marker file records it)."""
    os.makedirs(extract_dir, exist_ok=True)
    for deb in debs:
        marker = os.path.join(extract_dir, ".done-" + os.path.basename(deb))
        if os.path.exists(marker):
            continue
        result = subprocess.run(["dpkg-deb", "-x", deb, extract_dir], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")
        atomic_write(marker, "")


def read_transcripts(path: str) -> dict[str, str]:
    """`name: text` lines of core-sounds-XX.txt.gz -> {name: text}; `;` lines are comments."""
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ": " not in line:
                continue
            name, text = line.split(": ", 1)
            out[name.strip()] = text.strip()
    return out


def decode_g722(path: str) -> np.ndarray:
    """Raw 64 kbit/s G.722 file -> int16 samples at 16 kHz. Shape: (L,) with L = 2 * bytes."""
    import G722

    with open(path, "rb") as f:
        data = f.read()
    pcm = np.asarray(G722.G722(SAMPLE_RATE, 64000).decode(data), dtype=np.int16)
    if len(pcm) != 2 * len(data):
        raise ValueError(f"{path}: decoded {len(pcm)} samples from {len(data)} bytes, expected 2 per byte")
    return pcm


@dataclass
class Utterance:
    relpath: str  # under OUT/audio
    num_samples: int
    words: list[str]


@dataclass
class AsteriskSummary:
    per_language: dict[str, tuple[int, float]] = field(default_factory=dict)  # lang -> (utts, seconds)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    num_train: int = 0
    num_valid: int = 0

    def __str__(self) -> str:
        total = sum(n for n, _ in self.per_language.values())
        hours = sum(s for _, s in self.per_language.values()) / 3600
        langs = ", ".join(f"{k}: {n} ({s / 60:.1f} min)" for k, (n, s) in self.per_language.items())
        skipped = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items())) or "none"
        return (
            f"{total} utterances, {hours:.2f} h ({self.num_train} train, {self.num_valid} valid)\n"
            f"  {langs}\n  skipped: {skipped}"
        )


def prepare_asterisk(
    out: str, *, languages: tuple[str, ...] | list[str] = LANGUAGES, valid_percent: float = 0.05, seed: int = 1
) -> AsteriskSummary:
    """Download, decode and write the corpus under `out` (see module docstring)."""
    for lang in languages:
        if lang not in LANGUAGES:
            raise ValueError(f"language {lang!r} not available; choose from {', '.join(LANGUAGES)}")
    out = os.path.realpath(out)
    extract_dir = os.path.join(out, "extract")
    extract_debs(download_debs(languages, os.path.join(out, "debs")), extract_dir)
    sounds = os.path.join(extract_dir, "usr", "share", "asterisk", "sounds")

    summary = AsteriskSummary()
    utterances: list[Utterance] = []
    for lang in languages:
        doc = os.path.join(extract_dir, "usr", "share", "doc", f"asterisk-core-sounds-{lang}")
        transcripts = read_transcripts(os.path.join(doc, f"core-sounds-{lang}.txt.gz"))
        voices = sorted(glob.glob(os.path.join(sounds, f"{lang}_*")))  # e.g. en_US_f_Allison
        if not voices:
            raise RuntimeError(f"no {lang}_* voice directory in {sounds}; extraction incomplete?")
        count, seconds = 0, 0.0
        for voice in voices:
            for path in sorted(glob.glob(os.path.join(voice, "**", "*.g722"), recursive=True)):
                name = os.path.relpath(path, voice)[: -len(".g722")]
                if name not in transcripts:
                    summary.skipped["no transcript"] += 1
                    continue
                words, reason = normalize_transcript(transcripts[name], lang)
                if words is None:
                    summary.skipped[reason] += 1
                    continue
                rel = os.path.join(lang, name + ".flac")
                num_samples = _decode_once(path, os.path.join(out, "audio", rel))
                utterances.append(Utterance(rel, num_samples, words))
                count, seconds = count + 1, seconds + num_samples / SAMPLE_RATE
        summary.per_language[lang] = (count, seconds)

    rand = random.Random(seed)
    splits: dict[str, list[Utterance]] = {"train": [], "valid": []}
    for utt in utterances:
        splits["valid" if rand.random() <= valid_percent else "train"].append(utt)
    summary.num_train, summary.num_valid = len(splits["train"]), len(splits["valid"])
    audio_root = os.path.join(out, "audio")
    for split, utts in splits.items():
        write_manifest(os.path.join(out, f"{split}.tsv"), audio_root, [(u.relpath, u.num_samples) for u in utts])
        write_label_lines(os.path.join(out, f"{split}.wrd"), [" ".join(u.words) for u in utts])
        write_label_lines(os.path.join(out, f"{split}.ltr"), [letters(u.words) for u in utts])
    Dictionary.from_label_lines(letters(u.words) for u in splits["train"]).save(os.path.join(out, "dict.ltr.txt"))
    return summary


def _decode_once(src: str, dst: str) -> int:
    """Decode src to dst unless dst exists; returns its number of samples."""
    if os.path.exists(dst):
        return sf.info(dst).frames
    pcm = decode_g722(src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with atomic_output(dst) as tmp:  # an interrupted run never leaves a half-written file
        sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")  # tmp's name ends in .tmp
    return len(pcm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the Asterisk prompts speech corpus.")
    parser.add_argument("--out", required=True, help="output directory (also the download cache)")
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=LANGUAGES)
    parser.add_argument("--valid-percent", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    low = parser.add_argument_group("low-resource experiment (see make_finetune_splits)")
    low.add_argument("--finetune-splits", metavar="OUT2", help="then write pretrain/ and finetune_LANG/ splits here")
    low.add_argument("--finetune-language", default="en", choices=LANGUAGES)
    low.add_argument("--train-minutes", type=float, default=10.0)
    low.add_argument("--dev-minutes", type=float, default=2.0)
    low.add_argument("--test-minutes", type=float, default=4.0)
    low.add_argument("--max-seconds", type=float, default=12.0,
                     help="longer prompts are only pretrained on")
    low.add_argument("--finetune-seed", type=int, default=1, help="seed of this split (--seed: the corpus's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(prepare_asterisk(args.out, languages=args.languages, valid_percent=args.valid_percent, seed=args.seed))
        if args.finetune_splits:
            splits = make_finetune_splits(
                args.out,
                args.finetune_splits,
                language=args.finetune_language,
                train_minutes=args.train_minutes,
                dev_minutes=args.dev_minutes,
                test_minutes=args.test_minutes,
                max_seconds=args.max_seconds,
                seed=args.finetune_seed,
            )
            print(splits)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
