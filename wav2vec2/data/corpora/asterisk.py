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

`make_finetune_splits` then cuts the low-resource experiment out of a prepared corpus:
unlabelled audio of every language for pretraining, and a small labelled split of one
language for CTC fine-tuning, with dev/test prompts never heard in either (see there).
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
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from wav2vec2.data.manifest import read_manifest, write_manifest
from wav2vec2.files import atomic_output, atomic_write

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "es", "fr", "it", "ru")
SAMPLE_RATE = 16000

# Single digits as read in these prompts ("press 1"). Russian number words inflect
# (одну/один/одна), so Russian lines with digits are skipped rather than guessed.
_DIGITS = {
    "en": "zero one two three four five six seven eight nine",
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve",
    "fr": "zéro un deux trois quatre cinq six sept huit neuf",
    "it": "zero uno due tre quattro cinque sei sette otto nove",
}


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


def normalize_transcript(text: str, lang: str) -> tuple[list[str] | None, str]:
    """Upper-case words of letters and apostrophes, or (None, reason) if unusable.

    Bracketed parts are stage directions ("[beep]", "dot [.]") and are removed; a line
    that is nothing but those is not speech. Single digits become words (not for ru).
    """
    text = unicodedata.normalize("NFC", re.sub(r"\[[^\]]*\]", " ", text))
    if re.search(r"\d\d", text) or (re.search(r"\d", text) and lang not in _DIGITS):
        return None, "number"
    if lang in _DIGITS:
        names = _DIGITS[lang].split()
        text = re.sub(r"\d", lambda m: f" {names[int(m.group())]} ", text)
    text = text.replace("\u2019", "'").upper()
    cleaned = "".join(c if unicodedata.category(c).startswith("L") or c == "'" else " " for c in text)
    words = [w.strip("'") for w in cleaned.split()]
    words = [w for w in words if w]
    return (words, "") if words else (None, "not speech")


def letters(words: list[str]) -> str:
    """fairseq .ltr line: letters separated by spaces, '|' after every word."""
    return " ".join(" ".join(w) + " |" for w in words)


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
        _write_lines(os.path.join(out, f"{split}.wrd"), [" ".join(u.words) for u in utts])
        _write_lines(os.path.join(out, f"{split}.ltr"), [letters(u.words) for u in utts])
    _write_dict(os.path.join(out, "dict.ltr.txt"), [letters(u.words) for u in splits["train"]])
    return summary


def _write_lines(path: str, lines: list[str]) -> None:
    """One line per item, atomically (`wav2vec2.files.atomic_write`): never half a file."""
    atomic_write(path, "".join(line + "\n" for line in lines))


def _write_dict(path: str, ltr_lines: list[str]) -> None:
    """fairseq dict.ltr.txt: `SYMBOL COUNT` over the .ltr lines, most frequent first."""
    counts = collections.Counter(c for line in ltr_lines for c in line.split())
    _write_lines(path, [f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))])


