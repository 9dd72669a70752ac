"""TSV manifests: fairseq's, and two extensions of it (segments of files, several roots).

fairseq's format (`examples/wav2vec/wav2vec_manifest.py`): line 1 is the absolute root
directory, then one line per file, `relative/path<TAB>num_samples`. Files written here with
one root and whole files are exactly that, and fairseq's files load here unchanged.

Two extensions, for what fairseq's format cannot say (fairseq#3962, fairseq#5533):
- **Segment rows**: `path<TAB>num_samples<TAB>start=S`: the item is the `num_samples`
  samples of the file from sample S (both in the file's own samples), read by seeking
  (`soundfile`) rather than decoding the file. The second column keeps fairseq's meaning,
  the item's length, which is what batching counts. Any tool (a segmenter, a forced
  aligner) writes segments of long recordings this way; transcripts stay line-aligned.
- **Several roots**: the lines before the first data line are roots, root 0 first (fairseq's
  one); every further root must be an absolute path. A row under another root says so:
  `path<TAB>num_samples<TAB>root=1`. A path that is absolute ignores its root, as fairseq's
  `os.path.join` does.

Optional columns are `key=value`, in any order; an unknown key is an error naming its line.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import soundfile as sf
from tqdm import tqdm

from wav2vec2.files import atomic_write

logger = logging.getLogger(__name__)

Entry = tuple[str, int]  # (path relative to root, number of samples)


@dataclass(frozen=True)
class Row:
    """One item of a manifest."""

    path: str
    """As written: relative to its root (or absolute)."""
    num_samples: int
    """The item's length in samples (a segment's, or the whole file's)."""
    start: int | None = None
    """First sample of a segment in the file; None: the whole file (which must then have
    exactly `num_samples`)."""
    root: int = 0
    """Index of the row's root in the manifest's roots."""


@dataclass
class Manifest:
    roots: list[str]
    rows: list[Row]

    def abspath(self, row: Row) -> str:
        return os.path.join(self.roots[row.root], row.path)

    @property
    def is_fairseq(self) -> bool:
        """One root and whole files: fairseq's own format."""
        return len(self.roots) == 1 and all(r.start is None and r.root == 0 for r in self.rows)


_OPTIONAL = ("start", "root")


