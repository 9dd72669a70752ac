from __future__ import annotations

import re

import pytest
import torch

from wav2vec2.data.labels import (
    BLANK,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    WORD_BOUNDARY,
    Dictionary,
    collate_targets,
    letters,
    read_label_file,
    write_label_lines,
)

# A dict.ltr.txt as the corpora write it: most frequent first, "|" and "'" included.
DICT_TEXT = "| 120\nE 80\nT 60\nH 40\nR 30\nI 20\n' 5\nS 4\nO 3\nN 2\n"
LINE = "H I | T H E R E | I T ' S | N O T | "


@pytest.fixture
def dict_path(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text(DICT_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def d(dict_path):
    return Dictionary.load(dict_path)


def _load_error(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "dict.ltr.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        Dictionary.load(path)


def test_indices_follow_fairseq(d):
    assert (BLANK, PAD, EOS, UNK) == (0, 1, 2, 3)
    assert d.symbols[:4] == list(SPECIALS) == ["<blank>", "<pad>", "</s>", "<unk>"]
    assert d.symbols[4:] == ["|", "E", "T", "H", "R", "I", "'", "S", "O", "N"]
    assert len(d) == 14
    assert d.index(WORD_BOUNDARY) == 4 and d.index("N") == 13 and d.index("<pad>") == PAD
    assert d.counts[4:6] == [120, 80]
    with pytest.raises(ValueError, match="'Z' is not in the dictionary"):
        d.index("Z")


def test_save_load_round_trip(d, tmp_path):
    out = tmp_path / "copy" / "dict.ltr.txt"
    out.parent.mkdir()
    d.save(out)
    assert out.read_text(encoding="utf-8") == DICT_TEXT
    again = Dictionary.load(out)
    assert again == d and again.symbols == d.symbols and again.counts == d.counts

    from_list = Dictionary.from_symbols(["A", "|", "B"])
    from_list.save(out)
    assert out.read_text(encoding="utf-8") == "A 1\n| 1\nB 1\n"
    assert Dictionary.load(out) == from_list
    assert from_list.symbols == [*SPECIALS, "A", "|", "B"]


def test_overwrite_flag_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    path.write_text("| 10\nE 5 #fairseq:overwrite\n\nT 1\n", encoding="utf-8")
    assert Dictionary.load(path).symbols[4:] == ["|", "E", "T"]


def test_encode_string_words(d):
    ids = d.encode(LINE, where="x")
    assert ids == [d.index(s) for s in LINE.split()]
    assert ids[:3] == [7, 9, 4]  # H I |
    assert d.string(ids) == LINE.strip()
    assert d.words(ids) == "HI THERE IT'S NOT"
    assert d.words(torch.tensor(ids)) == "HI THERE IT'S NOT"
    # Whitespace between symbols does not matter, as in fairseq's tokenizer.
    assert d.encode("  H\tI  |\n", where="x") == [7, 9, 4]


def test_string_skips_structural_specials_but_keeps_unk(d):
    ids = [BLANK, 7, PAD, 9, EOS, 4, UNK, 4, PAD, PAD]
    assert d.string(ids) == "H I | <unk> |"
    assert d.string(torch.tensor(ids)) == "H I | <unk> |"
    assert d.words(ids) == "HI <unk>"
    with pytest.raises(ValueError, match="id -100 is out of range"):
        d.string([7, -100])
    with pytest.raises(ValueError, match="id 14 is out of range"):
        d.string([14])


def test_words_without_word_boundary():
    d = Dictionary.from_symbols(["A", "B", "C"])
    assert d.words([4, 5, 6, 4]) == "ABCA"


def test_encode_errors_name_where(d):
    message = r"^data/train.ltr:17: symbol\(s\) 'Q' 'Z' not in the dictionary; add"
    with pytest.raises(ValueError, match=message):
        d.encode("Z E | Q |", where="data/train.ltr:17")
    with pytest.raises(ValueError, match=r"^data/train.ltr:3: empty transcript"):
        d.encode("  \n", where="data/train.ltr:3")
    with pytest.raises(ValueError, match=r"^v.ltr:2: special symbol\(s\) <blank>"):
        d.encode("H <blank> I |", where="v.ltr:2")


@pytest.mark.parametrize(
    "text, lineno, message",
    [
        ("| 10\nE\n", 2, "expected 'SYMBOL COUNT', got 'E'"),
        ("| 10\nE 5 7\n", 2, "expected 'SYMBOL COUNT'"),
        ("| 10\nE 5\nT many\n", 3, "count must be an integer, got 'many'"),
        ("| 10\nE 5\n| 3\n", 3, "duplicate symbol '|' (already index 4)"),
        ("| 10\nE 5 #fairseq:overwrite\nE 1 #fairseq:overwrite\n", 3, "duplicate symbol 'E'"),
        ("| 10\n<unk> 5\n", 2, "symbol '<unk>' collides with a special"),
        ("<blank> 1\n", 1, "symbol '<blank>' collides with a special"),
    ],
)
def test_load_errors_name_path_and_line(tmp_path, text, lineno, message):
    path = tmp_path / "dict.ltr.txt"
    _load_error(tmp_path, text, "^" + re.escape(f"{path}:{lineno}: {message}"))


def test_load_rejects_empty_dictionary(tmp_path):
    path = tmp_path / "dict.ltr.txt"
    _load_error(tmp_path, "\n\n", "^" + re.escape(f"{path}: the dictionary has no symbols"))


def test_from_symbols_errors():
    with pytest.raises(ValueError, match="duplicate symbol 'A'"):
        Dictionary.from_symbols(["A", "B", "A"])
    with pytest.raises(ValueError, match="collides with a special"):
        Dictionary.from_symbols(["</s>"])
    with pytest.raises(ValueError, match="empty or contains whitespace"):
        Dictionary.from_symbols(["A B"])
    with pytest.raises(ValueError, match="no symbols"):
        Dictionary.from_symbols([])


def test_read_label_file(d, tmp_path):
    path = tmp_path / "train.ltr"
    path.write_text("H I |\nT H E R E |\nN O |\n\n", encoding="utf-8")  # stray final blank line
    labels = read_label_file(path, dictionary=d, num_lines=3)
    assert labels == [[7, 9, 4], [6, 7, 5, 8, 5, 4], [13, 12, 4]]


@pytest.mark.parametrize("num_lines", [2, 4])
def test_read_label_file_line_count_mismatch(d, tmp_path, num_lines):
    path = tmp_path / "train.ltr"
    path.write_text("H I |\nT H E R E |\nN O |\n", encoding="utf-8")
    expected = (
        f"{path}: 3 label lines but the manifest has {num_lines} entries; "
        "a label file needs exactly one line per manifest entry"
    )
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        read_label_file(path, dictionary=d, num_lines=num_lines)


def test_read_label_file_errors_name_line(d, tmp_path):
    path = tmp_path / "valid.ltr"
    path.write_text("H I |\nT H E R E |\nN O X |\n", encoding="utf-8")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: symbol(s) 'X' not in")):
        read_label_file(path, dictionary=d, num_lines=3)
    # A blank line in the middle is an empty transcript, not a line to skip.
    path.write_text("H I |\n\nN O |\n", encoding="utf-8")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:2: empty transcript")):
        read_label_file(path, dictionary=d, num_lines=3)


def test_read_label_file_counts_lines_like_fairseq(d, tmp_path):
    # U+2028 breaks lines for str.splitlines() but not for file iteration (fairseq's way);
    # inside a line it is whitespace, like any other, so it separates two symbols.
    path = tmp_path / "train.ltr"
    path.write_text("H I |\nT\u2028E |\n", encoding="utf-8")
    assert read_label_file(path, dictionary=d, num_lines=2) == [[7, 9, 4], [6, 5, 4]]


def test_letters_is_fairseq_ltr_and_words_reads_it_back():
    line = letters(["HI", "IT'S", "ÉTÉ"])
    assert line == "H I | I T ' S | É T É |"
    d = Dictionary.from_label_lines([line])
    assert d.words(d.encode(line, where="t")) == "HI IT'S ÉTÉ"


def test_from_label_lines_counts_most_frequent_first(tmp_path):
    d = Dictionary.from_label_lines(["B A |", "A C |", "B A |"])
    # A 3, | 3, B 2, C 1: ties in symbol order ("A" < "|"), so the file is reproducible.
    assert d.symbols[len(SPECIALS):] == ["A", "|", "B", "C"] and d.counts[len(SPECIALS):] == [3, 3, 2, 1]
    d.save(tmp_path / "dict.ltr.txt")
    assert (tmp_path / "dict.ltr.txt").read_text() == "A 3\n| 3\nB 2\nC 1\n"


def test_write_label_lines(tmp_path, d):
    path = tmp_path / "train.ltr"
    write_label_lines(path, [LINE, "H I |"])
    assert path.read_text(encoding="utf-8") == LINE + "\nH I |\n"
    assert read_label_file(path, dictionary=d, num_lines=2)[1] == [d.index("H"), d.index("I"), d.index("|")]
    for bad in ("H I |\nT H E |", "H I |\r"):  # would shift every later label by a line
        with pytest.raises(ValueError, match="line 2 .* line break"):
            write_label_lines(path, ["H I |", bad])
    assert path.read_text(encoding="utf-8") == LINE + "\nH I |\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dict.ltr.txt", "train.ltr"]  # no .tmp left


def test_collate_targets():
    targets = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10, 11, 12, 13])]
    padded, lengths = collate_targets(targets)
    assert padded.shape == (3, 5) and padded.dtype == torch.long
    assert lengths.tolist() == [3, 1, 5] and lengths.dtype == torch.long
    assert padded.tolist() == [[5, 6, 7, PAD, PAD], [8, PAD, PAD, PAD, PAD], [9, 10, 11, 12, 13]]
    padded, _ = collate_targets(targets[:2], pad_index=-100)
    assert padded.tolist() == [[5, 6, 7], [8, -100, -100]]


def test_collate_targets_rejects_bad_input():
    with pytest.raises(ValueError, match="empty batch"):
        collate_targets([])
    with pytest.raises(ValueError, match="expected 1-D long tensors"):
        collate_targets([torch.tensor([1.0, 2.0])])
    with pytest.raises(ValueError, match="expected 1-D long tensors"):
        collate_targets([torch.tensor([[1, 2]])])
