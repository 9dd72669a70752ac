"""Feature extraction: each layer's array is what `encode` returns for the file, in both
output layouts; long files in windows stay close to one pass; bad files are reported and
skipped; nothing half-written ever sits under a final name."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir

from wav2vec2.data import write_manifest
from wav2vec2.data.synthetic import synth_utterance
from wav2vec2.infer import feature_files, features
from wav2vec2.model.wav2vec2 import Wav2Vec2Model
from wav2vec2.tasks import build_task
from wav2vec2.interop.load import load_model
from wav2vec2.train.cli import register_configs, to_train_config
from wav2vec2.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "extract_features.py"
SR = 16000


def _load_script():
    spec = importlib.util.spec_from_file_location("extract_features", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_script()


def _checkpoint(corpus: Path, run_dir: Path, *overrides: str) -> Path:
    """One update of the tiny preset: a real pretraining checkpoint of this project."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = to_train_config(compose(config_name="tiny", overrides=[
            f"data.manifest_dir={corpus}", f"run_dir={run_dir}", "logging.tensorboard=false", "optim.max_update=1",
            "optim.warmup_updates=0", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100",
            *overrides]))
    Trainer(cfg, build_task(cfg)).fit()
    return run_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def checkpoints(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models trained on normalised audio (so `normalize` comes from the checkpoint):
    "gn" BASE-style (GroupNorm over time after the first conv), "ln" LARGE-style (a
    LayerNorm over channels after every conv, with biases: a purely local CNN)."""
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "gn": _checkpoint(tiny_corpus, root / "gn", "data.normalize=true"),
        "ln": _checkpoint(tiny_corpus, root / "ln", "data.normalize=true", "model.feature_encoder.mode=layer_norm",
                          "model.feature_encoder.conv_bias=true"),
    }


@pytest.fixture
def checkpoint(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["gn"]


def _reference_model(path: Path) -> tuple[Wav2Vec2Model, bool]:
    loaded = load_model(path)
    model = Wav2Vec2Model(loaded.config)
    model.remove_pretraining_modules()
    model.load_state_dict(loaded.encoder_weights())
    return model.eval(), loaded.normalize


@torch.no_grad()
def _encode(model: Wav2Vec2Model, path: Path, normalize: bool):
    wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
    if normalize:
        wav = torch.nn.functional.layer_norm(wav, wav.shape)  # the datasets' normalisation
    return model.encode(wav.unsqueeze(0), return_hidden_states=True, return_features=True), len(wav)


def _write(path: Path, seconds: float, *, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = synth_utterance(int(seconds * SR), sample_rate=SR, rng=np.random.default_rng(seed))
    sf.write(path, wav, SR, subtype="FLOAT" if path.suffix == ".wav" else "PCM_16")
    return path


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    _write(root / "a.wav", 1.234, seed=0)
    _write(root / "spk1" / "b.flac", 0.61, seed=1)
    _write(root / "spk1" / "deep" / "c.wav", 2.0417, seed=2)
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.mark.parametrize("kind", ["gn", "ln"])
def test_each_layer_is_encode_hidden_state(checkpoints: dict[str, Path], kind: str, audio_dir: Path,
                                           tmp_path: Path) -> None:
    """Files shorter than a window: one pass over the whole file, so exactly `encode`'s
    hidden states (up to float summation order), normalised as the model was trained."""
    checkpoint = checkpoints[kind]
    out = tmp_path / "feats"
    assert cli.main(["--model", str(checkpoint), "--out", str(out), "--layers", "all,cnn", "--quiet",
                     str(audio_dir)]) == 0
    model, normalize = _reference_model(checkpoint)
    assert normalize is True
    names = ["a.wav", "spk1/b.flac", "spk1/deep/c.wav"]
    for name in names:
        ref, num_samples = _encode(model, audio_dir / name, normalize)
        T = model.feature_encoder.output_lengths(num_samples)
        npy = str(Path(name).with_suffix(".npy"))
        for k in range(3):  # tiny: 2 layers, so 0, 1, 2
            got = np.load(out / str(k) / npy)
            assert got.shape == (T, 48) and got.dtype == np.float32
            torch.testing.assert_close(torch.from_numpy(got), ref.hidden_states[k][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(np.load(out / "cnn" / npy)), ref.features[0],
                                   rtol=1e-5, atol=1e-5)
    assert sorted(p.relative_to(out / "0").as_posix() for p in (out / "0").rglob("*")
                  if p.is_file()) == sorted(str(Path(n).with_suffix(".npy")) for n in names)

    meta = json.loads((out / "features.json").read_text())
    assert meta["frame_rate"] == 50.0 and meta["hop_samples"] == 320 and meta["receptive_field_samples"] == 400
    assert meta["sample_rate"] == SR and meta["normalize"] is True and meta["model"] == str(checkpoint)
    assert meta["num_layers"] == 2 and meta["layers"] == ["0", "1", "2", "cnn"]
    assert meta["dims"] == {"0": 48, "1": 48, "2": 48, "cnn": 32} and meta["dtype"] == "float32"
    assert set(meta["layer_numbering"]) == {"cnn", "0", "i", "2"} and meta["format"] == "npy"
    assert meta["num_utterances"] == 3 and meta["failed"] == []


def test_stacked_format_and_index_reconstruct_the_utterances(checkpoint: Path, audio_dir: Path,
                                                            tmp_path: Path) -> None:
    write_manifest(tmp_path / "x.tsv", str(audio_dir), [("spk1/deep/c.wav", 0), ("a.wav", 0)])
    common = ["--model", str(checkpoint), "--layers", "2,0,cnn", "--quiet"]
    assert cli.main([*common, "--out", str(tmp_path / "npy"), "--manifest", str(tmp_path / "x.tsv")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "st"), "--format", "stacked",
                     "--manifest", str(tmp_path / "x.tsv"), str(audio_dir / "spk1" / "b.flac")]) == 0
    st = tmp_path / "st"
    rows = [r.split("\t") for r in (st / "index.tsv").read_text().splitlines()]
    assert rows[0] == ["utterance", "start_frame", "num_frames"]
    assert [r[0] for r in rows[1:]] == ["b.flac", "spk1/deep/c.wav", "a.wav"]  # inputs, then manifests
    starts, counts = [int(r[1]) for r in rows[1:]], [int(r[2]) for r in rows[1:]]
    assert counts == [30, 101, 61]  # output_lengths of 0.61 s, 2.0417 s, 1.234 s
    assert starts == [0, 30, 131]
    for layer in ("2", "0", "cnn"):
        stacked = np.load(st / f"{layer}.npy")
        assert stacked.shape[0] == sum(counts)
        parts = feature_files.read_stacked(st, layer)
        for name in ("spk1/deep/c.wav", "a.wav"):
            npy = tmp_path / "npy" / layer / Path(name).with_suffix(".npy")
            np.testing.assert_array_equal(parts[name], np.load(npy))
        assert parts["b.flac"].shape[0] == counts[0]
    assert sorted(p.name for p in st.iterdir()) == ["0.npy", "2.npy", "cnn.npy", "features.json", "index.tsv"]
    meta = json.loads((st / "features.json").read_text())
    assert meta["format"] == "stacked" and meta["files"] == {"arrays": "<layer>.npy", "index": "index.tsv"}
    assert meta["layers"] == ["2", "0", "cnn"] and meta["num_frames"] == sum(counts)


def _relative_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame: ||a_t - b_t|| / ||b_t||. Shape: (T, X), (T, X) -> (T,)."""
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_a_long_file_in_windows_is_close_to_one_pass(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """3.3 s in 1 s windows with 0.5 s of context each side (4 windows), against one pass.

    The "ln" model's CNN is local (400 samples per frame) and layer 0 adds a positional
    conv of 16 frames, both well inside the 25 frames of context: equal up to float. The
    Transformer layers attend over the window only, so they differ; measured at most 0.4%
    per frame (relative norm). The bound, 2%, is five times that, and five times below what
    a frame misplaced by one gives (>= 10% on every frame), so a stitching error fails it.
    The "gn" (BASE) model's first GroupNorm normalises each channel over the window's time,
    not the file's: on this syllabic audio that moves every layer by 16% per frame on
    average with 1 s windows (1 s of context: 7%); a misplaced frame moves it by > 100%.
    """
    path = _write(tmp_path / "long.wav", 3.3, seed=5)
    for kind, checkpoint in checkpoints.items():
        windowed = features.load_extractor(checkpoint, window_seconds=1.0, context_seconds=0.5)
        assert len(windowed.windows(sf.info(path).frames)) == 4
        got = windowed.extract(path, ["cnn", "0", "1", "2"])
        model, normalize = _reference_model(checkpoint)
        ref, num_samples = _encode(model, path, normalize)
        T = model.feature_encoder.output_lengths(num_samples)
        for layer, full in [("cnn", ref.features[0])] + [(str(k), ref.hidden_states[k][0]) for k in range(3)]:
            full = full.numpy()
            assert got[layer].shape == full.shape == (T, full.shape[1]), (kind, layer)
            error = _relative_error(got[layer], full)
            misplaced = _relative_error(got[layer][1:], full[:-1])
            if kind == "ln":
                assert misplaced.min() > 0.05, layer
                if layer in ("cnn", "0"):
                    np.testing.assert_allclose(got[layer], full, rtol=1e-5, atol=1e-5, err_msg=layer)
                else:
                    assert error.max() < 0.02, (layer, error.max())
            else:
                assert error.mean() < 0.3 < misplaced.mean(), (layer, error.mean(), misplaced.mean())


def test_long_files_are_written_window_by_window(checkpoint: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each window's frames are on disk (in the memory-mapped temporary file, not yet under
    the final name) before the next window is encoded, so a file's frames are never all in
    memory; both layouts give the frames of the in-memory `extract`."""
    path = _write(tmp_path / "in" / "long.wav", 3.3, seed=5)
    windowed = features.load_extractor(checkpoint, window_seconds=1.0, context_seconds=0.5)
    expected = windowed.extract(path, ["1", "cnn"])
    final = tmp_path / "npy" / "1" / "long.npy"
    sizes, checked = [], []
    original = features.FeatureExtractor.iter_frames

    def spy(self, audio, layers):
        for first, frames in original(self, audio, layers):
            sizes.append(len(frames["1"]))
            if first > 0 and not final.exists():  # the npy layout, before its rename
                on_disk = np.load(final.with_name("long.npy.tmp"), mmap_mode="r")
                np.testing.assert_array_equal(on_disk[:first], expected["1"][:first])
                checked.append(first)
            yield first, frames

    monkeypatch.setattr(features.FeatureExtractor, "iter_frames", spy)
    utterances = feature_files.find_utterances([tmp_path / "in"])
    feature_files.extract_to_dir(windowed, utterances, tmp_path / "npy", layers=["1", "cnn"])
    feature_files.extract_to_dir(windowed, utterances, tmp_path / "st", layers=["1", "cnn"], stacked=True)
    assert sizes == [50, 50, 50, 14] * 2 and checked == [50, 100, 150]  # 164 frames in cores of 50
    for layer in ("1", "cnn"):
        np.testing.assert_array_equal(np.load(tmp_path / "npy" / layer / "long.npy"), expected[layer])
        np.testing.assert_array_equal(feature_files.read_stacked(tmp_path / "st", layer)["long.wav"], expected[layer])


def test_unreadable_files_are_reported_and_the_rest_go_on(checkpoint: Path, audio_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The script as users run it (for its exit status), then the stacked layout in-process
    (where pytest captures the log lines)."""
    bad = [audio_dir / "bad.wav", audio_dir / "spk1" / "short.wav", tmp_path / "nowhere.flac"]
    bad[0].write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(bad[1], np.zeros(300, np.float32), SR)  # under one frame's 400 samples
    args = ["--model", str(checkpoint), "--layers", "1", str(audio_dir), str(bad[2])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "npy")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert cli.main([*args, "--out", str(tmp_path / "stacked"), "--format", "stacked"]) == 1
    for fmt, stderr in (("npy", proc.stderr), ("stacked", caplog.text + capsys.readouterr().err)):
        lines = stderr.splitlines()
        summary = lines[lines.index("3 files failed:") + 1:]
        for path, reason in zip(bad, ("Format not recognised", "too short", "no such file")):
            assert any("FAILED" in line and str(path) in line and reason in line for line in lines), (fmt, path)
            assert any(line.startswith("  ") and str(path) in line and reason in line for line in summary), path
        out = tmp_path / fmt
        meta = json.loads((out / "features.json").read_text())
        assert meta["num_utterances"] == 3 and sorted(f["path"] for f in meta["failed"]) == sorted(map(str, bad))
        left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        if fmt == "npy":
            assert left == ["1/a.npy", "1/spk1/b.npy", "1/spk1/deep/c.npy", "features.json"]
        else:
            assert left == ["1.npy", "features.json", "index.tsv"]
            assert list(feature_files.read_stacked(out, "1")) == ["a.wav", "spk1/b.flac", "spk1/deep/c.wav"]


def test_a_crash_leaves_no_file_under_a_final_name(checkpoint: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt in the middle of a file: the files finished before are complete, the
    interrupted one has no array (not even a temporary one), in both layouts. A file that
    fails half-way in the stacked layout is cut out of the staging data."""
    _write(tmp_path / "in" / "a.wav", 1.0, seed=0)
    _write(tmp_path / "in" / "b.wav", 3.3, seed=1)
    _write(tmp_path / "in" / "c.wav", 0.7, seed=2)
    extractor = features.load_extractor(checkpoint, window_seconds=1.0, context_seconds=0.5)
    utterances = feature_files.find_utterances([tmp_path / "in"])
    reference = {u.name: extractor.extract(u.path, ["2"])["2"] for u in utterances}
    original = features.FeatureExtractor.iter_frames

    def crash_in_b(error):
        def iter_frames(self, audio, layers):
            for i, item in enumerate(original(self, audio, layers)):
                if audio.path.endswith("b.wav") and i == 2:
                    raise error
                yield item
        return iter_frames

    monkeypatch.setattr(features.FeatureExtractor, "iter_frames", crash_in_b(KeyboardInterrupt()))
    for stacked in (False, True):
        out = tmp_path / f"interrupted{stacked}"
        with pytest.raises(KeyboardInterrupt):
            feature_files.extract_to_dir(extractor, utterances, out, layers=["2"], stacked=stacked)
        left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
        assert left == ([] if stacked else ["2", "2/a.npy"])  # stacked arrays only appear at the end
        if not stacked:
            np.testing.assert_array_equal(np.load(out / "2" / "a.npy"), reference["a.wav"])

    monkeypatch.setattr(features.FeatureExtractor, "iter_frames", crash_in_b(RuntimeError("disk on fire")))
    out = tmp_path / "failed"
    result = feature_files.extract_to_dir(extractor, utterances, out, layers=["2"], stacked=True)
    assert result.failures == [(str(tmp_path / "in" / "b.wav"), "disk on fire")]
    parts = feature_files.read_stacked(out, "2")
    assert list(parts) == ["a.wav", "c.wav"]
    for name, array in parts.items():
        np.testing.assert_array_equal(array, reference[name])
    assert np.load(out / "2.npy").shape[0] == len(reference["a.wav"]) + len(reference["c.wav"])


def test_layer_choice_and_model_errors(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    assert features.parse_layers("all", 2) == ["0", "1", "2"]
    assert features.parse_layers("cnn,2,0,2", 12) == ["cnn", "2", "0"]
    assert features.parse_layers("all,cnn", 1) == ["0", "1", "cnn"]
    for bad in ("3", "-1", "last", ""):
        with pytest.raises(ValueError, match="is not a layer: give numbers 0..2"):
            features.parse_layers(bad, 2)
    wav = _write(tmp_path / "a.wav", 0.5, seed=0)
    assert cli.main(["--model", str(checkpoint), "--out", str(tmp_path / "o"), "--layers", "7", str(wav)]) == 2
    assert "'7' is not a layer" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"), str(wav)]) == 2
    assert "none.pt" in capsys.readouterr().err

    with pytest.raises(ValueError, match="would both be written as a.npy"):
        feature_files.find_utterances([wav, _write(tmp_path / "other" / "a.flac", 0.5, seed=1)])

    # A model that does not record its normalisation (a transformers directory without a
    # preprocessor_config.json) must be told; a given value wins over the recorded one.
    import dataclasses

    real = features.load_model
    monkeypatch.setattr(features, "load_model", lambda p: dataclasses.replace(real(p), normalize=None))
    with pytest.raises(ValueError, match="--normalize/--no-normalize"):
        features.load_extractor(checkpoint)
    assert features.load_extractor(checkpoint, normalize=False).normalize is False
    monkeypatch.setattr(features, "load_model", real)
    assert features.load_extractor(checkpoint).normalize is True
    assert features.load_extractor(checkpoint, normalize=False).normalize is False


@pytest.mark.parametrize("fmt", ["npy", "stacked"])
def test_a_run_where_every_file_fails_leaves_nothing(checkpoint: Path, tmp_path: Path, fmt: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "feats"
    assert cli.main(["--model", str(checkpoint), "--out", str(out), "--format", fmt, str(empty),
                     str(tmp_path / "missing.wav")]) == 1
    err = capsys.readouterr().err
    assert f"{empty} is empty (0 bytes)" in err and f"no such file: {tmp_path / 'missing.wav'}" in err
    assert not out.exists()
    # An output directory that was there before stays, without a features.json.
    out.mkdir()
    assert cli.main(["--model", str(checkpoint), "--out", str(out), "--format", fmt, str(empty)]) == 1
    assert out.is_dir() and not (out / "features.json").exists()
