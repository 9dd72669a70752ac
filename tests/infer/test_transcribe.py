"""Transcribing recordings of any length: windows, timestamps, formats, manifests, bad files,
resampling, beam search and memory.

The model is a real tiny `Wav2Vec2Ctc` (group-norm encoder, attention over the window)
trained here for a few seconds to read "tone speech": 400, 1000 and 2500 Hz tones are the
letters A, B, C, and the quiet between tone runs is the word boundary `|`. Its output then
depends on the audio in an obvious way: every word of a synthetic recording is known, with
its true start and end, so windowed transcription can be checked against the truth and
against clip-by-clip transcription, timestamps against where the tones really are.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import runpy
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2.config import tiny
from wav2vec2.data import Dictionary, write_manifest
from wav2vec2.infer import decode, formats
from wav2vec2.infer import transcribe as tr
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.chunking import run_in_windows
from wav2vec2.infer.decode import error_counts, greedy_ctc
from wav2vec2.infer.recognizer import Recognizer, load_recognizer
from wav2vec2.model.ctc import Wav2Vec2Ctc

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "transcribe.py"
SR = 16000
TONES = {"A": 400.0, "B": 1000.0, "C": 2500.0}
DICTIONARY = Dictionary.from_symbols(["|", "A", "B", "C"])


# ---------------------------------------------------------------- tone speech
def tone_speech(words: list[str], rng: np.random.Generator):
    """A recording of `words` (letters A/B/C, no letter twice in a row): each letter a tone
    of 0.15-0.3 s, words apart by 0.25-0.5 s of faint noise, with a pause at both ends.

    Returns the wave (L,) float32, each word's true (word, start, end) in seconds, and each
    letter's (letter, first sample, end sample).
    """
    parts = [_quiet(rng)]
    spans, letters = [], []
    at = len(parts[0])
    for word in words:
        start = at
        for letter in word:
            n = int(rng.uniform(0.15, 0.3) * SR)
            ramp = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / 160)  # 10 ms fades
            parts.append(0.5 * ramp * np.sin(2 * np.pi * TONES[letter] * np.arange(n) / SR + rng.uniform(0, 6)))
            letters.append((letter, at, at + n))
            at += n
        spans.append((word, start / SR, at / SR))
        parts.append(_quiet(rng))
        at += len(parts[-1])
    return np.concatenate(parts).astype(np.float32), spans, letters


def _quiet(rng: np.random.Generator) -> np.ndarray:
    return 0.003 * rng.standard_normal(int(rng.uniform(0.25, 0.5) * SR))


def random_words(rng: np.random.Generator, num_words: int) -> list[str]:
    return ["".join(rng.choice(list(TONES), size=int(rng.integers(1, 4)), replace=False)) for _ in range(num_words)]


def frame_targets(num_samples: int, letters: list[tuple[str, int, int]]) -> np.ndarray:
    """The letter each 20 ms frame should read (the one sounding at its centre), else `|`."""
    centres = np.arange((num_samples - 400) // 320 + 1) * 320 + 200
    targets = np.full(len(centres), DICTIONARY.index("|"))
    for letter, a, b in letters:
        targets[(centres >= a) & (centres < b)] = DICTIONARY.index(letter)
    return targets


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads spin against each other
    (training the fixture took 15x longer with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rec() -> Recognizer:
    """The tiny model trained for ~50 updates to read tone speech (frame-wise cross-entropy:
    a frame classifier is a CTC model whose blank never wins)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Wav2Vec2Ctc(tiny(), vocab_size=len(DICTIONARY)).eval()  # eval: no dropout or masking
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        batch = [tone_speech(random_words(rng, int(rng.integers(1, 4))), rng) for _ in range(4)]
        length = min(len(wav) for wav, _, _ in batch)  # crop to the shortest: no padding
        source = torch.stack([torch.from_numpy(wav[:length]) for wav, _, _ in batch])
        targets = torch.stack([torch.from_numpy(frame_targets(length, letters)) for _, _, letters in batch])
        logits = model(source).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Recognizer(model.eval(), DICTIONARY, normalize=False, sample_rate=SR, source="tone speech")


