from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import soundfile as sf

from wav2vec2.data import RawAudioDataset, read_manifest, synth_utterance
from wav2vec2.data.corpora import asterisk
from wav2vec2.data.corpora.asterisk import decode_g722, prepare_asterisk, read_transcripts
from wav2vec2.data.labels import letters


def test_read_transcripts(tmp_path):
    path = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("; Core Asterisk Sounds in English\n\nactivated: Activated.\ndigits/5: five\n")
    assert read_transcripts(str(path)) == {"activated": "Activated.", "digits/5": "five"}


def test_g722_decode_round_trip(tmp_path):
    G722 = pytest.importorskip("G722")
    x = synth_utterance(16000, sample_rate=16000, rng=np.random.default_rng(0))
    pcm = (x * 32767).astype(np.int16)
    (tmp_path / "a.g722").write_bytes(bytes(G722.G722(16000, 64000).encode(pcm)))
    y = decode_g722(str(tmp_path / "a.g722")).astype(np.float32) / 32768
    assert len(y) == len(x) == 2 * os.path.getsize(tmp_path / "a.g722")
    # The codec delays by a few samples; the best-aligned copy must match closely.
    best = max(np.corrcoef(x[: len(x) - d], y[d:])[0, 1] for d in range(40))
    assert best > 0.95


