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
    OUT/excluded.tsv                  every file left out: path, reason, its transcript line

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
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from wav2vec2.data.corpora.debian import download_packages, extract_debs
from wav2vec2.data.corpora.splits import make_finetune_splits, write_language_splits
from wav2vec2.data.corpora.text import NUMBER, normalize_transcript
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
    return download_packages(packages(languages), debs_dir, recipe="prepare_asterisk")


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


# What the preparation leaves out, beyond text.py's reasons (NUMBER, NOT_SPEECH, KEYPAD_SYMBOL).
# A reference that is not what the audio says cannot be matched by any model: it costs every
# WER/CER reported and teaches the model to emit letters where nobody speaks.
NO_TRANSCRIPT = "no transcript"  # a .g722 file that core-sounds-XX.txt does not list
DESCRIBES_A_SOUND = "describes a sound"  # the line names a tone, in words that are not notes
MERGED_LINES = "merged transcript lines"  # the line runs on into other prompts' `name: text`
NEAR_SILENT = "near-silent audio"  # RMS below NEAR_SILENT_DBFS, whatever its transcript

# Prompts whose line describes a sound in plain words, where text.py's notes rule (brackets)
# cannot see it; found by reading the kept transcripts whose letters per second were far
# above their language's (50-63 for a median of 13). The audio agrees: 0.4 s, as tonal as
# the bracketed beeps (spectral flatness under 0.001).
# {lang/name: its line, for the reader}
SOUND_DESCRIPTIONS = {
    "it/beep": "un suono beep",
    "it/beeperr": "un suono beep di errore",
    "it/confbridge-join": "un suono di beep ascendente",
    "it/confbridge-leave": "un suono di beep discendente",
}
# Lines whose parentheses quote words the voice says (the English prompts have them in
# quotes: 'a polite "don't call" menu'), so text.py must keep them, not drop them as notes.
SPOKEN_PARENTHESES = {"fr/priv-callee-options", "fr/screen-callee-options"}
# Below this RMS a file holds no speech. The packages' 2,831 files are bimodal: the 50
# XX/silence/{1..10} files at -80 dBFS (and ru/is, 0 bytes), every other one at -32 dBFS or
# louder (a beep; the quietest speech, ru/with "с", is at -27.5): 20 dB clear of both.
# Today the notes rule already excludes every silent file that has a transcript; this
# catches silent audio whatever its line says.
NEAR_SILENT_DBFS = -60.0


def level_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
    return 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")


@dataclass
class Utterance:
    relpath: str  # under OUT/audio
    num_samples: int
    words: list[str]


@dataclass
class Excluded:
    """A file the corpus leaves out, and why; OUT/excluded.tsv lists every one."""

    relpath: str  # where it would be under OUT/audio
    reason: str
    detail: str  # the transcript line as written, and the audio level when measured


@dataclass
class AsteriskSummary:
    per_language: dict[str, tuple[int, float]] = field(default_factory=dict)  # lang -> (utts, seconds)
    excluded: list[Excluded] = field(default_factory=list)
    num_train: int = 0
    num_valid: int = 0
    excluded_path: str = ""

    @property
    def skipped(self) -> collections.Counter:
        """Excluded files per reason."""
        return collections.Counter(e.reason for e in self.excluded)

    def __str__(self) -> str:
        total = sum(n for n, _ in self.per_language.values())
        hours = sum(s for _, s in self.per_language.values()) / 3600
        langs = ", ".join(f"{k}: {n} ({s / 60:.1f} min)" for k, (n, s) in self.per_language.items())
        counts = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items())) or "none"
        lines = [f"{total} utterances, {hours:.2f} h ({self.num_train} train, {self.num_valid} valid)",
                 f"  {langs}", f"  excluded {len(self.excluded)} files: {counts}"]
        if self.excluded_path:
            lines[-1] += f" (each with its reason in {self.excluded_path})"
        # The bulk reasons are mechanical (no line at all, a number we do not spell); the
        # others are judgements on content, shown file by file.
        lines += [f"    {e.relpath}: {e.reason}: {e.detail}" for e in self.excluded
                  if e.reason not in (NO_TRANSCRIPT, NUMBER)]
        return "\n".join(lines)


