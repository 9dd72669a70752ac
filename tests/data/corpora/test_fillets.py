from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from wav2vec2.data import RawAudioDataset, read_manifest, synth_utterance
from wav2vec2.data.corpora import fillets
from wav2vec2.data.corpora.fillets import (
    Utterance,
    label_subsets,
    normalize_dutch,
    prepare_fillets,
    read_dialogs,
    split_levels,
)
from wav2vec2.data.labels import Dictionary, letters


def test_read_dialogs_pairs_each_dutch_line_with_the_id_before_it():
    script = '''
dialogId("vit-m-jakze", "font_small", "What?! A fish restaurant?")
dialogStr("Wat?! Een visrestaurant?")

dialogId("laser", "", "")

dialogId("war-v-x", "font_big", "to \\\\/etc")
dialogStr("naar \\\\/etc, \\"zei\\" hij")
'''
    other = 'dialogId("twice", "font_big", "a")\ndialogStr("een")\ndialogId("twice", "font_big", "a")\ndialogStr("twee")\n'
    lines = read_dialogs([script, other])
    assert set(lines) == {"vit-m-jakze", "war-v-x", "twice"}  # "laser" has no Dutch line
    assert lines["vit-m-jakze"] == fillets.Line("font_small", "What?! A fish restaurant?", "Wat?! Een visrestaurant?")
    assert lines["war-v-x"].dutch == 'naar \\/etc, "zei" hij'
    assert lines["twice"].dutch is None  # two different Dutch lines: ambiguous


@pytest.mark.parametrize(
    "text, want",
    [
        ("Wat?! Een visrestaurant?", ["WAT", "EEN", "VISRESTAURANT"]),
        ("Één geëerde ruïne, zo'n café.", ["EEN", "GEEERDE", "RUINE", "ZO'N", "CAFE"]),  # diacritics folded
        ("...dan...?", ["DAN"]),
        ("harde-schijfLEDje", ["HARDE", "SCHIJFLEDJE"]),
        ("druk op de F3 toets", None),  # digits: left out, not guessed
        ("[zucht]", None),  # nothing but a note
    ],
)
def test_normalize_dutch(text, want):
    words, reason = normalize_dutch(text)
    assert words == want
    assert (reason == "") == (want is not None)
    if want is not None:
        assert all(c.isascii() and (c.isalpha() or c == "'") for w in words for c in w)


def test_split_levels_is_deterministic_and_fills_test_then_dev():
    seconds = {f"level{i:02d}": 60.0 + i for i in range(20)}
    split = split_levels(seconds, test_minutes=3, dev_minutes=2, seed=1)
    assert split == split_levels(dict(reversed(seconds.items())), test_minutes=3, dev_minutes=2, seed=1)
    assert set(split) == set(seconds)
    minutes = {s: sum(seconds[lvl] for lvl, t in split.items() if t == s) / 60 for s in ("test", "dev")}
    assert 3 <= minutes["test"] < 3 + 80 / 60 and 2 <= minutes["dev"] < 2 + 80 / 60
    assert split != split_levels(seconds, test_minutes=3, dev_minutes=2, seed=2)
    with pytest.raises(ValueError, match="no train level"):
        split_levels(seconds, test_minutes=15, dev_minutes=10, seed=1)


def _utt(i: int, seconds: float) -> Utterance:
    return Utterance(f"l{i % 3}/u{i:03d}.flac", f"l{i % 3}", "small", int(seconds * 16000), ["JA"], "Ja.")


def test_label_subsets_are_nested_and_hold_their_minutes():
    train = [_utt(i, 2.0 + (i % 5)) for i in range(100)] + [_utt(999, 20.0)]
    subsets = label_subsets(train, [2.0, 0.5, 1.0], max_seconds=12.0, seed=1)
    assert list(subsets) == [0.5, 1.0, 2.0]
    for minutes, subset in subsets.items():
        total = sum(u.seconds for u in subset)
        assert minutes * 60 <= total < minutes * 60 + 7  # overshoot < one line
        assert "l0/u999.flac" not in {u.relpath for u in subset}  # over max_seconds
    assert {u.relpath for u in subsets[0.5]} <= {u.relpath for u in subsets[1.0]} <= {u.relpath for u in subsets[2.0]}
    with pytest.raises(ValueError, match="10 min of labels asked"):
        label_subsets(train, [10.0], max_seconds=12.0, seed=1)


# --- prepare_fillets on fake extracted packages (no network) ----------------------------

