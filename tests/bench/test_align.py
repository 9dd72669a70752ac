"""The `align` section's pieces: recordings with known boundaries, and the child that runs one
aligner on saved emissions (ours and ctc-segmentation) in a fresh process, as the section runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wav2vec2.bench.align_data import Prompt, concatenate, trim
from wav2vec2.data.labels import Dictionary

SR = 16000


def test_trim_keeps_the_speech_and_concatenate_knows_where_it_is() -> None:
    rng = np.random.default_rng(0)
    tone = np.sin(np.arange(SR // 2) * 0.1).astype(np.float32)  # 0.5 s of "speech"
    padded = np.concatenate([1e-4 * rng.standard_normal(SR // 4), tone, 1e-4 * rng.standard_normal(SR // 5)])
    assert abs(len(trim(padded.astype(np.float32), SR)) - len(tone)) <= SR // 100
    prompts = [Prompt("A", tone), Prompt("B", tone[:SR // 4])]
    recording = concatenate(prompts, 6.0, SR, seed=1)
    assert len(recording.lines) == len(recording.truth) >= 3
    for line, (start, end) in zip(recording.lines, recording.truth):
        a, b = round(start * SR), round(end * SR)
        assert b - a == {"A": SR // 2, "B": SR // 4}[line]
        assert np.array_equal(recording.wav[a:b], tone[:b - a])  # the prompt is where the truth says
        assert np.abs(recording.wav[a - 100:a]).max() < 0.01  # a pause before it


@pytest.mark.parametrize("impl", ["ours", "ctc-segmentation"])
def test_child_aligns_saved_emissions_and_reports_time_and_memory(impl: str, tmp_path, run_python) -> None:
    """Emissions that spike "AB" at 0.2 s and "BA" at 1.0 s: both aligners find the lines."""
    if impl == "ctc-segmentation":
        pytest.importorskip("ctc_segmentation")
    dictionary = Dictionary.from_symbols(["|", "A", "B"])
    dictionary.save(tmp_path / "dict.ltr.txt")
    logits = np.zeros((75, len(dictionary)), dtype=np.float32)
    logits[:, 0] = 6.0
    for t, symbol in ((10, "A"), (12, "B"), (14, "|"), (50, "B"), (52, "A"), (54, "|")):
        logits[t, 0], logits[t, dictionary.index(symbol)] = 0.0, 6.0
    np.save(tmp_path / "x.logits.npy", logits)
    (tmp_path / "x.txt").write_text("ab\nba\n")
    proc = run_python("-m", "wav2vec2.bench", "_align_child", "--impl", impl, "--work-dir", str(tmp_path),
                      "--name", "x", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    result = json.loads(line[2:])
    assert result["seconds"] > 0 and result["peak_mb"] >= result["loaded_mb"] > 50
    (a_start, a_end, _), (b_start, b_end, _) = result["spans"]
    if impl == "ours":  # where the letters are
        assert (a_start, a_end, b_start, b_end) == (0.2, 0.26, 1.0, 1.06)
    else:  # ctc-segmentation cuts in the pause between the lines (its frame times are centres)
        assert a_start <= 0.2 and 0.24 <= a_end <= b_start <= 1.0 and b_end >= 1.04