def prepare_asterisk(
    out: str, *, languages: tuple[str, ...] | list[str] = LANGUAGES, valid_percent: float = 0.05, seed: int = 1
) -> AsteriskSummary:
    """Download, decode and write the corpus under `out` (see module docstring).

    Every .g722 file either becomes an utterance or is listed in OUT/excluded.tsv with its
    reason (`transcript_problem`, then NEAR_SILENT once decoded). As in build_manifest, a
    file goes to valid when its `random.Random(seed).random()` draw is <= valid_percent,
    one draw per file found, kept or not: leaving a file out never moves another one
    between train and valid.
    """
    for lang in languages:
        if lang not in LANGUAGES:
            raise ValueError(f"language {lang!r} not available; choose from {', '.join(LANGUAGES)}")
    out = os.path.realpath(out)
    extract_dir = os.path.join(out, "extract")
    extract_debs(download_debs(languages, os.path.join(out, "debs")), extract_dir)
    sounds = os.path.join(extract_dir, "usr", "share", "asterisk", "sounds")

    summary = AsteriskSummary(excluded_path=os.path.join(out, "excluded.tsv"))
    splits: dict[str, list[Utterance]] = {"train": [], "valid": []}
    rand = random.Random(seed)
    for lang in languages:
        doc = os.path.join(extract_dir, "usr", "share", "doc", f"asterisk-core-sounds-{lang}")
        transcripts = read_transcripts(os.path.join(doc, f"core-sounds-{lang}.txt.gz"))
        voices = sorted(glob.glob(os.path.join(sounds, f"{lang}_*")))  # e.g. en_US_f_Allison
        if not voices:
            raise RuntimeError(f"no {lang}_* voice directory in {sounds}; extraction incomplete?")
        count, seconds = 0, 0.0
        for voice in voices:
            for path in sorted(glob.glob(os.path.join(voice, "**", "*.g722"), recursive=True)):
                split = "valid" if rand.random() <= valid_percent else "train"
                name = os.path.relpath(path, voice)[: -len(".g722")]
                rel = os.path.join(lang, name + ".flac")
                text = transcripts.get(name)
                words, reason = transcript_problem(lang, name, text, transcripts)
                if words is None:
                    summary.excluded.append(Excluded(rel, reason, "" if text is None else text))
                    continue
                pcm = _decoded(path, os.path.join(out, "audio", rel))
                level = level_dbfs(pcm)
                if level < NEAR_SILENT_DBFS:
                    summary.excluded.append(Excluded(rel, NEAR_SILENT, f"{level:.1f} dBFS RMS: {text}"))
                    continue
                splits[split].append(Utterance(rel, len(pcm), words))
                count, seconds = count + 1, seconds + len(pcm) / SAMPLE_RATE
        summary.per_language[lang] = (count, seconds)

    summary.num_train, summary.num_valid = len(splits["train"]), len(splits["valid"])
    audio_root = os.path.join(out, "audio")
    for split, utts in splits.items():
        write_manifest(os.path.join(out, f"{split}.tsv"), audio_root, [(u.relpath, u.num_samples) for u in utts])
        write_label_lines(os.path.join(out, f"{split}.wrd"), [" ".join(u.words) for u in utts])
        write_label_lines(os.path.join(out, f"{split}.ltr"), [letters(u.words) for u in utts])
    Dictionary.from_label_lines(letters(u.words) for u in splits["train"]).save(os.path.join(out, "dict.ltr.txt"))
    atomic_write(summary.excluded_path, "".join(
        "\t".join(" ".join(col.split()) for col in (e.relpath, e.reason, e.detail)) + "\n"
        for e in summary.excluded))
    return summary


def transcript_problem(lang: str, name: str, text: str | None,
                       transcripts: dict[str, str]) -> tuple[list[str] | None, str]:
    """(words, "") for a usable transcript line, else (None, reason); `transcripts` is the
    language's whole file, to recognise a line that runs on into other prompts' lines."""
    if text is None:
        return None, NO_TRANSCRIPT
    key = f"{lang}/{name}"
    if key in SOUND_DESCRIPTIONS:
        return None, DESCRIBES_A_SOUND
    # "...appuyez sur dièse.vm-review-nonurgent: Pour enlever...": the transcript file lost
    # a line break. The audio fits the first prompt only: with the rest, its letters per
    # second would be about twice its language's median.
    if any(other in transcripts and other != name for other in re.findall(r"([\w/-]+):\s", text)):
        return None, MERGED_LINES
    return normalize_transcript(text, lang, spoken_parentheses=key in SPOKEN_PARENTHESES)


