from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wav2vec2.data import Dictionary, LabelledAudioDataset, RawAudioDataset, read_manifest, write_manifest
from wav2vec2.data.corpora import asterisk
from wav2vec2.data.corpora.asterisk import AsteriskSummary
from wav2vec2.data.corpora.splits import make_finetune_splits, write_language_splits
from wav2vec2.data.labels import letters

# --- make_finetune_splits, on a fake prepared corpus (no network) -------------------------

_WORDS = "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN PRESS PLEASE ENTER".split()
_BUDGETS = {"test_minutes": 0.3, "dev_minutes": 0.2, "train_minutes": 0.4}  # of ~1.6 min of English


def _fake_corpus(out, extra_en=()) -> dict[str, tuple[str, str, int, str]]:
    """A prepared corpus as prepare_asterisk writes it; returns {relpath: (split, wrd, num_samples, lang)}.

    English: 36 two-word texts, the first 10 said twice (as the real prompts repeat "one"),
    plus `extra_en` once each; French: 8 utterances. Every 4th utterance goes to valid.
    """
    rng = np.random.default_rng(0)
    texts = [("en", f"{a} {b}") for a in _WORDS[:6] for b in _WORDS[6:12]]
    texts += texts[:10] + [("en", t) for t in extra_en] + [("fr", f"UN DEUX {w}") for w in "ABCDEFGH"]
    rows = {"train": [], "valid": []}
    for i, (lang, text) in enumerate(texts):
        num_samples = int(rng.integers(16000, 48000))  # 1-3 s
        rel = f"{lang}/p{i:03d}.flac"
        path = os.path.join(out, "audio", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, 0.1 * np.sin(np.arange(num_samples) * 0.05 * (1 + i % 7)), 16000, subtype="PCM_16")
        rows["valid" if i % 4 == 3 else "train"].append((rel, num_samples, text))
    corpus = {}
    for split, split_rows in rows.items():
        write_manifest(os.path.join(out, f"{split}.tsv"), os.path.join(out, "audio"), [r[:2] for r in split_rows])
        for ext, fn in (("wrd", str), ("ltr", lambda t: letters(t.split()))):
            with open(os.path.join(out, f"{split}.{ext}"), "w", encoding="utf-8") as f:
                f.writelines(fn(t) + "\n" for _, _, t in split_rows)
        corpus.update({rel: (split, text, n, rel[:2]) for rel, n, text in split_rows})
    return corpus


def _read_split(path) -> list[tuple[str, int, str, str]]:
    """[(relpath, num_samples, wrd, ltr)] of path.{tsv,wrd,ltr}; asserts they are line-aligned."""
    _, entries = read_manifest(f"{path}.tsv")
    wrd = open(f"{path}.wrd", encoding="utf-8").read().splitlines()
    ltr = open(f"{path}.ltr", encoding="utf-8").read().splitlines()
    assert len(entries) == len(wrd) == len(ltr) > 0
    return [(rel, n, w, l) for (rel, n), w, l in zip(entries, wrd, ltr)]


@pytest.fixture
def fake(tmp_path):
    """(corpus dir, its {relpath: ...}, splits out dir, summary) for seed 1."""
    corpus_dir = str(tmp_path / "corpus")
    corpus = _fake_corpus(corpus_dir)
    out = str(tmp_path / "splits")
    summary = make_finetune_splits(corpus_dir, out, seed=1, **_BUDGETS)
    return corpus_dir, corpus, out, summary


def test_finetune_splits_are_by_prompt_text(fake):
    _, corpus, out, _ = fake
    split = {name: _read_split(os.path.join(out, "finetune_en", name)) for name in ("train", "dev", "test")}
    texts = {name: {w for _, _, w, _ in rows} for name, rows in split.items()}
    assert not texts["test"] & (texts["train"] | texts["dev"])
    assert not texts["dev"] & texts["train"]
    # Whole groups: every English utterance of a chosen text is in that split.
    for name, rows in split.items():
        want = {rel for rel, (_, text, _, lang) in corpus.items() if lang == "en" and text in texts[name]}
        assert {rel for rel, *_ in rows} == want
    counts = collections.Counter(w for rows in split.values() for _, _, w, _ in rows)
    assert max(counts.values()) > 1  # the fake corpus does repeat texts, so grouping was exercised