def read_rows(path: str | os.PathLike) -> Manifest:
    """Read a manifest (fairseq's, or with segments and several roots; module docstring).

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
    roots = [root]
    while len(roots) < len(lines) and "\t" not in lines[len(roots)] and os.path.isabs(lines[len(roots)].strip()):
        roots.append(lines[len(roots)].strip())
    rows: list[Row] = []
    for lineno, line in enumerate(lines[len(roots):], start=len(roots) + 1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0]:
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
        options: dict[str, int] = {}
        for column in fields[2:]:
            key, _, value = column.partition("=")
            if key not in _OPTIONAL or not value.strip().isdigit() or key in options:
                raise ValueError(f"{path}:{lineno}: expected start=SAMPLE or root=INDEX after the length, "
                                 f"got {column!r}")
            options[key] = int(value)
        if options.get("root", 0) >= len(roots):
            raise ValueError(f"{path}:{lineno}: root={options['root']}, but the manifest has {len(roots)} "
                             "root line(s)")
        rows.append(Row(fields[0], num_samples, options.get("start"), options.get("root", 0)))
    unused = sorted(set(range(1, len(roots))) - {r.root for r in rows})
    if unused:  # more likely a data line that lost its tab than a root on purpose
        raise ValueError(f"{path}:{unused[0] + 1}: {roots[unused[0]]!r} reads as root {unused[0]}, which no row "
                         f"names (root={unused[0]}); is it a data line without its tab?")
    return Manifest(roots, rows)


def read_manifest(path: str | os.PathLike) -> tuple[str, list[Entry]]:
    """Read a fairseq manifest; returns (root, [(relpath, num_samples), ...]).

    For tools that read whole files under one root: a manifest with segments or several
    roots is a ValueError saying so (`read_rows` reads those)."""
    manifest = read_rows(path)
    if not manifest.is_fairseq:
        raise ValueError(f"{os.fspath(path)} has segment rows or several roots; this tool reads fairseq's "
                         "one-root manifests of whole files")
    return manifest.roots[0], [(r.path, r.num_samples) for r in manifest.rows]


def _split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def write_rows(path: str | os.PathLike, manifest: Manifest) -> None:
    """Write a manifest atomically (`wav2vec2.files.atomic_write`): fairseq's format when it
    has one root and whole files, else with the extensions of the module docstring.

    Raises ValueError, before writing anything, for what `read_rows` could not read back:
    a root or file name with a tab or line break, an empty one, a root with surrounding
    spaces, a second root that is not absolute, a negative size or start, a root index
    without its root.
    """
    path = os.fspath(path)
    for i, root in enumerate(manifest.roots):
        # read_rows strips the root lines (and a byte order mark): refuse what it would change.
        if not root or root != root.strip() or root.startswith("\ufeff") or any(c in root for c in "\t\n\r"):
            raise ValueError(f"{path}: root {root!r} is empty, has surrounding spaces or a tab or line break")
        if i and not os.path.isabs(root):
            raise ValueError(f"{path}: root {i} ({root!r}) must be an absolute path")
    lines = [root + "\n" for root in manifest.roots]
    for row in manifest.rows:
        if not row.path or any(c in row.path for c in "\t\n\r"):
            raise ValueError(f"{path}: file name {row.path!r} is empty or contains a tab or line break")
        if row.num_samples < 0 or (row.start is not None and row.start < 0):
            raise ValueError(f"{path}: {row.path!r} has a negative number of samples or start")
        if not 0 <= row.root < len(manifest.roots):
            raise ValueError(f"{path}: {row.path!r} names root {row.root}, of {len(manifest.roots)}")
        extra = ("" if row.start is None else f"\tstart={row.start}") + (f"\troot={row.root}" if row.root else "")
        lines.append(f"{row.path}\t{row.num_samples}{extra}\n")
    atomic_write(path, "".join(lines))


def merge_manifests(paths: list[str | os.PathLike]) -> Manifest:
    """One manifest of the rows of several, in order (pretraining on more than one corpus).

    Roots are pooled: the first manifest's first root stays root 0, and a root that two
    manifests share is one root. Every root is made absolute (relative ones against the
    current directory, as the loader would resolve them), since a later root must be.
    Raises ValueError naming the file for what `read_rows` refuses, and for no paths."""
    if not paths:
        raise ValueError("merge_manifests: no manifests given")
    roots: list[str] = []
    rows: list[Row] = []
    for path in paths:
        manifest = read_rows(path)
        index = {}  # the manifest's root index -> the merged one
        for i, root in enumerate(manifest.roots):
            root = os.path.abspath(root)
            if root not in roots:
                roots.append(root)
            index[i] = roots.index(root)
        rows.extend(Row(r.path, r.num_samples, r.start, index[r.root]) for r in manifest.rows)
    return Manifest(roots, rows)


def write_manifest(path: str | os.PathLike, root: str, entries: list[Entry]) -> None:
    """Write a fairseq manifest (one root, whole files) atomically: `write_rows`' checks."""
    write_rows(path, Manifest([root], [Row(rel, n) for rel, n in entries]))


def find_audio(root: str, exts: list[str], path_must_contain: str | None = None, *,
               progress: bool = False) -> list[str]:
    """Real paths of files under `root` ending in any of `exts`, sorted.

    Uses the same recursive glob as fairseq (case-sensitive, hidden files skipped).
    Sorting makes the train/valid split independent of file-system listing order.
    `progress` counts the files found on a bar (a scan of millions takes minutes).
    """
    paths: set[str] = set()
    for ext in exts:
        pattern = os.path.join(glob.escape(root), "**", "*." + ext.lstrip("."))
        found = glob.iglob(pattern, recursive=True)
        for p in tqdm(found, unit="file", desc=f"scanning {root} for .{ext.lstrip('.')}") if progress else found:
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

    def reasons(self) -> dict[str, int]:
        """Rejected files by reason ("unreadable", "zero samples"...), most frequent first."""
        counts: dict[str, int] = {}
        for _, reason in self.rejected:
            key = reason.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def __str__(self) -> str:
        rates = ", ".join(f"{sr} Hz: {n}" for sr, n in sorted(self.sample_rates.items()))
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons().items())
        return (
            f"{self.num_train + self.num_valid} files ({self.num_train} train, "
            f"{self.num_valid} valid), {self.seconds / 3600:.2f} h, "
            f"{len(self.rejected)} rejected{f' ({why})' if why else ''}; sample rates: {rates or 'none'}"
        )