def _decoded(src: str, dst: str) -> np.ndarray:
    """int16 samples of src, decoded once: dst (FLAC) is written the first time, then read.
    Shape: (L,)."""
    if os.path.exists(dst):
        return sf.read(dst, dtype="int16")[0]
    pcm = decode_g722(src)
    if level_dbfs(pcm) >= NEAR_SILENT_DBFS:  # only files that become utterances are written
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with atomic_output(dst) as tmp:  # an interrupted run never leaves a half-written file
            sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")  # tmp's name ends in .tmp
    return pcm


_DESCRIPTION = """\
Prepare the Asterisk prompts speech corpus: download Debian's asterisk-core-sounds-XX
packages (apt-get download, nothing installed), decode them to 16 kHz FLAC and write fairseq
manifests and letter labels under --out: about 2,600 prompts, 1.8 h, in 5 languages, in
under a minute (cached after). Files that are not speech (silence, beeps, lines that do not
say what the voice says) are left out, each listed with its reason in OUT/excluded.tsv."""

_EPILOG = """\
pretraining on the whole corpus (what scripts/demo.sh runs):
  python scripts/prepare_asterisk.py --out data/asterisk
  python scripts/train.py --config-name demo data.manifest_dir=data/asterisk

the low-resource fine-tuning experiment (what scripts/finetune_demo.sh runs, with the same
fine-tuning from random weights beside it; about half an hour on a 2-core CPU, measured in
docs/finetuning.md):
  python scripts/prepare_asterisk.py --out data/asterisk --finetune-splits data/asterisk-lowres
  python scripts/train.py --config-name demo data.manifest_dir=data/asterisk-lowres/pretrain \\
      optim.max_update=5000 run_dir=runs/ft/pretrain
  python scripts/train.py --config-name ctc_demo data.manifest_dir=data/asterisk-lowres/finetune_en \\
      task.init=runs/ft/pretrain/checkpoint_best.pt run_dir=runs/ft/pretrained
  python -m wav2vec2.infer.evaluate runs/ft/pretrained/checkpoint_best.pt --subset test"""

_SPLITS_HELP = """\
With --finetune-splits DIR, also cut the fine-tuning experiment out of the corpus:
  DIR/finetune_LANG/  labelled prompts of one language (English by default) for CTC:
                      train.{tsv,ltr,wrd} 10 min, dev 2 min (picks the best checkpoint),
                      test 4 min (scored once), dict.ltr.txt. A prompt text goes wholly to
                      one split: no test sentence is ever fine-tuned on.
  DIR/pretrain/       {train,valid}.tsv: every other utterance, all languages, unlabelled
                      audio for pretraining (dev and test left out: the test is unheard)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (also the download cache)")
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=LANGUAGES,
                        help="default: all five")
    parser.add_argument("--valid-percent", type=float, default=0.05,
                        help="share of the files drawn into OUT/valid.tsv (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the train/valid draw (default: %(default)s)")
    low = parser.add_argument_group("low-resource fine-tuning splits", _SPLITS_HELP)
    low.add_argument("--finetune-splits", metavar="DIR", help="write DIR/pretrain/ and DIR/finetune_LANG/")
    low.add_argument("--finetune-language", default="en", choices=LANGUAGES,
                     help="LANG, the labelled language (default: %(default)s)")
    low.add_argument("--train-minutes", type=float, default=10.0, help="default: %(default)s")
    low.add_argument("--dev-minutes", type=float, default=2.0, help="default: %(default)s")
    low.add_argument("--test-minutes", type=float, default=4.0, help="default: %(default)s")
    low.add_argument("--max-seconds", type=float, default=12.0,
                     help="longer prompts are only pretrained on (default: %(default)s)")
    low.add_argument("--finetune-seed", type=int, default=1,
                     help="seed of these splits; --seed is the corpus's (default: %(default)s)")
    low.add_argument("--pretrain-languages", metavar="XX,YY", action="append", default=[],
                     help="also write DIR/pretrain_XX-YY/: DIR/pretrain/ restricted to these languages; repeatable")
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
            for group in args.pretrain_languages:
                languages = [lang for lang in group.split(",") if lang]
                unknown = sorted(set(languages) - set(LANGUAGES))
                if unknown:
                    raise ValueError(f"--pretrain-languages {group}: {', '.join(unknown)} is not one of {', '.join(LANGUAGES)}")
                print(f"pretrain audio of {', '.join(languages)}: {write_language_splits(args.finetune_splits, languages)}")
        elif args.pretrain_languages:
            raise ValueError("--pretrain-languages restricts the splits of --finetune-splits DIR: give it")
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