@pytest.mark.slow
def test_prepare_asterisk_real(tmp_path):
    summary = prepare_asterisk(str(tmp_path / "ast"))
    total = sum(n for n, _ in summary.per_language.values())
    hours = sum(s for _, s in summary.per_language.values()) / 3600
    assert set(summary.per_language) == {"en", "es", "fr", "it", "ru"}
    assert 2400 < total < 2900 and 1.5 < hours < 2.3
    for split in ("train", "valid"):
        _, entries = read_manifest(tmp_path / "ast" / f"{split}.tsv")
        ltr = (tmp_path / "ast" / f"{split}.ltr").read_text().splitlines()
        wrd = (tmp_path / "ast" / f"{split}.wrd").read_text().splitlines()
        assert len(entries) == len(ltr) == len(wrd) > 0
    ds = RawAudioDataset(tmp_path / "ast" / "valid.tsv")
    rms = [ds[i]["source"].pow(2).mean().sqrt().item() for i in range(0, len(ds), 10)]
    assert 0.03 < np.median(rms) < 0.5  # real speech level, not silence or noise

    # Nothing that is not speech: the silence/* files of every language (-80 dBFS, with
    # lines like "(8 seconds of silence)" or none) and the beeps are out, each with a reason.
    excluded = {e.relpath: e.reason for e in summary.excluded}
    assert len([r for r in excluded if "/silence/" in r]) == 50  # 1..10 s, five languages
    for rel in ("en/confbridge-join.flac", "fr/beeperr.flac", "it/beep.flac", "ru/confbridge-leave.flac"):
        assert excluded[rel] in ("not speech", "describes a sound")
    rows = (tmp_path / "ast" / "excluded.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(summary.excluded) == sum(summary.skipped.values())
    for split in ("train", "valid"):
        _, entries = read_manifest(tmp_path / "ast" / f"{split}.tsv")
        assert not [rel for rel, _ in entries if rel in excluded or "/silence/" in rel]
        levels = [asterisk.level_dbfs(sf.read(tmp_path / "ast" / "audio" / rel, dtype="int16")[0])
                  for rel, _ in entries]
        assert min(levels) > asterisk.NEAR_SILENT_DBFS + 20  # far from the threshold, both sides


# --- what prepare_asterisk leaves out, on fake extracted packages (no network) ------------

def _speech(seconds: float, dbfs: float, seed: int) -> np.ndarray:
    """Speech-like int16 audio at an RMS of `dbfs`. Shape: (L,)."""
    x = synth_utterance(int(seconds * 16000), sample_rate=16000, rng=np.random.default_rng(seed)).astype(np.float64)
    return np.round(x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (dbfs / 20)).astype(np.int16)


def _silence(seconds: float, seed: int) -> np.ndarray:
    """What the packages' silence/* files hold: noise a few LSB high, about -80 dBFS."""
    return np.round(np.random.default_rng(seed).normal(0, 3, int(seconds * 16000))).astype(np.int16)


def _tone(seconds: float) -> np.ndarray:
    return (8000 * np.sin(2 * np.pi * 1000 * np.arange(int(seconds * 16000)) / 16000)).astype(np.int16)


# lang -> {name: (transcript line or None, audio)}: one case per rule, and the files kept.
_FILES = {
    "en": {
        "hello": ("Hello there.", _speech(1.0, -20, 1)),
        "quiet": ("Goodbye.", _speech(0.8, -45, 2)),  # 15 dB quieter than any real prompt, still speech
        "silence/3": ("(3 seconds of silence)", _silence(3.0, 3)),
        "hush": ("Thank you for calling.", _silence(1.5, 4)),  # a spoken-looking line over silence
        "confbridge-join": ("<beep ascending>", _tone(0.4)),
        "spy-iax2": ('IAX (note: does not say "2")', _speech(0.7, -20, 5)),
        "keys": ("press * to pause", _speech(1.2, -20, 6)),
        "merged": ("Goodbye. vm-then-pound: then press pound", _speech(1.0, -20, 7)),
        "orphan": (None, _speech(0.5, -20, 8)),
    },
    "fr": {
        "for": ("Pour (emphase)", _speech(0.6, -20, 9)),
        "priv-callee-options": ("Appuyez sur 4 pour le menu poli (ne m'appelez plus, jamais).", _speech(3.0, -20, 10)),
    },
    "it": {
        "beep": ("un suono beep", _tone(0.4)),
        "ciao": ("Ciao.", _speech(0.6, -20, 11)),
    },
}
_KEPT = {
    "en/hello.flac": "HELLO THERE",
    "en/quiet.flac": "GOODBYE",
    "en/spy-iax2.flac": "IAX",  # the note is not read
    "fr/for.flac": "POUR",
    "fr/priv-callee-options.flac": "APPUYEZ SUR QUATRE POUR LE MENU POLI NE M'APPELEZ PLUS JAMAIS",  # quoted words
    "it/ciao.flac": "CIAO",
}
_EXCLUDED = {
    "en/silence/3.flac": "not speech",
    "en/hush.flac": "near-silent audio",
    "en/confbridge-join.flac": "not speech",
    "en/keys.flac": "keypad symbol",
    "en/merged.flac": "merged transcript lines",
    "en/orphan.flac": "no transcript",
    "it/beep.flac": "describes a sound",
}


def _fake_packages(out, monkeypatch, files=_FILES) -> None:
    """`files` as dpkg-deb -x leaves them under out/extract; download and extraction are stubbed."""
    import G722

    monkeypatch.setattr(asterisk, "download_debs", lambda languages, debs_dir: [])
    monkeypatch.setattr(asterisk, "extract_debs", lambda debs, extract_dir: None)
    share = out / "extract" / "usr" / "share"
    for lang, prompts in files.items():
        lines = [f"; Core Asterisk Sounds ({lang})", "vm-then-pound: then press pound"]
        for name, (text, pcm) in prompts.items():
            path = share / "asterisk" / "sounds" / f"{lang}_XX_f_Test" / f"{name}.g722"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(G722.G722(16000, 64000).encode(pcm)))
            if text is not None:
                lines.append(f"{name}: {text}")
        doc = share / "doc" / f"asterisk-core-sounds-{lang}"
        doc.mkdir(parents=True, exist_ok=True)
        with gzip.open(doc / f"core-sounds-{lang}.txt.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def _prepared(out) -> dict[str, tuple[str, str]]:
    """{relpath: (split, .wrd line)} of a prepared corpus; checks .tsv/.wrd/.ltr agree."""
    got = {}
    for split in ("train", "valid"):
        _, entries = read_manifest(out / f"{split}.tsv")
        wrd = (out / f"{split}.wrd").read_text(encoding="utf-8").splitlines()
        ltr = (out / f"{split}.ltr").read_text(encoding="utf-8").splitlines()
        assert len(entries) == len(wrd) == len(ltr)
        for (rel, n), w, l in zip(entries, wrd, ltr):
            assert l == letters(w.split()) and n > 0
            got[rel] = (split, w)
    return got


def test_prepare_excludes_what_is_not_speech_and_says_why(tmp_path, monkeypatch):
    out = tmp_path / "ast"
    _fake_packages(out, monkeypatch)
    summary = prepare_asterisk(str(out), languages=["en", "fr", "it"], valid_percent=0.3)

    kept = _prepared(out)
    assert {rel: w for rel, (_, w) in kept.items()} == _KEPT
    assert {e.relpath: e.reason for e in summary.excluded} == _EXCLUDED
    assert summary.per_language == {
        lang: (n, pytest.approx(sum(len(pcm) for name, (_, pcm) in _FILES[lang].items()
                                    if f"{lang}/{name}.flac" in _KEPT) / 16000))
        for lang, n in (("en", 3), ("fr", 2), ("it", 1))
    }
    quiet = sf.read(out / "audio" / "en" / "quiet.flac", dtype="int16")[0]
    assert -50 < asterisk.level_dbfs(quiet) < asterisk.NEAR_SILENT_DBFS + 20  # quiet indeed, and kept
    hush = next(e for e in summary.excluded if e.relpath == "en/hush.flac")
    assert hush.detail.endswith("dBFS RMS: Thank you for calling.") and float(hush.detail.split()[0]) < -70
    assert not (out / "audio" / "en" / "hush.flac").exists()  # silent audio is not written

    # Reported: every file with its reason in excluded.tsv, the judgements on content also
    # one per line in the printed summary (the bulk "no transcript" only counted there).
    rows = [line.split("\t") for line in (out / "excluded.tsv").read_text(encoding="utf-8").splitlines()]
    assert {r[0]: r[1] for r in rows} == _EXCLUDED
    assert ["en/silence/3.flac", "not speech", "(3 seconds of silence)"] in rows
    printed = str(summary)
    assert f"excluded {len(_EXCLUDED)} files:" in printed and "no transcript: 1" in printed
    for rel, reason in _EXCLUDED.items():
        assert (f"    {rel}: {reason}: " in printed) == (reason != "no transcript")


def test_leaving_a_file_out_moves_no_other_between_train_and_valid(tmp_path, monkeypatch):
    """One draw per file found, kept or not: a rule that leaves a file out (here, silent
    audio) does not reshuffle the train/valid split of the others."""
    en = {f"p{i:02d}": (f"Prompt {w}.", _speech(0.3, -20, i)) for i, w in enumerate("abcdefghijklmnop")}
    _fake_packages(tmp_path / "a", monkeypatch, {"en": en})
    prepare_asterisk(str(tmp_path / "a"), languages=["en"], valid_percent=0.5)
    before = _prepared(tmp_path / "a")
    silent = {"p00", "p07"}
    _fake_packages(tmp_path / "b", monkeypatch,
                   {"en": {k: (text, _silence(0.3, 0) if k in silent else pcm) for k, (text, pcm) in en.items()}})
    summary = prepare_asterisk(str(tmp_path / "b"), languages=["en"], valid_percent=0.5)
    assert sorted(e.relpath for e in summary.excluded) == ["en/p00.flac", "en/p07.flac"]
    assert _prepared(tmp_path / "b") == {rel: v for rel, v in before.items() if rel[3:6] not in silent}
    assert {split for split, _ in before.values()} == {"train", "valid"}  # both splits exercised


def test_level_dbfs():
    full_scale_sine = (32767 * np.sin(np.linspace(0, 200 * np.pi, 16000, endpoint=False))).astype(np.int16)
    assert asterisk.level_dbfs(full_scale_sine) == pytest.approx(-3.01, abs=0.01)
    assert asterisk.level_dbfs(np.zeros(100, np.int16)) == asterisk.level_dbfs(np.zeros(0, np.int16)) == -np.inf
