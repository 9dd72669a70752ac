"""fairseq TSV manifests: read, write, and build one from a directory of audio.

Format (fairseq `examples/wav2vec/wav2vec_manifest.py`): line 1 is the absolute root
directory, then one line per file, `relative/path<TAB>num_samples`. Files written here
load in fairseq and fairseq's files load here.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import soundfile as sf

from wav2vec2.files import atomic_write

logger = logging.getLogger(__name__)

Entry = tuple[str, int]  # (path relative to root, number of samples)


def read_manifest(path: str | os.PathLike) -> tuple[str, list[Entry]]:
    """Read a fairseq manifest; returns (root, [(relpath, num_samples), ...]).

    Raises ValueError naming the file and 1-based line number for any malformed line, or
    for bytes that are not UTF-8. Trailing empty lines are ignored; an empty line in the
    middle is an error, as in fairseq. Lines end at \n, \r\n or a lone \r (Python's
    universal newlines, which fairseq reads with too); a UTF-8 byte order mark is skipped.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = len(_split_lines(data[: e.start].decode("utf-8-sig")))
        raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = _split_lines(text)
    while lines and lines[-1].strip() == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty manifest (expected the root directory on line 1)")
    root = lines[0].strip()
    if "\t" in root or not root:
        raise ValueError(f"{path}:1: expected the root directory, got {lines[0]!r}")
    entries: list[Entry] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0]:
            raise ValueError(
                f"{path}:{lineno}: expected 'relative/path<TAB>num_samples', got {line!r}"
            )
        try:
            num_samples = int(fields[1])
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: num_samples must be an integer, got {fields[1]!r}"
            ) from None
        if num_samples < 0:
            raise ValueError(f"{path}:{lineno}: num_samples is negative ({num_samples})")
        entries.append((fields[0], num_samples))
    return root, entries


def _split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def write_manifest(path: str | os.PathLike, root: str, entries: list[Entry]) -> None:
    """Write a fairseq manifest atomically (`wav2vec2.files.atomic_write`).

    Raises ValueError, before writing anything, for what `read_manifest` could not read
    back: a root or file name with a tab or line break, an empty one, a root with
    surrounding spaces, a negative size.
    """
    path = os.fspath(path)
    # read_manifest strips the root line (and a byte order mark): refuse what it would change.
    if not root or root != root.strip() or root.startswith("\ufeff") or any(c in root for c in "\t\n\r"):
        raise ValueError(f"{path}: root {root!r} is empty, has surrounding spaces or a tab or line break")
    for rel, n in entries:
        if not rel or any(c in rel for c in "\t\n\r"):
            raise ValueError(f"{path}: file name {rel!r} is empty or contains a tab or line break")
        if n < 0:
            raise ValueError(f"{path}: {rel!r} has a negative number of samples ({n})")
    atomic_write(path, "".join([root + "\n", *(f"{rel}\t{n}\n" for rel, n in entries)]))


def find_audio(root: str, exts: list[str], path_must_contain: str | None = None) -> list[str]:
    """Real paths of files under `root` ending in any of `exts`, sorted.

    Uses the same recursive glob as fairseq (case-sensitive, hidden files skipped).
    Sorting makes the train/valid split independent of file-system listing order.
    """
    paths: set[str] = set()
    for ext in exts:
        pattern = os.path.join(glob.escape(root), "**", "*." + ext.lstrip("."))
        for p in glob.iglob(pattern, recursive=True):
            real = os.path.realpath(p)
            if os.path.isfile(real) and (not path_must_contain or path_must_contain in real):
                paths.add(real)
    return sorted(paths)


def probe_audio(path: str) -> tuple[int, int, str | None]:
    """(num_frames, sample_rate, error or None) for one file; never raises."""
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile raises several types; all mean "unreadable"
        return 0, 0, f"unreadable: {e}".replace("\n", " ").replace("\t", " ")
    if info.frames <= 0:
        return 0, info.samplerate, "zero samples"
    return info.frames, info.samplerate, None


@dataclass
class ManifestSummary:
    num_train: int = 0
    num_valid: int = 0
    seconds: float = 0.0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    sample_rates: dict[int, int] = field(default_factory=dict)

    def __str__(self) -> str:
        rates = ", ".join(f"{sr} Hz: {n}" for sr, n in sorted(self.sample_rates.items()))
        return (
            f"{self.num_train + self.num_valid} files ({self.num_train} train, "
            f"{self.num_valid} valid), {self.seconds / 3600:.2f} h, "
            f"{len(self.rejected)} rejected; sample rates: {rates or 'none'}"
        )


def build_manifest(
    root: str,
    dest: str,
    *,
    exts: list[str],
    valid_percent: float = 0.01,
    seed: int = 42,
    path_must_contain: str | None = None,
    num_workers: int = 1,
    progress: bool = False,
) -> ManifestSummary:
    """Scan `root` and write `dest/train.tsv` (+ `valid.tsv` when valid_percent > 0).

    As fairseq, a file goes to valid when a `random.Random(seed).random()` draw is
    <= valid_percent; one draw per file found (in sorted order), readable or not, so one
    bad file does not reshuffle the split of the others. Unreadable or empty files are
    written to `dest/rejected.tsv` (path<TAB>reason) and counted, never silently dropped.
    """
    if not 0.0 <= valid_percent <= 1.0:
        raise ValueError(f"valid_percent must be in [0, 1], got {valid_percent}")
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise ValueError(f"root {root!r} is not a directory")
    paths = find_audio(root, exts, path_must_contain)
    if not paths:
        raise ValueError(
            f"no audio under {root!r} with extension(s) {', '.join(exts)}"
            + (f" whose path contains {path_must_contain!r}" if path_must_contain else "")
        )
    rand = random.Random(seed)
    to_valid = [rand.random() <= valid_percent for _ in paths]

    if num_workers > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            chunk = max(1, min(256, len(paths) // (num_workers * 8)))
            probes = _with_progress(pool.map(probe_audio, paths, chunksize=chunk), len(paths), progress)
            probes = list(probes)
    else:
        probes = list(_with_progress(map(probe_audio, paths), len(paths), progress))

    summary = ManifestSummary()
    train: list[Entry] = []
    valid: list[Entry] = []
    for path, (frames, sr, error), is_valid in zip(paths, probes, to_valid):
        if error is not None:
            summary.rejected.append((path, error))
            continue
        (valid if is_valid else train).append((os.path.relpath(path, root), frames))
        summary.seconds += frames / sr
        summary.sample_rates[sr] = summary.sample_rates.get(sr, 0) + 1
    summary.num_train, summary.num_valid = len(train), len(valid)

    os.makedirs(dest, exist_ok=True)
    write_manifest(os.path.join(dest, "train.tsv"), root, train)
    if valid_percent > 0:
        write_manifest(os.path.join(dest, "valid.tsv"), root, valid)
    rejected_path = os.path.join(dest, "rejected.tsv")
    if summary.rejected:
        atomic_write(rejected_path, "".join(f"{path}\t{reason}\n" for path, reason in summary.rejected))
        logger.warning("%d unreadable or empty files listed in %s", len(summary.rejected), rejected_path)
    elif os.path.exists(rejected_path):
        os.remove(rejected_path)  # stale report from an earlier run
    if len(summary.sample_rates) > 1:
        logger.warning("mixed sample rates in %s: %s", root, summary.sample_rates)
    return summary


def _with_progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, unit="file", desc="probing audio")