def test_pretrain_has_everything_but_dev_and_test(fake):
    corpus_dir, corpus, out, _ = fake
    held_out = {rel for name in ("dev", "test") for rel, *_ in _read_split(os.path.join(out, "finetune_en", name))}
    seen = set()
    for split in ("train", "valid"):
        root, entries = read_manifest(os.path.join(out, "pretrain", f"{split}.tsv"))
        assert root == read_manifest(os.path.join(corpus_dir, f"{split}.tsv"))[0]
        for rel, n in entries:
            assert corpus[rel][0] == split and corpus[rel][2] == n  # the corpus's own division
        seen |= {rel for rel, _ in entries}
    assert not seen & held_out
    assert seen == set(corpus) - held_out
    assert {corpus[rel][3] for rel in seen} == {"en", "fr"}
    train = RawAudioDataset(os.path.join(out, "pretrain", "train.tsv"))  # the project's loader reads it
    assert len(train) == sum(1 for rel in seen if corpus[rel][0] == "train")


def test_language_splits_keep_only_those_languages(fake):
    _, corpus, out, _ = fake
    for languages in (["fr"], ["en"], ["en", "fr"]):
        directory = write_language_splits(out, languages)
        assert directory == os.path.join(out, "pretrain_" + "-".join(languages))
        for split in ("train", "valid"):
            kept = read_manifest(os.path.join(directory, f"{split}.tsv"))[1]
            whole = read_manifest(os.path.join(out, "pretrain", f"{split}.tsv"))[1]
            assert kept == [(rel, n) for rel, n in whole if corpus[rel][3] in languages]  # same order, same lines
    with pytest.raises(ValueError, match=r"holds no audio of ru \(its languages: en, fr\)"):
        write_language_splits(out, ["ru"])


