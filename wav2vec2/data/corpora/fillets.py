"""Multi-speaker Dutch corpus from Debian's Fish Fillets NG packages (~1.6 h, 2 voices).

`fillets-ng-data-nl` holds the Dutch voice acting of the game: one Ogg Vorbis file per line
of dialogue, `sound/LEVEL/nl/ID.ogg` (22.05 kHz stereo), LEVEL being one of the game's
levels (`city`, `wreck`...) or a set of lines heard in every level (`share/border`...).
`fillets-ng-data` holds the texts, in each level's Lua scripts: `script/LEVEL/*_nl.lua`
(`script/share/*_nl.lua` for the shared sets) pair a line's ID, its speaker's font and the
English text with the Dutch one:

    dialogId("vit-m-jakze", "font_small", "What?! A fish restaurant?")
    dialogStr("Wat?! Een visrestaurant?")

Every voiced line is spoken by one of the two fish, `font_small` or `font_big` (IDs say it
too: -m- malá, -v- velká), so the corpus has two voices, `small` and `big`. Both packages
come from `apt-get download` and are unpacked with `dpkg-deb -x` under the output
directory (`debian.py`); nothing is installed. Output, as fairseq's recipes expect:

    OUT/audio/LEVEL/ID.flac                 16 kHz mono PCM_16 (downmixed, soxr HQ)
    OUT/{train,dev,test}.{tsv,wrd,ltr}      every kept line, split BY LEVEL (`split_levels`)
    OUT/dict.ltr.txt                        letter counts over the train levels
    OUT/utterances.tsv                      relpath, split, level, speaker, seconds, Dutch text
    OUT/excluded.tsv                        every file left out: path, reason, its line
    OUT/pretrain/{train,valid}.tsv          unlabelled audio: train levels / dev levels
    OUT/finetune_Nmin/{train,dev,test}.*    N minutes of train-level labels (nested: the 1
                                            minute set is in the 5 minute set...), the dev
                                            and test levels, dict.ltr.txt (the corpus's)

A level goes wholly to one split: the test levels' audio is in no training manifest, for
pretraining or fine-tuning. Texts become letters as for Asterisk (`text.py`: brackets are
notes, upper case, letters and apostrophes only), and then lose their diacritics: Dutch
writes é/ë/ï only for stress (één) or a syllable break (geëerd, ruïne), the same letter to
the ear, and 34 such letters in the whole corpus could never be learnt from a few minutes
of labels. A line with a digit is left out (NUMBER): the few there are ("F3", "3Dfx",
"LC-10", "Poseidon 737") are not said digit by digit, and their words are not in the text.
"""

from __future__ import annotations

import argparse
import collections
import glob
import logging
import os
import random
import re
import sys
import unicodedata
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

from wav2vec2.data.corpora.asterisk import NEAR_SILENT, NEAR_SILENT_DBFS, NO_TRANSCRIPT, Excluded, level_dbfs
from wav2vec2.data.corpora.debian import download_packages, extract_debs
from wav2vec2.data.corpora.text import NUMBER, normalize_transcript
from wav2vec2.data.labels import Dictionary, letters, write_label_lines
from wav2vec2.data.manifest import write_manifest
from wav2vec2.files import atomic_output, atomic_write

logger = logging.getLogger(__name__)

PACKAGES = ("fillets-ng-data", "fillets-ng-data-nl")
GAME = os.path.join("usr", "share", "games", "fillets-ng")  # under the extraction directory
SAMPLE_RATE = 16000
LABEL_MINUTES = (1.0, 5.0, 10.0, 30.0)  # the label budgets of the curves
SPEAKERS = {"font_small": "small", "font_big": "big"}  # any other font: its name without font_

# Beyond text.py's reasons (NUMBER, NOT_SPEECH, KEYPAD_SYMBOL) and asterisk's NO_TRANSCRIPT
# (an .ogg no script gives a Dutch line) and NEAR_SILENT:
EMPTY_AUDIO = "empty audio"  # a file with no samples at all (two in the package)
AMBIGUOUS = "ambiguous transcript"  # one ID given two different Dutch lines in a level's scripts
TOO_SHORT_FOR_LINE = "audio too short for its line"  # listed below: the voice cannot be saying it

