"""scripts/align.py as users run it: a recording and its text to JSON, TextGrid and CTM; unknown
characters stop it with their positions; a manifest's utterances; segmentation of a long
recording into a manifest with labels, cut audio and a report of every line. The model is
the tiny one, untrained: these tests are about the files, `test_align.py` about the times.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2.config import tiny
from wav2vec2.data import Dictionary, write_manifest
from wav2vec2.data.labels import read_label_lines
from wav2vec2.data.manifest import read_manifest
from wav2vec2.model.ctc import Wav2Vec2Ctc

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "align.py"
SR = 16000
DICTIONARY = Dictionary.from_symbols(["|", "E", "T", "A", "O", "N", "H", "L", "S"])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny CTC model as a fine-tuning checkpoint of this project."""
    from hydra import compose, initialize_config_dir

    from wav2vec2.train.cli import register_configs, to_train_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "checkpoint_best.pt"
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = to_train_config(compose(config_name="ctc_tiny", overrides=[f"data.manifest_dir={path.parent}",
                                                                         f"run_dir={path.parent}"]))
    model = Wav2Vec2Ctc(tiny(), vocab_size=len(DICTIONARY))
    torch.save({"task": "ctc", "config": dataclasses.asdict(cfg), "model": model.state_dict(),
                "task_state": {"dictionary": DICTIONARY.symbols[4:]}}, path)
    return path


def noise(tmp_path: Path, seconds: float, name: str = "talk.wav") -> Path:
    path = tmp_path / name
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32), SR)
    return path


def run(*args: str) -> int:
    return runpy.run_path(str(SCRIPT))["main"](list(args))


def test_a_file_and_its_text_to_json_textgrid_and_ctm(model: Path, tmp_path: Path, capsys) -> None:
    audio = noise(tmp_path, 4.0)
    (tmp_path / "talk.txt").write_text("the hat\nno tea\n")
    assert run("--model", str(model), str(audio), str(tmp_path / "talk.txt"), "--min-score", "0") == 0
    record = json.loads(capsys.readouterr().out)
    assert [x["text"] for x in record["lines"]] == ["the hat", "no tea"]
    words = [w for x in record["lines"] for w in x["words"]]
    assert [w["word"] for w in words] == ["the", "hat", "no", "tea"]
    assert all(0 <= w["start"] < w["end"] <= 4.0 and 0 < w["score"] <= 1 for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))  # in order, not overlapping
    assert run("--model", str(model), str(audio), str(tmp_path / "talk.txt"), "--format", "textgrid",
               "--out", str(tmp_path / "talk.TextGrid")) == 0
    assert 'name = "tokens"' in (tmp_path / "talk.TextGrid").read_text()
    assert run("--model", str(model), str(audio), str(tmp_path / "talk.txt"), "--format", "ctm",
               "--level", "token", "--out", str(tmp_path / "talk.ctm")) == 0
    assert len((tmp_path / "talk.ctm").read_text().splitlines()) == len("thehatnotea")


def test_unknown_characters_stop_it_unless_told(model: Path, tmp_path: Path, capsys) -> None:
    audio = noise(tmp_path, 3.0)
    (tmp_path / "talk.txt").write_text("the hat.\nno, tea\n")
    assert run("--model", str(model), str(audio), str(tmp_path / "talk.txt")) == 2
    err = capsys.readouterr().err
    assert "'.' (1:8), ',' (2:3)" in err and "--unknown" in err
    assert run("--model", str(model), str(audio), str(tmp_path / "talk.txt"), "--unknown", "skip") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unknown"] == ["'.' (1:8)", "',' (2:3)"]
    assert "2 character(s) not in the dictionary" in captured.err


def test_a_manifest_to_json_lines(model: Path, tmp_path: Path) -> None:
    names = [noise(tmp_path, 1.0 + k, f"u{k}.wav").name for k in range(3)]
    write_manifest(tmp_path / "test.tsv", str(tmp_path), [(n, SR * (1 + k)) for k, n in enumerate(names)])
    (tmp_path / "test.wrd").write_text("THE HAT\nNO\nA LOT ELSE\n")
    assert run("--model", str(model), "--manifest", str(tmp_path / "test.tsv"), "--out",
               str(tmp_path / "out.jsonl")) == 0
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["lines"][0]["text"] for r in records] == ["THE HAT", "NO", "A LOT ELSE"]
    assert [r["file"] for r in records] == [str(tmp_path / n) for n in names]


def test_segmentation_writes_a_manifest_labels_and_every_line(model: Path, tmp_path: Path, capsys) -> None:
    audio = noise(tmp_path, 6.0, "book.wav")
    (tmp_path / "book.txt").write_text("the hat\n\nno tea\nsea salt\n")
    out = tmp_path / "corpus"
    assert run("--model", str(model), str(audio), str(tmp_path / "book.txt"), "--segment", str(out),
               "--min-score", "0") == 0
    root, entries = read_manifest(out / "train.tsv")
    assert [name for name, _ in entries] == ["book_00001.flac", "book_00003.flac", "book_00004.flac"]
    assert read_label_lines(out / "train.wrd", num_lines=3) == ["THE HAT", "NO TEA", "SEA SALT"]
    assert read_label_lines(out / "train.ltr", num_lines=3)[0] == "T H E | H A T |"
    for name, samples in entries:
        assert sf.info(Path(root) / name).frames == samples > 0
    assert Dictionary.load(out / "dict.ltr.txt") == DICTIONARY
    rows = (out / "segments.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["line", "start", "end", "score", "status", "text"] and len(rows) == 4
    # A threshold no line meets: nothing kept, every line listed with its score.
    assert run("--model", str(model), str(audio), str(tmp_path / "book.txt"), "--segment", str(tmp_path / "none"),
               "--min-score", "1.01") == 0
    assert "0 of 3 lines kept" in capsys.readouterr().err
    assert read_manifest(tmp_path / "none" / "train.tsv")[1] == []
    assert all(r.split("\t")[4] == "score below 1.01" for r in (tmp_path / "none" / "segments.tsv").read_text()
               .splitlines()[1:])
