"""The low-resource experiment cut out of a prepared corpus (`make_finetune_splits`).

Pretrain on unlabelled audio of every language, fine-tune CTC on a few minutes of one
language, test on prompts never heard in either. Reads a corpus in the layout that
`wav2vec2.data.corpora.asterisk` writes (OUT/{train,valid}.{tsv,wrd,ltr}, audio under
OUT/audio/XX/ with XX the language) and writes

    SPLITS/pretrain/{train,valid}.tsv                  for configs/demo.yaml
    SPLITS/finetune_XX/{train,dev,test}.{tsv,wrd,ltr}  for configs/ctc_demo.yaml
    SPLITS/finetune_XX/dict.ltr.txt

(scripts/finetune_demo.sh runs both trainings on them), and on demand the pretraining audio
of some languages only (`write_language_splits`: SPLITS/pretrain_XX-YY/, for the
language-transfer experiment of scripts/continue_demo.sh).
"""

from __future__ import annotations

import collections
import os
import random
from dataclasses import dataclass

from wav2vec2.data.labels import Dictionary, write_label_lines
from wav2vec2.data.manifest import read_manifest, write_manifest

SAMPLE_RATE = 16000  # of a prepared corpus: seconds = num_samples / SAMPLE_RATE


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
        write_label_lines(os.path.join(finetune_dir, f"{name}.wrd"), [u.wrd for u in chosen[name]])
        write_label_lines(os.path.join(finetune_dir, f"{name}.ltr"), [u.ltr for u in chosen[name]])
    Dictionary.from_label_lines(u.ltr for u in chosen["train"]).save(os.path.join(finetune_dir, "dict.ltr.txt"))

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


def write_language_splits(splits: str, languages: list[str]) -> str:
    """SPLITS/pretrain_XX-YY/{train,valid}.tsv: the lines of SPLITS/pretrain/ whose audio is
    in one of `languages` (the XX/ directory under the corpus's audio root). Returns that
    directory. An empty result is an error naming the languages the manifests hold."""
    out = os.path.join(splits, "pretrain_" + "-".join(languages))
    os.makedirs(out, exist_ok=True)
    for split in ("train", "valid"):
        root, entries = read_manifest(os.path.join(splits, "pretrain", f"{split}.tsv"))
        kept = [(rel, n) for rel, n in entries if _language(rel) in languages]
        if not kept:
            found = sorted({_language(rel) for rel, _ in entries})
            raise ValueError(f"{splits}/pretrain/{split}.tsv holds no audio of {', '.join(languages)} "
                             f"(its languages: {', '.join(found)})")
        write_manifest(os.path.join(out, f"{split}.tsv"), root, kept)
    return out


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