# Found by the letters per second of speech (from the first to the last 20 ms frame within
# 35 dB of the file's loudest): 14.5 for the median line, 20.4 at the 99th percentile, 33
# for this one (1.6 s of speech for 64 letters); the next fastest is at 21.8.
# {LEVEL/ID: its line, for the reader}
TOO_SHORT = {
    "gems/zav-v-restart": "Ik denk dat deze kristallen na elk keer herstarten anders liggen.",
}

# dialogId("id", "font", "english") or dialogStr("dutch"): Lua strings with \-escapes.
_STR = r'"((?:[^"\\]|\\.)*)"'
_CALL = re.compile(rf"\b(dialogId|dialogStr)\(\s*{_STR}(?:\s*,\s*{_STR}\s*,\s*{_STR})?\s*\)")


@dataclass
class Line:
    font: str
    english: str
    dutch: str | None  # None: the ID has two different Dutch lines (AMBIGUOUS)


@dataclass
class Utterance:
    relpath: str  # under OUT/audio: LEVEL/ID.flac
    level: str
    speaker: str
    num_samples: int
    words: list[str]
    text: str  # the Dutch line as written

    @property
    def seconds(self) -> float:
        return self.num_samples / SAMPLE_RATE


def _unlua(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def read_dialogs(sources: list[str]) -> dict[str, Line]:
    """{ID: Line} of Lua script texts: each dialogStr gives the Dutch of the dialogId before
    it. A dialogId with no dialogStr has no Dutch line (it is left out); an ID given two
    different Dutch lines gets dutch=None."""
    lines: dict[str, Line] = {}
    last = None
    for source in sources:
        for m in _CALL.finditer(source):
            if m.group(1) == "dialogId":
                last = (_unlua(m.group(2)), _unlua(m.group(3) or ""), _unlua(m.group(4) or ""))
            elif last is not None:
                ident, font, english = last
                dutch = _unlua(m.group(2))
                if ident in lines and lines[ident].dutch != dutch:
                    dutch = None
                lines[ident] = Line(font, english, dutch)
                last = None
    return lines


def level_scripts(game: str, level: str) -> list[str]:
    """The Dutch scripts of LEVEL: script/LEVEL/*_nl.lua; script/share/*_nl.lua for share/X."""
    return sorted(glob.glob(os.path.join(game, "script", level.split("/")[0], "*_nl.lua")))


def normalize_dutch(text: str) -> tuple[list[str] | None, str]:
    """Upper-case words of A-Z and apostrophes (diacritics folded: see the module
    docstring), or (None, reason) as text.py says."""
    words, reason = normalize_transcript(text, "nl")
    if words is None:
        return None, reason
    folded = ["".join(c for c in unicodedata.normalize("NFD", w) if not unicodedata.combining(c)) for w in words]
    return folded, ""


def decode(src: str, dst: str) -> np.ndarray:
    """int16 samples of src at 16 kHz mono, decoded once: dst (FLAC) is written the first
    time (only when not near-silent), then read. Shape: (L,)."""
    if os.path.exists(dst):
        return sf.read(dst, dtype="int16")[0]
    x, rate = sf.read(src, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != SAMPLE_RATE and len(x):
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    pcm = np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    if len(pcm) and level_dbfs(pcm) >= NEAR_SILENT_DBFS:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with atomic_output(dst) as tmp:  # an interrupted run never leaves a half-written file
            sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    return pcm


def split_levels(seconds: dict[str, float], *, test_minutes: float, dev_minutes: float, seed: int) -> dict[str, str]:
    """{level: "test" | "dev" | "train"} of {level: its seconds of audio}. The levels,
    sorted then shuffled with `seed`, go to test until it holds `test_minutes`, then to dev
    until `dev_minutes`, the rest to train (each overshoots by less than one level).
    Raises if train would get nothing."""
    levels = sorted(seconds)
    random.Random(seed).shuffle(levels)
    out, filled = {}, {"test": 0.0, "dev": 0.0}
    for level in levels:
        split = next((s for s, m in (("test", test_minutes), ("dev", dev_minutes)) if filled[s] < m * 60), "train")
        out[level] = split
        if split != "train":
            filled[split] += seconds[level]
    if "train" not in out.values():
        raise ValueError(f"{sum(seconds.values()) / 60:.1f} min in {len(levels)} levels leave no train level "
                         f"after test {test_minutes:g} + dev {dev_minutes:g} min; ask for fewer")
    return out


def label_subsets(train: list[Utterance], minutes: list[float], *, max_seconds: float,
                  seed: int) -> dict[float, list[Utterance]]:
    """{N: train-level utterances of N minutes}, nested: one seeded shuffle, each budget a
    prefix of it, so every smaller set is inside every larger one. Lines over
    `max_seconds` are left out (ctc_demo's batch holds 12 s)."""
    pool = sorted((u for u in train if u.seconds <= max_seconds), key=lambda u: u.relpath)
    random.Random(seed).shuffle(pool)
    total = sum(u.seconds for u in pool)
    out = {}
    for budget in sorted(minutes):
        if budget * 60 > total:
            raise ValueError(f"{budget:g} min of labels asked, the train levels have {total / 60:.1f} min "
                             f"in lines of at most {max_seconds:g} s")
        taken, seconds = [], 0.0
        for u in pool:
            if seconds >= budget * 60:
                break
            taken.append(u)
            seconds += u.seconds
        out[budget] = sorted(taken, key=lambda u: u.relpath)
    return out


@dataclass
class FilletsSummary:
    utterances: list[Utterance] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)  # level -> split
    excluded: list[Excluded] = field(default_factory=list)
    budgets: dict[float, list[Utterance]] = field(default_factory=dict)
    too_long: int = 0  # lines over max_seconds: in no fine-tuning split
    test_texts_in_train: int = 0  # test lines whose words a train level also has (same line said elsewhere)
    out: str = ""

    @property
    def skipped(self) -> collections.Counter:
        return collections.Counter(e.reason for e in self.excluded)

    def _of(self, utts: list[Utterance]) -> str:
        return f"{len(utts)} lines, {sum(u.seconds for u in utts) / 60:.1f} min"

    def __str__(self) -> str:
        utts = self.utterances
        lines = [f"{len(utts)} lines, {sum(u.seconds for u in utts) / 3600:.2f} h, "
                 f"{len({u.level for u in utts})} levels, {len({u.speaker for u in utts})} voices"]
        for speaker in sorted({u.speaker for u in utts}):
            lines.append(f"  voice {speaker}: {self._of([u for u in utts if u.speaker == speaker])}")
        for split in ("train", "dev", "test"):
            levels = sorted(lvl for lvl, s in self.splits.items() if s == split)
            part = [u for u in utts if self.splits[u.level] == split]
            shown = ", ".join(levels) if split != "train" else "the rest"
            lines.append(f"  {split:5s} {len(levels):2d} levels, {self._of(part)} ({shown})")
        lines.append(f"  test lines whose words a train level also has: {self.test_texts_in_train}")
        for budget, subset in self.budgets.items():
            lines.append(f"  finetune_{budget:g}min/train: {self._of(subset)}")
        if self.budgets:
            lines.append(f"  lines over the length limit, in no finetune_*: {self.too_long}")
        counts = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items())) or "none"
        lines.append(f"  excluded {len(self.excluded)} files: {counts} (each with its reason in {self.out}/excluded.tsv)")
        lines += [f"    {e.relpath}: {e.reason}: {e.detail}" for e in self.excluded if e.reason != NUMBER]
        return "\n".join(lines)