def build_manifest(
    root: str | list[str],
    dest: str,
    *,
    exts: list[str],
    valid_percent: float = 0.01,
    seed: int = 42,
    path_must_contain: str | None = None,
    num_workers: int = 1,
    progress: bool = False,
) -> ManifestSummary:
    """Scan `root` (one directory, or several: disks of one corpus) and write
    `dest/train.tsv` (+ `valid.tsv` when valid_percent > 0): fairseq's format for one root,
    a manifest with root lines (module docstring) for several.

    Lengths come from each file's header (`soundfile.info`), read by `num_workers`
    processes with a progress bar (`progress`): no file is decoded. As fairseq, a file goes
    to valid when a `random.Random(seed).random()` draw is <= valid_percent; one draw per
    file found (in sorted order, root after root), readable or not, so one bad file does not
    reshuffle the split of the others. Unreadable or empty files are written to
    `dest/rejected.tsv` (path<TAB>reason) and counted by reason in the summary, never
    silently dropped.
    """
    if not 0.0 <= valid_percent <= 1.0:
        raise ValueError(f"valid_percent must be in [0, 1], got {valid_percent}")
    roots = [os.path.realpath(r) for r in ([root] if isinstance(root, str) else root)]
    for r in roots:
        if not os.path.isdir(r):
            raise ValueError(f"root {r!r} is not a directory")
    if len(set(roots)) != len(roots):
        raise ValueError(f"the same root given twice: {roots}")
    started = time.perf_counter()
    found = [(i, p) for i, r in enumerate(roots) for p in find_audio(r, exts, path_must_contain, progress=progress)]
    logger.info("found %d files in %.0f s; reading their headers with %d process(es)", len(found),
                time.perf_counter() - started, num_workers)
    if not found:
        raise ValueError(
            f"no audio under {', '.join(map(repr, roots))} with extension(s) {', '.join(exts)}"
            + (f" whose path contains {path_must_contain!r}" if path_must_contain else "")
        )
    paths = [p for _, p in found]
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
    train: list[Row] = []
    valid: list[Row] = []
    for (root_index, path), (frames, sr, error), is_valid in zip(found, probes, to_valid):
        if error is not None:
            summary.rejected.append((path, error))
            continue
        (valid if is_valid else train).append(Row(os.path.relpath(path, roots[root_index]), frames, root=root_index))
        summary.seconds += frames / sr
        summary.sample_rates[sr] = summary.sample_rates.get(sr, 0) + 1
    summary.num_train, summary.num_valid = len(train), len(valid)

    os.makedirs(dest, exist_ok=True)
    write_rows(os.path.join(dest, "train.tsv"), _used_roots(roots, train))
    if valid_percent > 0:
        write_rows(os.path.join(dest, "valid.tsv"), _used_roots(roots, valid))
    rejected_path = os.path.join(dest, "rejected.tsv")
    if summary.rejected:
        atomic_write(rejected_path, "".join(f"{path}\t{reason}\n" for path, reason in summary.rejected))
        logger.warning("%d unreadable or empty files listed in %s", len(summary.rejected), rejected_path)
    elif os.path.exists(rejected_path):
        os.remove(rejected_path)  # stale report from an earlier run
    if len(summary.sample_rates) > 1:
        logger.warning("mixed sample rates in %s: %s", ", ".join(roots), summary.sample_rates)
    return summary


def _used_roots(roots: list[str], rows: list[Row]) -> Manifest:
    """The manifest of `rows` with only the roots they use, renumbered: a split whose files
    all sit under one root is fairseq's format."""
    used = sorted({r.root for r in rows}) or [0]
    index = {old: new for new, old in enumerate(used)}
    return Manifest([roots[i] for i in used], [Row(r.path, r.num_samples, r.start, index[r.root]) for r in rows])


def _with_progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    return tqdm(it, total=total, unit="file", desc="reading headers", smoothing=0.05)