@pytest.fixture(scope="module")
def checkpoint(rec: Recognizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rec` as a fine-tuning checkpoint of this project, what the command line loads."""
    from hydra import compose, initialize_config_dir

    from wav2vec2.train.cli import register_configs, to_train_config

    path = tmp_path_factory.mktemp("model") / "checkpoint_best.pt"
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = to_train_config(compose(config_name="ctc_tiny", overrides=[f"data.manifest_dir={path.parent}",
                                                                         f"run_dir={path.parent}"]))
    torch.save({"task": "ctc", "config": dataclasses.asdict(cfg), "model": rec.model.state_dict(),
                "task_state": {"dictionary": DICTIONARY.symbols[4:]}}, path)
    return path


def write(path: Path, wav: np.ndarray, sample_rate: int = SR) -> Path:
    sf.write(path, wav, sample_rate, subtype="PCM_16")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    """`python scripts/transcribe.py ARGS` in a fresh process, as users run it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def cli_main(*args: str) -> int:
    """The same command line, in this process (faster; output via capsys)."""
    return runpy.run_path(str(SCRIPT))["main"](list(args))


# ---------------------------------------------------------------- long audio
def test_the_model_reads_tone_speech(rec: Recognizer, tmp_path: Path) -> None:
    """The fixture itself: one pass over a clip it never saw gives its words."""
    rng = np.random.default_rng(123)
    words = random_words(rng, 4)
    wav, _, _ = tone_speech(words, rng)
    assert tr.transcribe_file(rec, write(tmp_path / "a.wav", wav)).text == " ".join(words)


def test_long_audio_in_windows_equals_clip_by_clip(rec: Recognizer, tmp_path: Path) -> None:
    """Twenty clips back to back, in windows of 1 s with 0.5 s of context (so nearly every word
    is cut by a window edge), read like each clip alone and like the truth; every word's
    timestamps fall inside its clip and within two frames of its tones."""
    rng = np.random.default_rng(1)
    clips, alone, truth, offset = [], [], [], 0.0
    for k in range(20):
        wav, spans, _ = tone_speech(random_words(rng, int(rng.integers(1, 4))), rng)
        clips.append(wav)
        alone.append(tr.transcribe_file(rec, write(tmp_path / f"clip{k}.wav", wav)).text.split())
        truth += [(w, offset + a, offset + b, k) for w, a, b in spans]
        offset += len(wav) / SR
    bounds = np.cumsum([0] + [len(c) / SR for c in clips])
    path = write(tmp_path / "long.wav", np.concatenate(clips))
    long = tr.transcribe_file(rec, path, window=1.0, context=0.5)
    with AudioFile(path, sample_rate=SR) as audio:  # frames of 20 ms: word times are frame counts x 0.02
        spans = decode.greedy_words(tr.frame_logits(rec, audio, window=1.0, context=0.5), DICTIONARY)
    assert [(w.word, w.start, w.end) for w in long.words] == [(w, round(a * 0.02, 3), round(b * 0.02, 3))
                                                              for w, a, b in spans]

    one_by_one = [w for words in alone for w in words]
    # At most one word of difference per boundary between clips (none expected here).
    assert error_counts([" ".join(one_by_one)], [long.text])["word_errors"] <= len(clips) - 1
    assert long.text.split() == one_by_one == [w for w, *_ in truth]
    assert long.duration == pytest.approx(bounds[-1])
    for word, (text, start, end, k) in zip(long.words, truth):
        assert word.word == text
        assert bounds[k] <= word.start < word.end <= bounds[k + 1]  # inside its clip
        assert abs(word.start - start) <= 0.04 and abs(word.end - end) <= 0.04  # where its tones are


def test_windows_are_given_in_seconds(rec: Recognizer, tmp_path: Path) -> None:
    """A file shorter than a window is one pass; window and context seconds become frames of
    20 ms for `run_in_windows`, the model's hop and receptive field with them."""
    wav, _, _ = tone_speech(random_words(np.random.default_rng(2), 3), np.random.default_rng(3))
    path = write(tmp_path / "a.wav", wav)
    samples = torch.from_numpy(sf.read(path, dtype="float32")[0])
    encoder = rec.model.cfg.feature_encoder
    assert (encoder.hop, encoder.receptive_field) == (320, 400)
    with AudioFile(path, sample_rate=SR) as audio:
        logits = tr.frame_logits(rec, audio)
        short = tr.frame_logits(rec, audio, window=1.0, context=0.3)
        no_context = tr.frame_logits(rec, audio, window=1.0, context=0.0)
    one_pass = rec(samples.unsqueeze(0)).logits[0]  # (T, V)
    # The window stops at the last frame's receptive field, leaving out the file's last
    # (L - 400) % 320 samples, which the group-norm encoder's statistics see in one pass.
    covered = rec(samples[: (len(one_pass) - 1) * 320 + 400].unsqueeze(0)).logits[0]
    assert torch.equal(logits, covered)
    assert torch.equal(logits.argmax(-1), one_pass.argmax(-1))

    expected = run_in_windows(lambda x: rec(x).logits, lambda a, b: samples[a:b], len(samples), encoder,
                              window_frames=50, context_frames=15)
    assert torch.equal(short, expected) and len(short) == len(one_pass)
    assert not torch.equal(short, no_context) and not torch.equal(short, logits)


def test_the_model_gets_audio_as_it_was_trained(rec: Recognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At its sample rate, and standardised over the whole file if it was fine-tuned so."""
    seen = []

    class Spy(AudioFile):
        def __init__(self, path, **kw) -> None:
            seen.append(kw)
            super().__init__(path, **kw)

    monkeypatch.setattr(tr, "AudioFile", Spy)
    path = write(tmp_path / "a.wav", tone_speech(["AB"], np.random.default_rng(14))[0])
    tr.transcribe_file(rec, path)
    tr.transcribe_file(dataclasses.replace(rec, normalize=True, sample_rate=8000), path)
    assert seen == [{"sample_rate": 16000, "normalize": False}, {"sample_rate": 8000, "normalize": True}]


def test_progress_bar_only_for_long_files(rec: Recognizer, tmp_path: Path, capsys) -> None:
    wav, _, _ = tone_speech(["ABC", "CA"], np.random.default_rng(4))
    short = write(tmp_path / "short.wav", wav)
    long = write(tmp_path / "long.wav", np.tile(wav, int(61 * SR / len(wav)) + 1))
    tr.transcribe_file(rec, short, progress=True)
    assert capsys.readouterr().err == ""
    t = tr.transcribe_file(rec, long, progress=True)
    assert "long.wav" in capsys.readouterr().err and t.duration > 61
    tr.transcribe_file(rec, long, progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- decoding
def test_greedy_words_are_greedy_ctc_with_frame_spans() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(60, len(DICTIONARY), generator=g) * 3  # blanks, specials, repeats, `|`
        spans = decode.greedy_words(logits, DICTIONARY)
        assert " ".join(w for w, _, _ in spans) == DICTIONARY.words(greedy_ctc(logits[None])[0])
        ids = logits.argmax(-1).tolist()
        for word, first, end in spans:
            # A word's first frame starts its first letter's run; its end closes its last letter's run.
            assert word.startswith(DICTIONARY.symbols[ids[first]]) and (first == 0 or ids[first - 1] != ids[first])
            assert word.endswith(DICTIONARY.symbols[ids[end - 1]]) and (end == len(ids) or ids[end] != ids[end - 1])
    assert decode.greedy_words(torch.zeros(0, len(DICTIONARY)), DICTIONARY) == []


def _peaked(path: str) -> torch.Tensor:
    """Logits with probability ~0.99 on each frame's symbol ("_" = blank). Shape: (T, V)."""
    ids = [0 if c == "_" else DICTIONARY.index(c) for c in path]
    logits = torch.zeros(len(ids), len(DICTIONARY))
    logits[torch.arange(len(ids)), ids] = 7.0
    return logits


def _needs_flashlight() -> None:
    if find_spec("flashlight") is None:
        pytest.skip("flashlight-text is not installed (the lm extra)")


def test_beam_search_without_lm_gives_the_greedy_result(rec: Recognizer, tmp_path: Path) -> None:
    _needs_flashlight()
    beam = decode.BeamSearch(DICTIONARY, beam_width=8)
    logits = _peaked("__AA_AB||_|C_CC_|BA_B|")  # a blank between two equal letters keeps both
    greedy = decode.greedy_words(logits, DICTIONARY)
    assert greedy == [("AAB", 2, 7), ("CC", 11, 15), ("BAB", 17, 21)]
    assert beam(logits) == greedy
    # Not peaked at all, in chunks of 37 frames: without an LM the best path is still the
    # argmax one (<pad> and </s>, which the beam never emits, are kept out of the argmax).
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1000, len(DICTIONARY), generator=g) * 1.5
    logits[:, [1, 2]] = -30.0
    chunked = decode.BeamSearch(DICTIONARY, beam_width=8, chunk_frames=37, look_back_frames=5)
    assert chunked(logits) == beam(logits) == decode.greedy_words(logits, DICTIONARY)
    wav, _, _ = tone_speech(random_words(np.random.default_rng(5), 5), np.random.default_rng(6))
    path = write(tmp_path / "a.wav", wav)
    # Without an LM the best path is the greedy one, timestamps included.
    assert tr.transcribe_file(rec, path, beam=beam) == tr.transcribe_file(rec, path)


_ARPA = """\\data\\
ngram 1=6
ngram 2=1

\\1-grams:
-1.0\t<s>\t0
-0.5\t</s>\t0
-0.3\tAB\t0
-0.6\tBAC\t0
-3.0\tCB\t0
-2.0\t<unk>\t0

\\2-grams:
-0.1\tAB\tBAC

\\end\\
"""


def test_a_language_model_picks_its_words(tmp_path: Path) -> None:
    """Frames that lean to "CB" (C 0.2 nats above A): greedy and the lexicon-free beam read CB;
    with an LM that finds AB 500 times likelier than CB, the beam reads AB, its timestamps
    from the path it chose; with weight 0 the LM is ignored; a lexicon without CB rules it out."""
    _needs_flashlight()
    lm = tmp_path / "lm.arpa"
    lm.write_text(_ARPA)
    logits = torch.full((8, len(DICTIONARY)), -10.0)
    logits[[0, 4, 5, 6, 7], DICTIONARY.index("|")] = 0.0
    logits[[1, 2], DICTIONARY.index("C")] = 0.2
    logits[[1, 2], DICTIONARY.index("A")] = 0.0
    logits[3, DICTIONARY.index("B")] = 0.0
    assert decode.greedy_words(logits, DICTIONARY) == decode.BeamSearch(DICTIONARY, beam_width=8)(logits) == [("CB", 1, 4)]
    assert decode.BeamSearch(DICTIONARY, beam_width=8, lm=lm)(logits) == [("AB", 1, 4)]  # lexicon: the unigrams
    assert decode.BeamSearch(DICTIONARY, beam_width=8, lm=lm, lm_weight=0.0)(logits) == [("CB", 1, 4)]
    # 40 such words, decoded in chunks of 13 frames that commit all but the last 4.
    many = logits[:-3].repeat(40, 1)  # (200, V)
    chunked = decode.BeamSearch(DICTIONARY, beam_width=8, lm=lm, chunk_frames=13, look_back_frames=4)(many)
    assert chunked == [("AB", 1 + 5 * k, 4 + 5 * k) for k in range(40)]
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("BAC\tB A C |\nAB\tA B |\n")
    assert decode.BeamSearch(DICTIONARY, beam_width=8, lm=lm, lexicon=lexicon, lm_weight=0.0)(logits) == [("AB", 1, 4)]
    lexicon.write_text("AB\tA D |\n")
    with pytest.raises(ValueError, match="'AB'.*'D'"):
        decode.BeamSearch(DICTIONARY, beam_width=8, lm=lm, lexicon=lexicon)
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm")
    with pytest.raises(ValueError, match="lexicon"):
        decode.BeamSearch(DICTIONARY, beam_width=8, lm=binary)


def test_beam_search_needs_its_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _needs_flashlight()
    lm = tmp_path / "lm.arpa"
    lm.write_text(_ARPA)
    monkeypatch.setitem(sys.modules, "flashlight.lib.text.decoder.kenlm", None)  # built without KenLM
    with pytest.raises(ImportError, match=r"KenLM.*\[lm\]"):
        decode.BeamSearch(DICTIONARY, beam_width=4, lm=lm)
    decode.BeamSearch(DICTIONARY, beam_width=4)  # no LM: no KenLM needed
    monkeypatch.setitem(sys.modules, "flashlight.lib.text", None)  # not installed
    with pytest.raises(ImportError, match=r"flashlight-text.*\[lm\]"):
        decode.BeamSearch(DICTIONARY, beam_width=4)
    with pytest.raises(FileNotFoundError, match="nowhere.arpa"):
        decode.BeamSearch(DICTIONARY, beam_width=4, lm=tmp_path / "nowhere.arpa")


# ---------------------------------------------------------------- resampling
def test_48k_stereo_reads_like_16k_mono(rec: Recognizer, tmp_path: Path) -> None:
    """The same speech at 48 kHz in two channels, each carrying a loud C tone that cancels
    in the downmix (left + tone, right - tone): a wrong downmix would read C everywhere."""
    import soxr

    words = random_words(np.random.default_rng(7), 5)
    wav, _, _ = tone_speech(words, np.random.default_rng(8))
    mono = write(tmp_path / "mono.wav", wav)
    hi = soxr.resample(wav, SR, 48000)
    tone = 0.3 * np.sin(2 * np.pi * TONES["C"] * np.arange(len(hi)) / 48000)
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, np.stack([hi + tone, hi - tone], axis=1), 48000, subtype="PCM_24")

    with AudioFile(mono, sample_rate=SR) as a, AudioFile(stereo, sample_rate=SR) as b:
        assert abs(a.num_samples - b.num_samples) <= 1
        la, lb = tr.frame_logits(rec, a), tr.frame_logits(rec, b)
    n = min(len(la), len(lb))
    agree = (la[:n].argmax(-1) == lb[:n].argmax(-1)).float().mean()
    assert agree >= 0.97
    assert (la[:n] - lb[:n]).abs().mean() < 0.05 * la.abs().mean()
    assert tr.transcribe_file(rec, stereo).text == tr.transcribe_file(rec, mono).text == " ".join(words)


# ---------------------------------------------------------------- formats
def test_srt_cues_respect_the_limits() -> None:
    fast = [formats.Word("AAA", 0.4 * i, 0.4 * i + 0.3) for i in range(12)]  # the 42 characters end a cue
    slow = [formats.Word("BBB", 7.0 + 0.9 * i, 7.3 + 0.9 * i) for i in range(10)]  # 7 s end a cue; a pause before
    words = fast + slow + [formats.Word("X" * 50, 20.0, 21.0), formats.Word("LATE", 3725.5, 3726.0)]  # too long; an hour on
    cues = [c.split("\n") for c in formats.format_srt(words).strip().split("\n\n")]
    assert [c[2] for c in cues] == [" ".join(["AAA"] * 10), "AAA AAA", " ".join(["BBB"] * 8), "BBB BBB", "X" * 50, "LATE"]
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    assert cues[0][1] == "00:00:00,000 --> 00:00:03,900" and cues[-1][1] == "01:02:05,500 --> 01:02:06,000"
    for c in cues:
        start, end = (_seconds(t) for t in c[1].split(" --> "))
        assert len(c) == 3 and start < end and (end - start <= 7 or " " not in c[2])
        assert len(c[2]) <= 42 or " " not in c[2]


def _seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return 3600 * int(h) + 60 * int(m) + float(s)


def test_json_and_srt_through_the_command_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(9)
    words = random_words(rng, 24)  # ~20 s: several subtitles
    wav, spans, _ = tone_speech(words, rng)
    audio = write(tmp_path / "talk.wav", wav)

    assert cli_main("--model", str(checkpoint), "--format", "json", str(audio)) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"file", "text", "words", "duration"} and record["file"] == str(audio)
    assert record["text"] == " ".join(words) == " ".join(w["word"] for w in record["words"])
    assert record["duration"] == pytest.approx(len(wav) / SR, abs=1e-3)
    times = [t for w in record["words"] for t in (w["start"], w["end"])]
    assert times == sorted(times) and all(w["start"] < w["end"] for w in record["words"])
    for w, (_, start, end) in zip(record["words"], spans):
        assert abs(w["start"] - start) <= 0.04 and abs(w["end"] - end) <= 0.04

    assert cli_main("--model", str(checkpoint), "--format", "srt", "--out", f"{tmp_path / 'subs'}/", str(audio)) == 0
    cues = [c.split("\n") for c in (tmp_path / "subs" / "talk.srt").read_text().strip().split("\n\n")]
    assert len(cues) >= 3 and " ".join(c[2] for c in cues) == record["text"]
    stamps = [_seconds(t) for c in cues for t in c[1].split(" --> ")]
    assert stamps == sorted(stamps) and stamps[0] == record["words"][0]["start"]
    assert all(e - s <= 7 and len(c[2]) <= 42 for c, s, e in zip(cues, stamps[::2], stamps[1::2]))
    assert not list((tmp_path / "subs").glob("*.tmp"))


# ---------------------------------------------------------------- batches
def test_manifest_keeps_order_and_scores_like_evaluate(rec: Recognizer, checkpoint: Path, tmp_path: Path) -> None:
    from wav2vec2.infer.evaluate import evaluate_ctc

    rng = np.random.default_rng(10)
    audio = tmp_path / "audio"
    audio.mkdir()
    entries, refs = [], []
    for k in (3, 0, 4, 1, 2):  # not in name order
        words = random_words(rng, int(rng.integers(1, 4)))
        wav, _, _ = tone_speech(words, rng)
        write(audio / f"utt{k}.wav", wav)
        entries.append((f"utt{k}.wav", len(wav)))
        refs.append(words if k % 2 else words[:-1] + ["CAB"])  # some references disagree
    write_manifest(tmp_path / "test.tsv", str(audio), entries)
    (tmp_path / "test.ltr").write_text("".join(" ".join("|".join(r)) + " |\n" for r in refs))

    proc = cli("--model", str(checkpoint), "--manifest", str(tmp_path / "test.tsv"), "--out", str(tmp_path / "hyp.txt"))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "hyp.txt").read_text().splitlines()
    assert lines == [tr.transcribe_file(rec, audio / name).text for name, _ in entries]
    result = evaluate_ctc(checkpoint, subset="test", manifest_dir=str(tmp_path))
    assert result.hypotheses == lines and 0 < result.wer < 100
    assert f"WER {result.wer:.2f}% ({result.counts['word_errors']} errors)" in proc.stderr
    assert f"CER {result.cer:.2f}% ({result.counts['char_errors']} errors)" in proc.stderr


def test_bad_files_are_reported_and_the_rest_transcribed(rec: Recognizer, checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    good = [write(tmp_path / f"good{k}.wav", tone_speech(random_words(rng, 2), rng)[0]) for k in range(2)]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not audio at all" * 10)
    empty = write(tmp_path / "empty.flac", np.zeros(0, np.float32))
    inputs = [good[0], broken, empty, good[1]]

    proc = cli("--model", str(checkpoint), "--format", "json", "--out", str(tmp_path / "out.jsonl"), *map(str, inputs))
    assert proc.returncode == 1
    assert "broken.wav" in proc.stderr and "empty.flac" in proc.stderr and "good" not in proc.stderr
    assert "2 of 4 inputs failed" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == list(map(str, inputs))  # line k is input k
    assert "error" in records[1] and "error" in records[2]
    for r in (records[0], records[3]):
        assert r["text"] == tr.transcribe_file(rec, r["file"]).text != ""
    # As text: PATH<TAB>TEXT per transcribed input, so each line says which file it is.
    assert cli_main("--model", str(checkpoint), "--out", str(tmp_path / "out.txt"), *map(str, inputs)) == 1
    assert (tmp_path / "out.txt").read_text().split("\n") == [
        f"{inputs[0]}\t{records[0]['text']}", f"{inputs[3]}\t{records[3]['text']}", ""]
    # What each failure says: no such file, empty, not audio.
    proc = cli("--model", str(checkpoint), str(tmp_path / "missing.wav"), str(broken), str(empty))
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"no such file: {tmp_path / 'missing.wav'}" in proc.stderr
    assert f"{empty} is empty (0 bytes)" in proc.stderr and "System error" not in proc.stderr


def test_a_batch_where_every_input_fails_leaves_nothing(checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio" * 10)
    for out in (tmp_path / "out.txt", tmp_path / "subs", tmp_path / "words.jsonl"):
        fmt = "json" if out.suffix == ".jsonl" else "srt" if out.name == "subs" else "text"
        target = f"{out}/" if out.name == "subs" else str(out)
        assert cli_main("--model", str(checkpoint), "--format", fmt, "--out", target, str(broken)) == 1
        assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_subtitles_as_vtt(tmp_path: Path) -> None:
    words = [formats.Word("HELLO", 0.5, 0.9), formats.Word("WORLD", 3725.25, 3726.0)]
    text = formats.render(formats.Transcript("a.wav", "HELLO WORLD", words), "vtt")
    assert text.startswith("WEBVTT\n\n")
    assert "00:00:00.500 --> 00:00:00.900\nHELLO\n" in text and "01:02:05.250 --> 01:02:06.000\nWORLD\n" in text
    srt = formats.format_srt(words)  # the same cues, SRT's numbering and comma
    assert "1\n00:00:00,500 --> 00:00:00,900\nHELLO\n" in srt and "2\n01:02:05,250 --> 01:02:06,000" in srt


def test_a_crash_keeps_what_is_written(rec: Recognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or any crash that ends the batch) on the third file: the output file holds the
    first two, and nothing half-written is left beside it."""
    rng = np.random.default_rng(12)
    paths = [str(write(tmp_path / f"{k}.wav", tone_speech(random_words(rng, 2), rng)[0])) for k in range(3)]
    transcribe_file = tr.transcribe_file

    def interrupted(rec, path, **kw):
        if path == paths[2]:
            raise KeyboardInterrupt
        return transcribe_file(rec, path, **kw)

    monkeypatch.setattr(tr, "transcribe_file", interrupted)
    out = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt):
        tr.transcribe_batch(rec, paths, formats.Output("text", out, paths, aligned=True))
    assert out.read_text().splitlines() == [transcribe_file(rec, p).text for p in paths[:2]]
    assert not (tmp_path / "out.txt.tmp").exists()


def test_outputs_in_a_directory_need_distinct_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a.txt"):
        formats.Output("text", f"{tmp_path}/", ["a.wav", "a.flac"])
    with pytest.raises(ValueError, match="--out DIR/"):
        formats.Output("srt", None, ["a.wav", "b.wav"])


# ---------------------------------------------------------------- memory
_PEAK_RSS = """
import resource, sys
import runpy
code = runpy.run_path({script!r})["main"](sys.argv[1:])
print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def long_recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """10 and 60 minutes of tone speech (a 40 s block over and over), as 16-bit WAV."""
    rng = np.random.default_rng(13)
    block = np.concatenate([tone_speech(random_words(rng, 3), rng)[0] for _ in range(20)])  # ~40 s
    root = tmp_path_factory.mktemp("long")
    recordings = {}
    for minutes in (10, 60):
        recordings[minutes] = root / f"{minutes}min.wav"
        with sf.SoundFile(recordings[minutes], "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
            for _ in range(round(minutes * 60 * SR / len(block))):
                f.write(block)
    return recordings


@pytest.mark.slow
@pytest.mark.parametrize("decoding", [[], ["--beam", "8"]], ids=["greedy", "beam"])
def test_memory_does_not_grow_with_the_length_of_the_file(checkpoint: Path, long_recordings: dict[int, Path],
                                                          decoding: list[str], tmp_path: Path) -> None:
    """Peak RSS of transcribing 10 min and 60 min of audio (to JSON, words and all) in a fresh
    process each: within 20 % of each other."""
    peaks = {}
    for minutes, audio in long_recordings.items():
        out = tmp_path / f"{minutes}min.json"
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS.format(script=str(SCRIPT)), "--model", str(checkpoint),
                               "--format", "json", "--out", str(out), *decoding, str(audio)],
                              capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads(out.read_text())
        assert record["duration"] == pytest.approx(sf.info(audio).duration, abs=0.02)
        assert record["duration"] == pytest.approx(minutes * 60, rel=0.05)
        assert len(record["words"]) > minutes * 60  # ~1.5 words a second
        assert "%|" in proc.stderr  # the progress bar
        peaks[minutes] = int(re.search(r"maxrss_kb (\d+)", proc.stderr).group(1)) / 1024
    print(f"peak RSS ({' '.join(decoding) or 'greedy'}): 10 min {peaks[10]:.0f} MB, 60 min {peaks[60]:.0f} MB")
    assert peaks[60] < 1.2 * peaks[10], peaks


# ---------------------------------------------------------------- precision
def test_bf16_recognizer_runs_in_bf16_and_reads_the_same_words(rec: Recognizer, tmp_path: Path) -> None:
    """precision="bf16" really runs the model under bfloat16 autocast (its logits differ from
    fp32's, as bf16 rounding must make them), hands back float32 logits close to fp32's, and
    on clean tone speech reads the same words."""
    bf16 = dataclasses.replace(rec, precision="bf16")
    source = torch.from_numpy(tone_speech(["AB", "CAB"], np.random.default_rng(7))[0])[None]
    fp32_logits, bf16_logits = rec(source).logits, bf16(source).logits
    assert bf16_logits.dtype == torch.float32
    assert not torch.equal(fp32_logits, bf16_logits)  # fails if autocast did not run
    torch.testing.assert_close(bf16_logits, fp32_logits, atol=0.25, rtol=0.05)
    rng = np.random.default_rng(8)
    words = random_words(rng, 5)
    path = write(tmp_path / "b.wav", tone_speech(words, rng)[0])
    assert tr.transcribe_file(bf16, path).text == tr.transcribe_file(rec, path).text == " ".join(words)


def test_an_unknown_precision_is_refused_with_the_choices(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="fp32, bf16.*'fp16'"):
        load_recognizer(checkpoint, precision="fp16")
    assert load_recognizer(checkpoint, precision="bf16").precision == "bf16"
