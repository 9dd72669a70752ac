"""Class labels (`.lbl`): one class name per manifest line; every bad label names its file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wav2vec2.data import ClassLabelledAudioDataset
from wav2vec2.data.labels import class_indices, read_class_labels


def test_labels_are_read_and_indexed(tmp_path: Path) -> None:
    path = tmp_path / "train.lbl"
    path.write_text(" en\nfr \nen\n\n")  # surrounding spaces and a stray final blank line are fine
    labels = read_class_labels(path, num_lines=3)
    assert labels == ["en", "fr", "en"]
    assert class_indices(labels, ["en", "fr"], path=path) == [0, 1, 0]


def test_unknown_class_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "valid.lbl"
    path.write_text("en\nfr\nde\n")
    labels = read_class_labels(path, num_lines=3)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: unknown class 'de'; the classes are en, fr")):
        class_indices(labels, ["en", "fr"], path=path)


@pytest.mark.parametrize("text,num_lines,where", [
    ("en\nfr\n", 3, ":3 is the first manifest entry without one"),  # a missing line
    ("en\nfr\nen\nfr\n", 3, ":4 is the first line without a manifest entry"),
])
def test_line_count_mismatch_names_the_line(tmp_path: Path, text: str, num_lines: int, where: str) -> None:
    path = tmp_path / "train.lbl"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}{where}")):
        read_class_labels(path, num_lines=num_lines)


@pytest.mark.parametrize("text,message", [("en\n\nfr\n", ":2: empty label"), ("en\nfr ca\nfr\n", ":2: class 'fr ca'")])
def test_empty_or_spaced_labels_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.lbl"
    path.write_text(text)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}{message}")):
        read_class_labels(path, num_lines=3)


def test_dataset_items_carry_their_class(class_corpus: Path) -> None:
    ds = ClassLabelledAudioDataset(class_corpus / "train.tsv", labels_path=class_corpus / "train.lbl",
                                   classes=["spk0", "spk1", "spk2"])
    lines = (class_corpus / "train.lbl").read_text().split()
    for i in (0, 4, 7):
        assert ds[i]["target"].tolist() == [["spk0", "spk1", "spk2"].index(lines[i])]
    with pytest.raises(ValueError, match=re.escape(f"{class_corpus / 'train.lbl'}:1: unknown class 'spk0'")):
        ClassLabelledAudioDataset(class_corpus / "train.tsv", labels_path=class_corpus / "train.lbl",
                                  classes=["spk1", "spk2"])