def _assert_minutes(rows, minutes: float) -> None:
    """Whole groups until the target is reached: at least it, and over by less than one group."""
    seconds = sum(n for _, n, _, _ in rows) / 16000
    group = {w: sum(n for _, n, w2, _ in rows if w2 == w) / 16000 for _, _, w, _ in rows}
    assert minutes * 60 <= seconds < minutes * 60 + max(group.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_finetune_minutes_reached_within_one_group(tmp_path, seed):
    corpus = _fake_corpus(str(tmp_path / "corpus"))
    summary = make_finetune_splits(str(tmp_path / "corpus"), str(tmp_path / "out"), seed=seed, **_BUDGETS)
    for name in ("train", "dev", "test"):
        rows = _read_split(tmp_path / "out" / "finetune_en" / name)
        _assert_minutes(rows, _BUDGETS[f"{name}_minutes"])
        assert summary.finetune[name].num_utterances == len(rows)
        assert summary.finetune[name].seconds == pytest.approx(sum(n for _, n, _, _ in rows) / 16000)
    # Small train on purpose: the rest of English is only pretrained on.
    en = sum(1 for v in corpus.values() if v[3] == "en")
    assert summary.unused.num_utterances == en - sum(s.num_utterances for s in summary.finetune.values()) > 0


def test_finetune_labels_line_aligned_and_dict_covers_dev_test(fake):
    _, corpus, out, summary = fake
    base = os.path.join(out, "finetune_en")
    for name in ("train", "dev", "test"):
        for rel, n, w, l in _read_split(os.path.join(base, name)):
            assert (corpus[rel][1], corpus[rel][2]) == (w, n)
            assert l == letters(w.split())
    train_ltr = open(os.path.join(base, "train.ltr"), encoding="utf-8").read().split()
    counts = collections.Counter(train_ltr)
    want = [f"{c} {k}" for c, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    assert open(os.path.join(base, "dict.ltr.txt"), encoding="utf-8").read().splitlines() == want
    dictionary = Dictionary.load(os.path.join(base, "dict.ltr.txt"))
    for name in ("dev", "test"):  # the project's own loader rejects a letter missing from the dict
        tsv, ltr = os.path.join(base, f"{name}.tsv"), os.path.join(base, f"{name}.ltr")
        ds = LabelledAudioDataset(tsv, labels_path=ltr, dictionary=dictionary)
        assert len(ds) == summary.finetune[name].num_utterances
    test = _read_split(os.path.join(base, "test"))
    assert summary.test_words == sum(len(w.split()) for _, _, w, _ in test)
    assert summary.test_letters == sum(len(w.replace(" ", "")) for _, _, w, _ in test)


def test_a_dev_test_letter_missing_from_train_forces_a_group_into_train(tmp_path):
    _fake_corpus(str(tmp_path / "corpus"), extra_en=["QUIT NOW", "PLEASE QUIT", "QUIT"])
    forced = 0
    for seed in range(40):
        out = tmp_path / f"out{seed}"
        try:
            summary = make_finetune_splits(str(tmp_path / "corpus"), str(out), seed=seed, **_BUDGETS)
        except ValueError as e:  # every Q prompt drawn into dev/test: the next test's case
            assert "'Q'" in str(e)
            continue
        split = {name: _read_split(out / "finetune_en" / name) for name in ("train", "dev", "test")}
        symbols = {name: {c for *_, ltr in rows for c in ltr.split()} for name, rows in split.items()}
        assert symbols["dev"] | symbols["test"] <= symbols["train"]
        assert set(summary.coverage) <= (symbols["dev"] | symbols["test"])
        _assert_minutes(split["train"], _BUDGETS["train_minutes"])  # forced groups count toward it
        forced += "Q" in summary.coverage
    assert forced > 0  # the case happened at least once


def test_a_letter_only_in_dev_test_is_an_error(tmp_path):
    _fake_corpus(str(tmp_path / "corpus"), extra_en=["ZERO"])
    errors = 0
    for seed in range(40):
        try:
            make_finetune_splits(str(tmp_path / "corpus"), str(tmp_path / f"out{seed}"), seed=seed, **_BUDGETS)
        except ValueError as e:
            assert "'Z'" in str(e) and "seed" in str(e)
            assert not (tmp_path / f"out{seed}").exists()  # nothing half-written
            errors += 1
    assert 0 < errors < 40


def test_finetune_splits_deterministic_per_seed(tmp_path):
    _fake_corpus(str(tmp_path / "corpus"))

    def files(seed: int, name: str) -> dict[str, bytes]:
        out = tmp_path / name
        make_finetune_splits(str(tmp_path / "corpus"), str(out), seed=seed, **_BUDGETS)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a, b, c = files(1, "a"), files(1, "b"), files(2, "c")
    assert len(a) == 12 and a == b
    assert a["finetune_en/test.tsv"] != c["finetune_en/test.tsv"]


def test_finetune_splits_errors(tmp_path):
    corpus = _fake_corpus(str(tmp_path / "corpus"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"'en' has 1\.\d min .* too little .* train 1 min"):
        make_finetune_splits(str(tmp_path / "corpus"), str(out), **{**_BUDGETS, "train_minutes": 1.0})
    # Enough audio in total, but test and dev overshoot in whole groups and leave train short.
    en_minutes = sum(n for _, _, n, lang in corpus.values() if lang == "en") / 16000 / 60
    almost_all = en_minutes - _BUDGETS["test_minutes"] - _BUDGETS["dev_minutes"] - 0.001
    with pytest.raises(ValueError, match=r"too little .* \(train got"):
        make_finetune_splits(str(tmp_path / "corpus"), str(out), **{**_BUDGETS, "train_minutes": almost_all})
    with pytest.raises(ValueError, match=r"no 'it' utterances .* en, fr"):
        make_finetune_splits(str(tmp_path / "corpus"), str(out), language="it")
    with pytest.raises(ValueError, match="dev_minutes must be positive"):
        make_finetune_splits(str(tmp_path / "corpus"), str(out), dev_minutes=0)
    assert not out.exists()  # every check runs before anything is written


def test_cli_finetune_splits(tmp_path, monkeypatch, capsys):
    corpus = str(tmp_path / "corpus")
    _fake_corpus(corpus)
    calls = []
    monkeypatch.setattr(asterisk, "prepare_asterisk", lambda out, **kw: calls.append(out) or AsteriskSummary())
    budget = [f"--{k.replace('_', '-')}={v}" for k, v in _BUDGETS.items()]

    assert asterisk.main(["--out", corpus, "--finetune-splits", str(tmp_path / "low"), *budget]) == 0
    assert calls == [corpus]
    printed = capsys.readouterr().out
    assert "fine-tuning splits of 'en'" in printed and "pretrain train" in printed
    assert (tmp_path / "low" / "finetune_en" / "dict.ltr.txt").exists()

    assert asterisk.main(["--out", corpus, "--finetune-splits", str(tmp_path / "big"), "--train-minutes", "100"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 'en' has") and "Traceback" not in err

    monkeypatch.setattr(asterisk, "make_finetune_splits", lambda *a, **k: pytest.fail("not asked for"))
    assert asterisk.main(["--out", corpus]) == 0  # unchanged without --finetune-splits


def test_long_prompts_are_only_pretrained_on(tmp_path):
    """Prompts over max_seconds stay out of every fine-tuning split (they would set the batch
    budget for all the short ones) but are still pretraining audio."""
    corpus_dir = str(tmp_path / "corpus")
    corpus = _fake_corpus(corpus_dir)  # English prompts of 1-3 s
    out = str(tmp_path / "splits")
    limit = 2.5
    summary = make_finetune_splits(corpus_dir, out, seed=1, max_seconds=limit, test_minutes=0.1, dev_minutes=0.1,
                                   train_minutes=0.2)
    finetuned = [row for name in ("train", "dev", "test") for row in _read_split(os.path.join(out, "finetune_en", name))]
    assert finetuned and all(n <= limit * 16000 for _, n, _, _ in finetuned)
    long_en = {rel for rel, (_, _, n, lang) in corpus.items() if lang == "en" and n > limit * 16000}
    assert long_en
    pretrained = {rel for split in ("train", "valid")
                  for rel, _ in read_manifest(os.path.join(out, "pretrain", f"{split}.tsv"))[1]}
    assert long_en <= pretrained
    assert summary.unused.num_utterances >= len(long_en)
    with pytest.raises(ValueError, match="max_seconds"):
        make_finetune_splits(corpus_dir, str(tmp_path / "x"), max_seconds=0, **_BUDGETS)


def test_help_gives_the_route_to_finetuning(capsys):
    """--help says what --finetune-splits writes and how to fine-tune on it, in the same
    commands scripts/finetune_demo.sh runs (not a function name to go and read)."""
    with pytest.raises(SystemExit) as exit_:
        asterisk.main(["--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.replace("\\\n", " ").split())
    for needle in ("DIR/finetune_LANG/", "DIR/pretrain/", "10 min", "dev 2 min", "test 4 min", "excluded.tsv",
                   "scripts/finetune_demo.sh", "python -m wav2vec2.infer.evaluate"):
        assert needle in shown
    assert "make_finetune_splits" not in shown
    script = (Path(__file__).resolve().parents[3] / "scripts" / "finetune_demo.sh").read_text()
    assert "DATA=${W2V_DATA:-data/asterisk}" in script and "SPLITS=${DATA}-lowres" in script
    pairs = [  # (what the script runs, what the help shows), with SPLITS = data/asterisk-lowres
        ('prepare_asterisk.py --out "$DATA" --finetune-splits "$SPLITS"',
         "prepare_asterisk.py --out data/asterisk --finetune-splits data/asterisk-lowres"),
        ('--config-name demo data.manifest_dir="$SPLITS/pretrain"',
         "--config-name demo data.manifest_dir=data/asterisk-lowres/pretrain"),
        ('--config-name ctc_demo data.manifest_dir="$SPLITS/finetune_en"',
         "--config-name ctc_demo data.manifest_dir=data/asterisk-lowres/finetune_en"),
        ("PRETRAIN_UPDATES=${W2V_PRETRAIN_UPDATES:-5000}", "optim.max_update=5000 run_dir=runs/ft/pretrain"),
    ]
    for in_script, in_help in pairs:
        assert in_script in script and in_help in shown