def prepare_fillets(out: str, *, test_minutes: float = 10.0, dev_minutes: float = 5.0, seed: int = 1,
                    label_minutes: tuple[float, ...] | list[float] = LABEL_MINUTES,
                    max_seconds: float = 12.0) -> FilletsSummary:
    """Download, decode and write the corpus under `out` (see the module docstring).

    Every .ogg either becomes an utterance or is listed in OUT/excluded.tsv with its
    reason. The level split weighs each level by the audio it has, kept or not, so that
    leaving a file out (a rule added, a line fixed) never moves a level between splits;
    the minutes a split holds are then those of its kept lines, a little under its target
    when one of its levels has a file left out.
    """
    out = os.path.realpath(out)
    extract_dir = os.path.join(out, "extract")
    extract_debs(download_packages(list(PACKAGES), os.path.join(out, "debs"), recipe="prepare_fillets"), extract_dir)
    game = os.path.join(extract_dir, GAME)
    sound = os.path.join(game, "sound")
    nl_dirs = glob.glob(os.path.join(sound, "**", "nl", ""), recursive=True)  # each ends in "/"
    levels = sorted(os.path.relpath(os.path.dirname(os.path.dirname(d)), sound) for d in nl_dirs)
    if not levels:
        raise RuntimeError(f"no sound/LEVEL/nl/ directory under {sound}; extraction incomplete?")

    summary = FilletsSummary(out=out)
    found = collections.Counter()  # seconds of every .ogg per level, kept or not: what the split weighs
    for level in levels:
        sources = []
        for path in level_scripts(game, level):
            with open(path, encoding="utf-8") as f:
                sources.append(f.read())
        dialogs = read_dialogs(sources)
        for path in sorted(glob.glob(os.path.join(sound, level, "nl", "*.ogg"))):
            info = sf.info(path)
            found[level] += info.frames / info.samplerate
            ident = os.path.basename(path)[: -len(".ogg")]
            rel = f"{level}/{ident}.flac"
            line = dialogs.get(ident)
            if line is None or line.dutch is None:
                summary.excluded.append(Excluded(rel, NO_TRANSCRIPT if line is None else AMBIGUOUS, ""))
                continue
            words, reason = normalize_dutch(line.dutch)
            if words is not None and f"{level}/{ident}" in TOO_SHORT:
                words, reason = None, TOO_SHORT_FOR_LINE
            if words is None:
                summary.excluded.append(Excluded(rel, reason, line.dutch))
                continue
            pcm = decode(path, os.path.join(out, "audio", rel))
            if not len(pcm):
                summary.excluded.append(Excluded(rel, EMPTY_AUDIO, line.dutch))
                continue
            if level_dbfs(pcm) < NEAR_SILENT_DBFS:
                summary.excluded.append(Excluded(rel, NEAR_SILENT, f"{level_dbfs(pcm):.1f} dBFS RMS: {line.dutch}"))
                continue
            speaker = SPEAKERS.get(line.font, line.font.removeprefix("font_") or "unknown")
            summary.utterances.append(Utterance(rel, level, speaker, len(pcm), words, line.dutch))

    summary.splits = split_levels(dict(found), test_minutes=test_minutes, dev_minutes=dev_minutes, seed=seed)
    by_split = {s: [u for u in summary.utterances if summary.splits[u.level] == s] for s in ("train", "dev", "test")}
    train_words = {tuple(u.words) for u in by_split["train"]}
    summary.test_texts_in_train = sum(tuple(u.words) in train_words for u in by_split["test"])
    dictionary = Dictionary.from_label_lines(letters(u.words) for u in by_split["train"])
    unseen = sorted({c for s in ("dev", "test") for u in by_split[s] for c in letters(u.words).split()}
                    - set(dictionary.symbols))
    if unseen:
        raise ValueError(f"letters {' '.join(unseen)} of the dev/test levels are in no train level (seed {seed}): "
                         f"a model could never emit them; try another seed")
    if label_minutes:
        summary.budgets = label_subsets(by_split["train"], list(label_minutes), max_seconds=max_seconds, seed=seed)
        summary.too_long = sum(u.seconds > max_seconds for u in summary.utterances)

    root = os.path.join(out, "audio")
    _write_labelled(out, root, by_split, dictionary)
    os.makedirs(os.path.join(out, "pretrain"), exist_ok=True)
    for name, split in (("train", "train"), ("valid", "dev")):
        write_manifest(os.path.join(out, "pretrain", f"{name}.tsv"), root,
                       [(u.relpath, u.num_samples) for u in by_split[split]])
    short = {s: [u for u in by_split[s] if u.seconds <= max_seconds] for s in ("dev", "test")}
    for budget, subset in summary.budgets.items():
        _write_labelled(os.path.join(out, f"finetune_{budget:g}min"), root, {"train": subset, **short}, dictionary)
    atomic_write(os.path.join(out, "utterances.tsv"), "relpath\tsplit\tlevel\tspeaker\tseconds\ttext\n" + "".join(
        f"{u.relpath}\t{summary.splits[u.level]}\t{u.level}\t{u.speaker}\t{u.seconds:.3f}\t{' '.join(u.text.split())}\n"
        for u in summary.utterances))
    atomic_write(os.path.join(out, "excluded.tsv"), "".join(
        "\t".join(" ".join(col.split()) for col in (e.relpath, e.reason, e.detail)) + "\n" for e in summary.excluded))
    return summary


