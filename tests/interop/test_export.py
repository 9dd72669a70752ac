"""ONNX export of a CTC model (`wav2vec2/interop/onnx.py`), its int8 copy, the torch-free
runner (`scripts/onnx_transcribe.py`) and the CLI (`scripts/export.py`).

A tiny random CTC model stands in for a trained one: its head gets a bias so that greedy
decoding emits letters, which is all the transcript comparisons need.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import wav2vec2.config as model_configs  # noqa: E402
from wav2vec2.data.labels import Dictionary  # noqa: E402
from wav2vec2.infer.audio import AudioFile  # noqa: E402
from wav2vec2.infer.decode import greedy_ctc  # noqa: E402
from wav2vec2.infer.recognizer import Recognizer  # noqa: E402
from wav2vec2.interop.onnx import export_onnx, quantize_onnx, sidecar_path  # noqa: E402
from wav2vec2.model.ctc import Wav2Vec2Ctc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "scripts" / "onnx_transcribe.py"
EXPORT_CLI = REPO / "scripts" / "export.py"
SYMBOLS = list("|ETAOHNS")


def tiny_recognizer(*, pre_ln: bool = False, normalize: bool = True, seed: int = 0) -> Recognizer:
    """The tiny model (BASE layout: GroupNorm encoder, post-LN) or its LARGE layout
    (layer-norm encoder with conv bias, pre-LN), random weights, a biased head."""
    torch.manual_seed(seed)
    cfg = model_configs.tiny()
    if pre_ln:
        cfg.feature_encoder.mode = "layer_norm"
        cfg.feature_encoder.conv_bias = True
        cfg.transformer.layer_norm_first = True
    dictionary = Dictionary.from_symbols(SYMBOLS)
    model = Wav2Vec2Ctc(cfg, vocab_size=len(dictionary))
    with torch.no_grad():
        model.proj.bias.normal_(0.0, 0.5)
        model.proj.bias[0] -= 1.0  # fewer blanks: non-empty transcripts
    return Recognizer(model.eval(), dictionary, normalize)


def speechlike(num_samples: int, *, seed: int, rate: int = 16000) -> np.ndarray:
    """A rising tone with amplitude bursts and noise: frames that differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    tone = np.sin(2 * np.pi * (150 + 400 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * tone + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


def run_onnx(session, waveform: np.ndarray, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    logits, frame_lengths = session.run(["logits", "frame_lengths"], {
        "waveform": np.ascontiguousarray(waveform, dtype=np.float32),
        "lengths": np.asarray(lengths, dtype=np.int64)})
    return logits, frame_lengths


def eager(rec: Recognizer, waveform: np.ndarray, lengths: list[int]):
    x = torch.from_numpy(waveform)
    padding_mask = torch.arange(x.shape[1])[None, :] >= torch.tensor(lengths)[:, None]
    return rec(x, padding_mask)


def assert_logits_match(onnx_logits: np.ndarray, expected: torch.Tensor, *, atol: float = 1e-4) -> None:
    """Equal within atol at real frames; padded frames (-inf but for the blank) identical."""
    expected = expected.numpy()
    assert onnx_logits.shape == expected.shape
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(onnx_logits), finite)
    np.testing.assert_allclose(onnx_logits[finite], expected[finite], rtol=0, atol=atol)


def our_transcript(rec: Recognizer, path: Path) -> str:
    """What the torch side transcribes: AudioFile -> model -> greedy_ctc -> words."""
    with AudioFile(path, sample_rate=rec.sample_rate, normalize=rec.normalize) as audio:
        x = audio.read()[None]
    out = rec(x)
    return rec.dictionary.words(greedy_ctc(out.logits, out.lengths)[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Recognizer, Path]:
    rec = tiny_recognizer()
    path = export_onnx(rec.as_loaded(), tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return rec, path


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported[1]), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------- the graph
def test_batch_and_length_are_dynamic(session) -> None:
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert set(shapes) == {"waveform", "lengths"}
    assert all(isinstance(d, str) for d in shapes["waveform"]), shapes  # symbolic, not fixed
    assert isinstance(shapes["lengths"][0], str) and shapes["lengths"][0] == shapes["waveform"][0]


@pytest.mark.parametrize("num_samples", [16000, 16320 + 123])  # 49 frames, then 51: both parities
def test_onnx_equals_eager_for_one_utterance(exported, session, num_samples: int) -> None:
    rec, _ = exported
    x = speechlike(num_samples, seed=num_samples)[None]
    logits, frame_lengths = run_onnx(session, x, [num_samples])
    assert_logits_match(logits, rec(torch.from_numpy(x)).logits)  # no padding mask at all
    assert frame_lengths.tolist() == [rec.model.wav2vec2.feature_encoder.output_lengths(num_samples)]


@pytest.mark.parametrize("num_samples", [12345, 20000])
def test_onnx_equals_eager_for_a_padded_batch(exported, session, num_samples: int) -> None:
    rec, _ = exported
    x = np.stack([speechlike(num_samples, seed=1), speechlike(num_samples, seed=2)])
    lengths = [num_samples, num_samples * 2 // 3]
    x[1, lengths[1]:] = 0.0
    logits, frame_lengths = run_onnx(session, x, lengths)
    expected = eager(rec, x, lengths)
    assert_logits_match(logits, expected.logits)
    assert frame_lengths.tolist() == expected.lengths.tolist()
    assert frame_lengths[1] < logits.shape[1]  # the second row really is padded


def test_export_leaves_the_recognizer_as_it_was(exported) -> None:
    rec, _ = exported
    conv = rec.model.wav2vec2.encoder.pos_conv.conv
    assert torch.nn.utils.parametrize.is_parametrized(conv, "weight")
    assert rec.model.wav2vec2.encoder.cfg.required_seq_len_multiple == 2
    assert torch.isfinite(rec(torch.from_numpy(speechlike(8000, seed=3))[None]).logits).all()


def test_sidecar_says_what_a_runner_needs(exported) -> None:
    rec, path = exported
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["symbols"] == rec.dictionary.symbols and meta["symbols"][meta["blank"]] == "<blank>"
    assert meta["word_delimiter"] == "|"
    assert (meta["sample_rate"], meta["normalize"], meta["normalize_eps"]) == (16000, True, 1e-5)
    assert (meta["frame_hop"], meta["receptive_field"], meta["min_samples"]) == (320, 400, 720)


def test_shortest_input_the_sidecar_allows_runs(exported, session) -> None:
    rec, path = exported
    n = json.loads(sidecar_path(path).read_text())["min_samples"]
    x = speechlike(n, seed=4)[None]
    logits, _ = run_onnx(session, x, [n])
    assert logits.shape[1] == 2
    assert_logits_match(logits, rec(torch.from_numpy(x)).logits)


def test_pre_ln_layer_norm_variant_exports(tmp_path: Path) -> None:
    rec = tiny_recognizer(pre_ln=True, seed=1)
    session = ort.InferenceSession(str(export_onnx(rec.as_loaded(), tmp_path / "large.onnx")),
                                   providers=["CPUExecutionProvider"])
    for num_samples in (9001, 17000):
        x = np.stack([speechlike(num_samples, seed=5), speechlike(num_samples, seed=6)])
        lengths = [num_samples, num_samples - 3000]
        x[1, lengths[1]:] = 0.0
        logits, _ = run_onnx(session, x, lengths)
        assert_logits_match(logits, eager(rec, x, lengths).logits)
        # No GroupNorm over time here, so a padded row is that utterance alone.
        alone, _ = run_onnx(session, x[1:, : lengths[1]], [lengths[1]])
        np.testing.assert_allclose(logits[1, : alone.shape[1]], alone[0], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- int8
def test_int8_stays_close_to_fp32(exported, session, tmp_path: Path) -> None:
    _, path = exported
    int8_path = quantize_onnx(path, tmp_path / "tiny.int8.onnx")
    assert int8_path.stat().st_size < path.stat().st_size
    meta = json.loads(sidecar_path(int8_path).read_text())
    assert "int8" in meta["quantization"] and meta["symbols"] == json.loads(sidecar_path(path).read_text())["symbols"]
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "MatMulInteger" for n in _graph(int8_path).node)
    agree, total = 0, 0
    for seed, num_samples in enumerate((16000, 24321, 40000)):
        x = speechlike(num_samples, seed=10 + seed)[None]
        ref, _ = run_onnx(session, x, [num_samples])
        out, _ = run_onnx(int8, x, [num_samples])
        assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
        agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        total += ref.shape[1]
    assert agree / total >= 0.9, f"int8 argmax agrees on {agree}/{total} frames"


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


# ---------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("audio")
    mono = root / "mono.wav"
    sf.write(mono, speechlike(21111, seed=7), 16000, subtype="FLOAT")
    stereo8k = root / "stereo8k.flac"  # downmixed, then resampled with soxr
    sf.write(stereo8k, np.stack([speechlike(12000, seed=8, rate=8000), speechlike(12000, seed=9, rate=8000)], 1), 8000)
    return [mono, stereo8k]


@pytest.fixture(scope="module")
def runner_run(exported, audio_files) -> subprocess.CompletedProcess:
    """The runner on both files, in a fresh interpreter that logs every import."""
    _, path = exported
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-X", "importtime", str(RUNNER), str(path), *map(str, audio_files)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=audio_files[0].parent)


def test_runner_transcript_equals_our_greedy_transcript(exported, audio_files, runner_run) -> None:
    """The runner's text is scripts/transcribe.py's (the same windows, the same greedy decoding)."""
    from wav2vec2.infer.transcribe import transcribe_file

    rec, _ = exported
    assert runner_run.returncode == 0, runner_run.stderr[-2000:]
    lines = runner_run.stdout.splitlines()
    assert len(lines) == len(audio_files)
    for line, path in zip(lines, audio_files):
        name, text = line.split("\t")
        assert name == str(path)
        expected = transcribe_file(rec, path).text
        assert expected, "the tiny model should emit letters"
        assert text == expected


def test_runner_imports_neither_torch_nor_this_package(runner_run) -> None:
    assert runner_run.returncode == 0, runner_run.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in runner_run.stderr.splitlines()
                if line.startswith("import time:")}
    assert "onnxruntime" in imported and "soundfile" in imported  # the log is what we think it is
    assert "soxr" in imported  # the 8 kHz file needed it
    top_level = {name.split(".")[0] for name in imported}
    assert not top_level & {"torch", "wav2vec2"}, sorted(n for n in imported if n.split(".")[0] in {"torch", "wav2vec2"})


def test_runner_single_file_prints_only_the_transcript(exported, audio_files) -> None:
    rec, path = exported
    proc = subprocess.run([sys.executable, str(RUNNER), str(path), str(audio_files[0])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from wav2vec2.infer.transcribe import transcribe_file

    assert proc.stdout == transcribe_file(rec, audio_files[0]).text + "\n"


def test_runner_windows_a_long_file_as_transcribe_does(exported, tmp_path: Path) -> None:
    """Read and run in windows (here 0.5 s kept, 0.2 s of context, on 8 s of 8 kHz audio): the
    text equals scripts/transcribe.py's with the same windows, not a one-pass transcript."""
    from wav2vec2.infer.transcribe import transcribe_file

    rec, path = exported
    long = tmp_path / "long.flac"
    sf.write(long, speechlike(64000, seed=11, rate=8000), 8000)
    proc = subprocess.run([sys.executable, str(RUNNER), str(path), str(long), "--window", "0.5", "--context", "0.2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    windowed = transcribe_file(rec, long, window=0.5, context=0.2).text
    assert proc.stdout == windowed + "\n" and windowed != transcribe_file(rec, long, window=30.0).text


def test_runner_without_soxr_says_what_to_install(exported, audio_files, tmp_path: Path) -> None:
    _, path = exported
    (tmp_path / "soxr.py").write_text("raise ImportError('no soxr here')\n")  # shadows the real one
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, str(RUNNER), str(path), str(audio_files[1])], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {audio_files[1]} is at 8000 Hz and the model wants 16000 Hz: "
                                   "resampling needs soxr (pip install soxr)")


def test_runner_refuses_audio_shorter_than_two_frames(exported, tmp_path: Path) -> None:
    _, path = exported
    short = tmp_path / "short.wav"
    sf.write(short, speechlike(500, seed=0), 16000)
    proc = subprocess.run([sys.executable, str(RUNNER), str(path), str(short)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "needs at least 720" in proc.stderr


def test_runner_without_sidecar_says_so(exported, tmp_path: Path, audio_files) -> None:
    _, path = exported
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes(path.read_bytes())
    proc = subprocess.run([sys.executable, str(RUNNER), str(lonely), str(audio_files[0])], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "no sidecar" in proc.stderr


# ---------------------------------------------------------------------------- CLI, other targets
@pytest.mark.slow
def test_cli_exports_a_checkpoint_with_int8(tmp_path: Path, make_ctc_cfg, audio_files) -> None:
    cfg = make_ctc_cfg()
    rec = tiny_recognizer(normalize=cfg.data.normalize)
    checkpoint = tmp_path / "checkpoint_best.pt"
    torch.save({"task": "ctc", "task_state": {"dictionary": SYMBOLS}, "config": dataclasses.asdict(cfg),
                "model": rec.model.state_dict(), "num_updates": 0}, checkpoint)
    out = tmp_path / "out" / "asr.onnx"
    proc = subprocess.run([sys.executable, str(EXPORT_CLI), str(checkpoint), "--onnx", str(out), "--int8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("asr.onnx", "asr.onnx.json", "asr.int8.onnx", "asr.int8.onnx.json"):
        assert (out.parent / name).is_file(), name
    assert "max |onnx - torch| logit difference" in proc.stdout
    run = subprocess.run([sys.executable, str(RUNNER), str(out.parent / "asr.int8.onnx"), str(audio_files[0])],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-2000:]


@pytest.mark.slow
def test_static_export_has_fixed_shapes(tmp_path: Path) -> None:
    rec = tiny_recognizer()
    path = export_onnx(rec.as_loaded(), tmp_path / "static.onnx", dynamic=False, example_samples=16000)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 16000]
    x = speechlike(16000, seed=11)[None]
    assert_logits_match(run_onnx(session, x, [16000])[0], rec(torch.from_numpy(x)).logits)


@pytest.mark.slow
def test_executorch_pte_equals_eager(tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    from executorch.runtime import Runtime

    from wav2vec2.interop.pte import export_pte

    rec = tiny_recognizer(pre_ln=True, seed=2)
    path = export_pte(rec.as_loaded(), tmp_path / "tiny.pte", max_seconds=10)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    for num_samples in (720, 12345, 16000):
        x = speechlike(num_samples, seed=num_samples)[None]
        logits, frame_lengths = method.execute([torch.from_numpy(x), torch.tensor([num_samples])])
        assert_logits_match(logits.numpy(), rec(torch.from_numpy(x)).logits)


def test_runner_without_onnxruntime_says_what_to_install(tmp_path: Path) -> None:
    """The torch-free runner on a machine without onnxruntime: one line, no traceback."""
    blocked = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
               f"sys.argv = ['onnx_transcribe.py', 'asr.onnx', 'speech.wav']; "
               f"runpy.run_path({str(RUNNER)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: onnx_transcribe.py needs onnxruntime: pip install onnxruntime "
        "(in this project: pip install -e '.[export]')"
    ]