def _decode_once(src: str, dst: str) -> int:
    """Decode src to dst unless dst exists; returns its number of samples."""
    if os.path.exists(dst):
        return sf.info(dst).frames
    pcm = decode_g722(src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with atomic_output(dst) as tmp:  # an interrupted run never leaves a half-written file
        sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")  # tmp's name ends in .tmp
    return len(pcm)


@dataclass
class _Labelled:
    """One utterance of a prepared corpus, with its label lines as written there."""

    relpath: str
    num_samples: int
    wrd: str
    ltr: str
    split: str  # "train" or "valid": the corpus's own division, kept for pretraining


@dataclass
class SplitStats:
    num_utterances: int = 0
    seconds: float = 0.0
    num_texts: int = 0  # distinct prompt texts

    @classmethod
    def of(cls, utts: list[_Labelled]) -> SplitStats:
        return cls(len(utts), sum(u.num_samples for u in utts) / SAMPLE_RATE, len({u.wrd for u in utts}))

    def __str__(self) -> str:
        return f"{self.num_utterances:4d} utts, {self.num_texts:4d} texts, {self.seconds / 60:6.2f} min"


@dataclass
class FinetuneSplits:
    """What make_finetune_splits wrote; str() is the CLI's report."""

    language: str
    seed: int
    num_texts: int  # distinct prompt texts of `language` in the corpus
    finetune: dict[str, SplitStats]  # test / dev / train
    unused: SplitStats  # `language` utterances in no fine-tuning split: pretraining only
    pretrain: dict[str, SplitStats]  # train / valid over all languages, dev/test excluded
    test_words: int
    test_letters: int  # letters of the test transcripts, not counting the word boundary "|"
    coverage: list[str]  # dev/test letters the random fill of train missed: a group with each was forced in

    def __str__(self) -> str:
        lines = [f"fine-tuning splits of {self.language!r} by prompt text (seed {self.seed}, "
                 f"{self.num_texts} distinct texts):"]
        lines += [f"  {name:5s} {stats}" for name, stats in self.finetune.items()]
        lines.append(f"  test has {self.test_words} words, {self.test_letters} letters (not counting |)")
        lines.append(f"  unused {self.unused} (pretraining only: the rest, and prompts over the length limit)")
        if self.coverage:
            forced = " ".join(self.coverage)
            lines.append(f"  train starts with a group for each dev/test letter it would miss: {forced}")
        lines += [f"pretrain {name:5s} {stats.num_utterances} utts, {stats.seconds / 3600:.2f} h "
                  f"(all languages; {self.language} dev/test left out)" for name, stats in self.pretrain.items()]
        return "\n".join(lines)


def make_finetune_splits(
    corpus: str,
    out: str,
    *,
    language: str = "en",
    train_minutes: float = 10.0,
    dev_minutes: float = 2.0,
    test_minutes: float = 4.0,
    max_seconds: float = 12.0,
    seed: int = 1,
) -> FinetuneSplits:
    """Cut the low-resource experiment out of a prepared corpus.

    Pretrain on unlabelled audio of every language, fine-tune CTC on a few minutes of
    `language`, test on prompts never seen in fine-tuning. Writes

        out/pretrain/{train,valid}.tsv      every utterance but the dev/test ones, in the
                                            corpus's own train/valid division
        out/finetune_{language}/{train,dev,test}.{tsv,wrd,ltr}, dict.ltr.txt

    Many prompts repeat a text ("one" is digits/1 and another file), so the split is by
    prompt text: utterances with the same .wrd line form a group, and a group goes wholly
    to one split. Groups are shuffled with `seed`; test, then dev, then train take groups
    until they reach their minutes (so each overshoots by less than one group). Train is
    small on purpose: the rest of `language` is not fine-tuned on, only pretrained on. Dev
    and test audio is left out of pretraining too: the test must be unheard.

    dict.ltr.txt counts train's letters, and a dev/test letter missing from it could never
    be emitted (labels.py rejects it). So if the random fill of train misses such a letter,
    train is drawn again starting with the first shuffled group that has it, then filled to
    its minutes, until no letter is missing (forced groups count toward the minutes; train
    overshoots only if they alone exceed them). If no group left has the letter, this
    raises rather than move a group out of test, which would leave test short of its
    minutes. Everything is checked before anything is written, and each file is written
    atomically.

    Prompts longer than `max_seconds` (a few of 30 s) take no part in fine-tuning or its
    test, only in pretraining: one of them would set the batch budget (`data.max_tokens`)
    for all the 1-2 s others.
    """
    budgets = {"test": test_minutes * 60, "dev": dev_minutes * 60, "train": train_minutes * 60}
    for name, seconds in budgets.items():
        if not seconds > 0:
            raise ValueError(f"{name}_minutes must be positive, got {seconds / 60}")
    root, utts = _read_labelled_corpus(corpus)
    ours = [u for u in utts if _language(u.relpath) == language]
    if not ours:
        found = ", ".join(sorted({_language(u.relpath) for u in utts}))
        raise ValueError(f"no {language!r} utterances in {corpus} (it has: {found})")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    too_long = [u for u in ours if u.num_samples > max_seconds * SAMPLE_RATE]
    ours = [u for u in ours if u.num_samples <= max_seconds * SAMPLE_RATE]

    by_text: dict[str, list[_Labelled]] = collections.defaultdict(list)
    for u in ours:
        by_text[u.wrd].append(u)

    def too_little(detail: str = "") -> ValueError:
        return ValueError(
            f"{language!r} has {_seconds(ours) / 60:.1f} min in {len(ours)} utterances of at most {max_seconds:g} s "
            f"({len(by_text)} texts), "
            f"too little for test {test_minutes:g} + dev {dev_minutes:g} + train {train_minutes:g} min in whole "
            f"prompt groups{detail}; ask for fewer minutes"
        )

    if _seconds(ours) < sum(budgets.values()):
        raise too_little()
    groups = [by_text[text] for text in sorted(by_text)]  # sorted: the seeded shuffle alone decides
    random.Random(seed).shuffle(groups)
    test, rest = _fill(groups, budgets["test"])
    dev, rest = _fill(rest, budgets["dev"])

    held_out_symbols = {c for g in test + dev for c in _symbols(g)}
    coverage: list[str] = []  # letters the random fill missed; grows until train has them all
    while True:
        first: list[int] = []  # for each such letter, the first shuffled group that has it
        for symbol in coverage:
            if any(symbol in _symbols(rest[i]) for i in first):
                continue
            index = next((i for i, g in enumerate(rest) if symbol in _symbols(g)), None)
            if index is None:
                raise ValueError(
                    f"letter {symbol!r} of the {language} dev/test prompts is in no prompt left for train, "
                    f"so the fine-tuned model could never emit it; try another seed or fewer dev/test minutes"
                )
            first.append(index)
        forced = [rest[i] for i in first]
        budget = budgets["train"] - sum(_seconds(g) for g in forced)
        train = forced + _fill([g for i, g in enumerate(rest) if i not in first], budget)[0]
        missing = held_out_symbols - {c for g in train for c in _symbols(g)}
        if not missing:
            break
        coverage += sorted(missing)

    chosen = {name: [u for g in split for u in g] for name, split in (("test", test), ("dev", dev), ("train", train))}
    for name, seconds in budgets.items():
        if _seconds(chosen[name]) < seconds:  # enough in total, but groups overshot earlier splits
            raise too_little(f" ({name} got {_seconds(chosen[name]) / 60:.2f} min)")

    for name in chosen:
        chosen[name].sort(key=lambda u: u.relpath)
    held_out = {u.relpath for u in chosen["test"] + chosen["dev"]}
    pretrain = {s: [u for u in utts if u.split == s and u.relpath not in held_out] for s in ("train", "valid")}

    def entries(split_utts: list[_Labelled]) -> list[tuple[str, int]]:
        return [(u.relpath, u.num_samples) for u in split_utts]

    os.makedirs(os.path.join(out, "pretrain"), exist_ok=True)
    for split, split_utts in pretrain.items():
        write_manifest(os.path.join(out, "pretrain", f"{split}.tsv"), root, entries(split_utts))
    finetune_dir = os.path.join(out, f"finetune_{language}")
    os.makedirs(finetune_dir, exist_ok=True)
    for name in ("train", "dev", "test"):
        write_manifest(os.path.join(finetune_dir, f"{name}.tsv"), root, entries(chosen[name]))
        _write_lines(os.path.join(finetune_dir, f"{name}.wrd"), [u.wrd for u in chosen[name]])
        _write_lines(os.path.join(finetune_dir, f"{name}.ltr"), [u.ltr for u in chosen[name]])
    _write_dict(os.path.join(finetune_dir, "dict.ltr.txt"), [u.ltr for u in chosen["train"]])

    used = {u.relpath for split_utts in chosen.values() for u in split_utts}
    return FinetuneSplits(
        language=language,
        seed=seed,
        num_texts=len(by_text),
        finetune={name: SplitStats.of(split_utts) for name, split_utts in chosen.items()},
        unused=SplitStats.of([u for u in ours if u.relpath not in used] + too_long),
        pretrain={split: SplitStats.of(split_utts) for split, split_utts in pretrain.items()},
        test_words=sum(len(u.wrd.split()) for u in chosen["test"]),
        test_letters=sum(c != "|" for u in chosen["test"] for c in u.ltr.split()),
        coverage=coverage,
    )


def _read_labelled_corpus(corpus: str) -> tuple[str, list[_Labelled]]:
    """(audio root, utterances) of a prepared corpus's train and valid splits."""
    roots, utts = set(), []
    for split in ("train", "valid"):
        tsv = os.path.join(corpus, f"{split}.tsv")
        if not os.path.exists(tsv):
            raise ValueError(f"{tsv} not found: prepare the corpus first (prepare_asterisk)")
        root, entries = read_manifest(tsv)
        roots.add(root)
        labels = {}
        for ext in ("wrd", "ltr"):
            path = os.path.join(corpus, f"{split}.{ext}")
            with open(path, encoding="utf-8") as f:  # iterate, not splitlines(): see labels.py
                labels[ext] = [line.rstrip("\n") for line in f]
            if len(labels[ext]) != len(entries):
                raise ValueError(f"{path}: {len(labels[ext])} lines but {tsv} has {len(entries)} entries")
        for (rel, n), wrd, ltr in zip(entries, labels["wrd"], labels["ltr"]):
            utts.append(_Labelled(rel, n, " ".join(wrd.split()), ltr, split))
    if len(roots) != 1:
        raise ValueError(f"{corpus}: train.tsv and valid.tsv have different roots {sorted(roots)}")
    return roots.pop(), utts


def _fill(groups: list[list[_Labelled]], seconds: float) -> tuple[list[list[_Labelled]], list[list[_Labelled]]]:
    """(taken, left): groups from the front until they reach `seconds` (overshoot < one group)."""
    total = 0.0
    for i, group in enumerate(groups):
        if total >= seconds:
            return groups[:i], groups[i:]
        total += _seconds(group)
    return groups, []


def _symbols(group: list[_Labelled]) -> set[str]:
    return set(group[0].ltr.split())  # a group shares one text


def _language(relpath: str) -> str:
    return relpath.split("/", 1)[0]  # prepare_asterisk writes audio/XX/<name>.flac


def _seconds(utts: list[_Labelled]) -> float:
    return sum(u.num_samples for u in utts) / SAMPLE_RATE


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