def _write_labelled(directory: str, root: str, splits: dict[str, list[Utterance]], dictionary: Dictionary) -> None:
    os.makedirs(directory, exist_ok=True)
    for split, utts in splits.items():
        write_manifest(os.path.join(directory, f"{split}.tsv"), root, [(u.relpath, u.num_samples) for u in utts])
        write_label_lines(os.path.join(directory, f"{split}.wrd"), [" ".join(u.words) for u in utts])
        write_label_lines(os.path.join(directory, f"{split}.ltr"), [letters(u.words) for u in utts])
    dictionary.save(os.path.join(directory, "dict.ltr.txt"))


_DESCRIPTION = """\
Prepare the Dutch Fish Fillets NG corpus: download Debian's fillets-ng-data and
fillets-ng-data-nl (apt-get download, nothing installed), decode the Dutch voice acting to
16 kHz mono FLAC, pair each line with its Dutch text from the levels' scripts and write
fairseq manifests and letter labels under --out, split by level: about 1,600 lines, 1.6 h,
two voices (the small and the big fish), in about a minute (cached after). Lines whose
text cannot be what is said (digits, no text, empty audio) are left out, each listed with
its reason in OUT/excluded.tsv."""

_EPILOG = """\
written under OUT: {train,dev,test}.{tsv,wrd,ltr} (all labelled lines of the train / dev /
test levels), pretrain/{train,valid}.tsv (audio of the train / dev levels), and for each N
of --label-minutes finetune_Nmin/ (N minutes of train-level labels, the dev and test levels).

  python scripts/prepare_fillets.py --out data/fillets-nl
  python scripts/train.py --config-name demo data.manifest_dir=data/fillets-nl/pretrain run_dir=runs/nl/pretrain
  python scripts/train.py --config-name ctc_demo data.manifest_dir=data/fillets-nl/finetune_10min \\
      task.init=runs/nl/pretrain/checkpoint_best.pt run_dir=runs/nl/ft10"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (also the download cache)")
    parser.add_argument("--test-minutes", type=float, default=10.0,
                        help="whole levels drawn into test until they hold this much (default: %(default)s)")
    parser.add_argument("--dev-minutes", type=float, default=5.0, help="the same for dev (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the level draw and label subsets (default: %(default)s)")
    parser.add_argument("--label-minutes", type=float, nargs="*", default=list(LABEL_MINUTES), metavar="N",
                        help="write finetune_Nmin/ for each N; none for no subsets (default: 1 5 10 30)")
    parser.add_argument("--max-seconds", type=float, default=12.0,
                        help="longer lines stay out of finetune_*/ (ctc_demo batches 12 s) (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(prepare_fillets(args.out, test_minutes=args.test_minutes, dev_minutes=args.dev_minutes, seed=args.seed,
                              label_minutes=args.label_minutes, max_seconds=args.max_seconds))
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