def _ogg(path, seconds: float, dbfs: float, seed: int) -> None:
    """Speech-like stereo Vorbis at 22.05 kHz, as the package's files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * 22050)
    x = synth_utterance(n, sample_rate=22050, rng=np.random.default_rng(seed)).astype(np.float64) if n else np.zeros(0)
    x = x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20) if n else x
    sf.write(path, np.stack([x, 0.9 * x], axis=1), 22050, format="OGG", subtype="VORBIS")


_WORDS = "vis water zee boot steen krab schelp wier golf zand anker net kreeft".split()


def _fake_packages(out, monkeypatch, seconds: float = 3.0) -> dict[str, str]:
    """Twelve levels of three lines, one shared set, and one case per exclusion rule, as
    dpkg-deb -x leaves them under out/extract; returns {relpath: .wrd line} of the kept."""
    monkeypatch.setattr(fillets, "download_packages", lambda pkgs, debs_dir, recipe: [])
    monkeypatch.setattr(fillets, "extract_debs", lambda debs, extract_dir: None)
    game = out / "extract" / "usr" / "share" / "games" / "fillets-ng"
    kept = {}
    levels = {f"level{i:02d}": "dialogs_nl.lua" for i in range(12)} | {"share/border": "border_dialogs_nl.lua"}
    for n, (level, script_name) in enumerate(levels.items()):
        script = []
        for j, (speaker, font) in enumerate((("m", "font_small"), ("v", "font_big"), ("m", "font_small"))):
            ident = f"l{n}-{speaker}-{j}"
            text = f"Een {_WORDS[n]} is {_WORDS[j]}!"
            script.append(f'dialogId("{ident}", "{font}", "english")\ndialogStr("{text}")\n')
            _ogg(game / "sound" / level / "nl" / f"{ident}.ogg", seconds, -20, 10 * n + j)
            kept[f"{level}/{ident}.flac"] = f"EEN {_WORDS[n].upper()} IS {_WORDS[j].upper()}"
        if level == "level00":
            cases = {"orphan": None, "digits": "Druk op F3.", "note": "[zucht]", "empty": "Stil.",
                     "hush": "Hoor je dat?", "twice": "Een."}
            for ident, text in cases.items():
                _ogg(game / "sound" / level / "nl" / f"{ident}.ogg", 0.0 if ident == "empty" else 2 * seconds / 3,
                     -80 if ident == "hush" else -20, 99)
                if text is not None:
                    script.append(f'dialogId("{ident}", "font_big", "x")\ndialogStr("{text}")\n')
            script.append('dialogId("twice", "font_big", "x")\ndialogStr("Twee.")\n')
        (game / "script" / level.split("/")[0]).mkdir(parents=True, exist_ok=True)
        (game / "script" / level.split("/")[0] / script_name).write_text("".join(script), encoding="utf-8")
    (game / "sound" / "share" / "sp-bubles_00.ogg").write_bytes(b"")  # not in an nl/ directory: not a line
    return kept


_EXCLUDED = {
    "level00/orphan.flac": "no transcript",
    "level00/digits.flac": "number",
    "level00/note.flac": "not speech",
    "level00/empty.flac": "empty audio",
    "level00/hush.flac": "near-silent audio",
    "level00/twice.flac": "ambiguous transcript",
}


def _read(directory, split) -> dict[str, str]:
    _, entries = read_manifest(directory / f"{split}.tsv")
    wrd = (directory / f"{split}.wrd").read_text(encoding="utf-8").splitlines()
    ltr = (directory / f"{split}.ltr").read_text(encoding="utf-8").splitlines()
    assert len(entries) == len(wrd) == len(ltr)
    assert all(line == letters(w.split()) for w, line in zip(wrd, ltr))
    return {rel: w for (rel, _), w in zip(entries, wrd)}


def test_prepare_splits_by_level_and_says_what_it_left_out(tmp_path, monkeypatch):
    out = tmp_path / "nl"
    want = _fake_packages(out, monkeypatch)
    summary = prepare_fillets(str(out), test_minutes=0.2, dev_minutes=0.1, label_minutes=[0.1, 0.2], seed=3)

    got = {split: _read(out, split) for split in ("train", "dev", "test")}
    assert {rel: w for split in got.values() for rel, w in split.items()} == want
    assert {e.relpath: e.reason for e in summary.excluded} == _EXCLUDED
    rows = [line.split("\t") for line in (out / "excluded.tsv").read_text(encoding="utf-8").splitlines()]
    assert {r[0]: r[1] for r in rows} == _EXCLUDED and ["level00/digits.flac", "number", "Druk op F3."] in rows

    # A level is in one split only; test levels reach no training manifest.
    level_of = {u.relpath: u.level for u in summary.utterances}
    levels = {split: {level_of[rel] for rel in got[split]} for split in got}
    assert not (levels["train"] & levels["test"] or levels["train"] & levels["dev"] or levels["dev"] & levels["test"])
    weights = {lvl: 9.0 + 8.0 * (lvl == "level00") for lvl in summary.splits}  # all audio found, kept or not
    assert levels["test"] and levels["dev"] and summary.splits == split_levels(
        weights, test_minutes=0.2, dev_minutes=0.1, seed=3)
    assert set(read_manifest(out / "pretrain" / "train.tsv")[1]) == set(read_manifest(out / "train.tsv")[1])
    assert set(read_manifest(out / "pretrain" / "valid.tsv")[1]) == set(read_manifest(out / "dev.tsv")[1])
    sub = {m: _read(out / f"finetune_{m:g}min", "train") for m in (0.1, 0.2)}
    assert set(sub[0.1]) <= set(sub[0.2]) <= set(got["train"])
    assert 6 <= sum(u.seconds for u in summary.budgets[0.1]) < 9
    for m in (0.1, 0.2):
        assert _read(out / f"finetune_{m:g}min", "test") == got["test"]
        assert Dictionary.load(out / f"finetune_{m:g}min" / "dict.ltr.txt") == Dictionary.load(out / "dict.ltr.txt")

    # Audio: 16 kHz mono, the length of the 22.05 kHz original; two voices from the fonts.
    ds = RawAudioDataset(out / "train.tsv")
    assert ds.sizes.min() == ds.sizes.max() == 48000 and ds[0]["source"].abs().max() > 0.05
    assert {u.speaker for u in summary.utterances} == {"small", "big"}
    table = (out / "utterances.tsv").read_text(encoding="utf-8").splitlines()
    assert table[0].split("\t") == ["relpath", "split", "level", "speaker", "seconds", "text"]
    assert "share/border/l12-v-1.flac\t" in "\n".join(table)  # shared lines: their scripts are script/share/
    printed = str(summary)
    assert "39 lines, 0.03 h, 13 levels, 2 voices" in printed and "excluded 6 files:" in printed
    for rel, reason in _EXCLUDED.items():
        assert (f"    {rel}: {reason}: " in printed) == (reason != "number")

    # Cached: a second run decodes nothing and writes the same.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    prepare_fillets(str(out), test_minutes=0.2, dev_minutes=0.1, label_minutes=[0.1, 0.2], seed=3)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_help_only_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        fillets.main(["--help"])
    assert e.value.code == 0 and "fillets-ng-data-nl" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_prepare_fillets_real(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not found: the real corpus comes from Debian packages")
    try:
        summary = prepare_fillets(str(tmp_path / "nl"))
    except RuntimeError as e:
        if "apt-get download" in str(e):
            pytest.skip(f"apt-get download fillets-ng-data{{,-nl}} failed (no Debian archive reachable?): {e}")
        raise
    hours = sum(u.seconds for u in summary.utterances) / 3600
    assert 1550 < len(summary.utterances) < 1650 and 1.4 < hours < 1.8
    assert {u.speaker for u in summary.utterances} == {"small", "big"}
    assert summary.skipped["number"] >= 5 and not summary.skipped["ambiguous transcript"]
    test_levels = {lvl for lvl, s in summary.splits.items() if s == "test"}
    for manifest in ("train.tsv", "pretrain/train.tsv", "pretrain/valid.tsv", "finetune_30min/train.tsv"):
        _, entries = read_manifest(tmp_path / "nl" / manifest)
        assert entries and not {rel.rsplit("/", 1)[0] for rel, _ in entries} & test_levels
    ds = RawAudioDataset(tmp_path / "nl" / "test.tsv")
    rms = [ds[i]["source"].pow(2).mean().sqrt().item() for i in range(0, len(ds), 10)]
    assert 0.03 < np.median(rms) < 0.5  # real speech level, not silence or noise


def test_leaving_a_file_out_moves_no_level(tmp_path, monkeypatch):
    """The split weighs the audio found, kept or not: a line left out (here its text gets
    a digit) leaves every level where it was."""
    _fake_packages(tmp_path / "a", monkeypatch, seconds=1.0)
    shutil.copytree(tmp_path / "a" / "extract", tmp_path / "b" / "extract")
    before = prepare_fillets(str(tmp_path / "a"), test_minutes=0.07, dev_minutes=0.03, label_minutes=[], seed=3)
    script = tmp_path / "b" / "extract" / "usr" / "share" / "games" / "fillets-ng" / "script"
    for path in script.glob("*/*_nl.lua"):
        path.write_text(path.read_text(encoding="utf-8").replace("is vis!", "is 1 vis!"), encoding="utf-8")
    after = prepare_fillets(str(tmp_path / "b"), test_minutes=0.07, dev_minutes=0.03, label_minutes=[], seed=3)
    assert after.skipped["number"] == before.skipped["number"] + 13
    assert after.splits == before.splits and set(after.splits.values()) == {"train", "dev", "test"}
    assert not list((tmp_path / "b").glob("finetune_*"))
