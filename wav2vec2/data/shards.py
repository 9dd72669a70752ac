"""Tar shards: a corpus packed into a few large files, read shard by shard, resumable.

Past a million files, one open (and header parse) per utterance on a shared file system
starves the GPUs (NeMo's advice for 10k+ hours: tarred shards, at least one per GPU).
`write_shards` packs a manifest (whole files and segment rows alike) into tar files in the
WebDataset layout (one member `{key}.{ext}` per utterance, so `tar tf` and WebDataset's
readers see an ordinary shard set) plus `index.tsv`, one line per member: shard, key, byte
offset and size of its data, length in samples, and where it came from.

Reading (`ShardedAudioDataset`, `ShardBatchSampler`): the index gives every utterance's
length up front, so an epoch's batches are a pure function of (index, seed, epoch, ranks),
like the file reader's, and the position a checkpoint stores (batches consumed) resumes it
exactly. Per epoch:
1. the shards are put in a random order (seed, epoch) and dealt to ranks round-robin (rank r
   reads only its shards; at least one shard per rank);
2. each rank streams its shards' utterances in that order and cuts the stream into windows of
   `data.shuffle_buffer` utterances, starting at a random offset so window edges move from
   epoch to epoch;
3. in each window, fairseq's token-budget batching (`batch_by_size`, longest first, random
   ties), then the window's batches are shuffled;
4. every rank keeps as many batches as the rank with fewest (a few per epoch are left out,
   different ones each epoch), so ranks stay even.
DataLoader workers take whole batches as with files; a worker keeps the shards it reads open
and reads each utterance at its offset (one seek, no per-file open). Why not the
`webdataset` library: its streaming pipeline reads sequentially into a shuffle buffer and
cannot resume mid-epoch except by re-reading, and it does not know the lengths that the
token budget needs before reading; the layout is what we share with it.

Randomness: per-file shuffling (the file reader) makes every batch a fresh draw from the
whole corpus. Here an utterance's batch-mates come from its window: `shuffle_buffer`
consecutive utterances of a few shards. `write_shards` shuffles the rows once when packing,
so every shard is a random sample of the corpus (no shard is one speaker), and the shard
order and window edges change every epoch; what stays is that batch-mates are drawn from a
window, not from everything (fairseq2's readers bound theirs the same way, with an
`example_shuffle_window`). And reads are not purely sequential, as WebDataset's are: a batch
takes utterances from anywhere in its window, so a worker seeks within the few shards a
window spans (kept open, `max_open_shards`); on a shared file system a seek in an open file
costs far less than the open, stat and header parse of a file per utterance.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tarfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from tqdm import tqdm

from wav2vec2.data.batching import TokenBudgetBatchSampler, batch_by_size
from wav2vec2.data.dataset import BadAudioFile, RawAudioDataset
from wav2vec2.data.manifest import read_rows
from wav2vec2.files import atomic_output, atomic_write

log = logging.getLogger(__name__)

INDEX = "index.tsv"
_HEADER = "# wav2vec2 shards v1: shard, key, data offset, data bytes, samples, source\n"


@dataclass
class ShardIndex:
    """What `index.tsv` says, one entry per utterance, in packing order."""

    directory: str
    shards: list[str]
    shard: np.ndarray
    """(N,) index into `shards`."""
    offset: np.ndarray
    """(N,) byte offset of the member's data in its shard."""
    nbytes: np.ndarray
    num_samples: np.ndarray
    keys: list[str]
    sources: list[str]


def read_index(directory: str | os.PathLike) -> ShardIndex:
    directory = os.fspath(directory)
    path = os.path.join(directory, INDEX)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {INDEX} in {directory}: write the shards with `wav2vec2-shards MANIFEST DIR`")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0] != _HEADER.rstrip("\n"):
        raise ValueError(f"{path}:1: not a wav2vec2 shard index (expected {_HEADER.strip()!r})")
    names: dict[str, int] = {}
    columns: list[list] = [[], [], [], [], [], []]
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 6:
            raise ValueError(f"{path}:{lineno}: expected 6 tab-separated columns, got {line!r}")
        columns[0].append(names.setdefault(fields[0], len(names)))
        columns[1].append(fields[1])
        for c in (2, 3, 4):
            columns[c].append(int(fields[c]))
        columns[5].append(fields[5])
    return ShardIndex(directory, list(names), np.array(columns[0], dtype=np.int64),
                      np.array(columns[2], dtype=np.int64), np.array(columns[3], dtype=np.int64),
                      np.array(columns[4], dtype=np.int64), columns[1], columns[5])


def write_shards(manifest_path: str | os.PathLike | list, dest: str | os.PathLike, *, shard_mb: float = 256.0,
                 seed: int = 0, progress: bool = False) -> ShardIndex:
    """Pack the rows of a manifest (or of several: a list) into `dest/shard-000000.tar`...
    and `dest/index.tsv`.

    Rows are packed in an order shuffled with `seed` (each shard a random sample of the
    corpus); a shard closes once it holds `shard_mb` megabytes. A whole file's bytes are
    copied as they are (FLAC stays FLAC); a segment row is read by seeking and stored as
    16-bit FLAC. Each shard is written under a temporary name and renamed when complete,
    and the index last, so a killed packing leaves no index that names a torn shard.
    """
    dest = os.fspath(dest)
    paths = manifest_path if isinstance(manifest_path, list) else [manifest_path]
    rows = [(m.abspath(row), row) for m in map(read_rows, paths) for row in m.rows]
    os.makedirs(dest, exist_ok=True)
    order = np.random.RandomState(seed).permutation(len(rows))
    lines, num_shards, shard_bytes = [_HEADER], 0, 0
    with contextlib.ExitStack() as shard:  # the open shard: renamed into place when closed
        tar, shard_name = None, ""
        for count, i in enumerate(_progress(order) if progress else order):
            path, row = rows[i]
            data, ext = _member(path, row.start, row.num_samples)
            if tar is None:
                shard_name, num_shards = f"shard-{num_shards:06d}.tar", num_shards + 1
                tar = tarfile.open(shard.enter_context(atomic_output(os.path.join(dest, shard_name))), "w",
                                   format=tarfile.USTAR_FORMAT)
                shard.callback(tar.close)  # runs first: the tar is complete before the rename
            key = f"{count:09d}"
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            data_offset = tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # header, then data
            source = path if row.start is None else f"{path}@{row.start}"
            lines.append(f"{shard_name}\t{key}\t{data_offset}\t{len(data)}\t{row.num_samples}\t{source}\n")
            shard_bytes += len(data)
            if shard_bytes >= shard_mb * 1e6:
                shard.close()
                tar, shard_bytes = None, 0
    atomic_write(os.path.join(dest, INDEX), "".join(lines))
    return read_index(dest)


def _member(path: str, start: int | None, num_samples: int) -> tuple[bytes, str]:
    """(bytes, extension) of one member: a whole file's bytes as they are, or a segment read
    by seeking and encoded as 16-bit FLAC."""
    if start is None:
        with open(path, "rb") as f:
            return f.read(), os.path.splitext(path)[1].lstrip(".").lower() or "audio"
    with sf.SoundFile(path) as f:
        f.seek(start)
        wav, rate = f.read(frames=num_samples, dtype="float32", always_2d=True), f.samplerate  # (L, channels)
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), "flac"


def _progress(it):
    return tqdm(it, unit="file", desc="packing")


class ShardedAudioDataset(RawAudioDataset):
    """The utterances of a shard set (`write_shards`), as `RawAudioDataset` serves a
    manifest's: same items, checks, `bad_files` policy and crops; item i is the index's
    i-th utterance that passes `min_sample_size`. Read with `ShardBatchSampler`."""

    max_open_shards = 64
    """Shards a reader (each DataLoader worker) keeps open, the least recently used closed
    past it. A window's batches draw from every shard the window spans (10,000 utterances of
    ~12 s in 256 MB FLAC shards: about 12), so this must exceed that, or shards are reopened
    batch after batch (at 4, `bench.py shards` measured 99 opens of 5 shards in one epoch)."""

    def __init__(self, directory: str | os.PathLike, *, sample_rate: int = 16000, min_sample_size: int = 0,
                 max_sample_size: int | None = None, normalize: bool = False, bad_files: str = "error") -> None:
        index = read_index(directory)
        keep = np.flatnonzero(index.num_samples >= max(min_sample_size, 1))
        if not len(keep):
            raise ValueError(f"{index.directory}: all {len(index.keys)} utterances are shorter than "
                             f"min_sample_size={min_sample_size}")
        if len(keep) < len(index.keys):
            log.info("%s: left out %d of %d utterances shorter than min_sample_size=%d", index.directory,
                     len(index.keys) - len(keep), len(index.keys), min_sample_size)
        self.index, self.keep = index, keep
        self.bad_files, self.sample_rate, self.normalize = bad_files, sample_rate, normalize
        self.max_sample_size, self.resample, self.pad = max_sample_size, False, False
        self.manifest_path = os.path.join(index.directory, INDEX)
        self.roots = [index.directory]
        self.manifest_sizes = self.lengths = index.num_samples[keep]
        self.sizes = self.lengths if max_sample_size is None else np.minimum(self.lengths, max_sample_size)
        self.shard_of = index.shard[keep]
        """(N,) the shard each item is in: what `ShardBatchSampler` deals to ranks."""
        self.num_opens = self.num_seeks = 0
        """Shard opens and seeks this process has made (the benchmark's counts)."""
        self._open: dict[int, io.BufferedReader] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keep)

    def describe(self, index: int) -> str:
        i = self.keep[index]
        return f"{self.index.shards[self.index.shard[i]]}:{self.index.keys[i]} ({self.index.sources[i]})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # file handles do not travel to DataLoader workers

    def _file(self, shard: int) -> io.BufferedReader:
        if self._pid != os.getpid():
            # A forked DataLoader worker inherits the parent's open shards, whose file
            # position the processes would share: seek and read would race. Its own, then.
            self._open, self._pid = {}, os.getpid()
        f = self._open.pop(shard, None)
        if f is None:
            if len(self._open) >= self.max_open_shards:
                self._open.pop(next(iter(self._open))).close()  # the least recently used
            f = open(os.path.join(self.index.directory, self.index.shards[shard]), "rb")
            self.num_opens += 1
        self._open[shard] = f  # now the most recently used
        return f

    def _read(self, index: int) -> tuple[np.ndarray, int, str]:
        i = self.keep[index]
        try:
            f = self._file(int(self.index.shard[i]))
            f.seek(int(self.index.offset[i]))
            self.num_seeks += 1
            data = f.read(int(self.index.nbytes[i]))
        except OSError as e:
            raise self._bad(index, f"cannot read its shard ({e.strerror or e})") from e
        if len(data) != self.index.nbytes[i]:
            raise self._bad(index, f"shard ends after {len(data)} of the member's {self.index.nbytes[i]} bytes")
        try:
            with sf.SoundFile(io.BytesIO(data)) as audio:
                return audio.read(dtype="float32", always_2d=True), audio.samplerate, audio.subtype  # (L, channels)
        except Exception as e:  # libsndfile errors come as several types
            raise self._bad(index, f"cannot decode ({getattr(e, 'error_string', e)})") from e

    def _replace(self, index: int) -> dict:
        try:
            return super()._replace(index)
        except BadAudioFile as e:
            raise BadAudioFile(f"{e}; are the shards in {self.index.directory} complete?") from None


class ShardBatchSampler(TokenBudgetBatchSampler):
    """Token-budget batches of a `ShardedAudioDataset`, shard by shard (module docstring),
    with the file sampler's dealing, position and resume: batch position p of an epoch is
    rank p % num_replicas's (p // num_replicas)-th batch."""

    def __init__(self, shard_of: np.ndarray, sizes: np.ndarray, *, shuffle_buffer: int, **kwargs) -> None:
        self.shard_of = np.asarray(shard_of)
        self.shards = np.unique(self.shard_of)  # those with an item left after min_sample_size
        self.shuffle_buffer = shuffle_buffer
        num_replicas = kwargs.get("num_replicas", 1)
        if len(self.shards) < num_replicas:
            raise ValueError(f"{len(self.shards)} shards for {num_replicas} ranks: each rank needs at least one; "
                             "pack the corpus into more shards (wav2vec2-shards --shard-mb)")
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        super().__init__(sizes, **kwargs)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        num_shards = int(self.shard_of.max()) + 1
        rng = np.random.RandomState((self.seed + epoch) % 2**32)
        shard_order = rng.permutation(self.shards) if self.shuffle else self.shards
        by_shard = np.argsort(self.shard_of, kind="stable")  # items grouped by shard, packing order within
        starts = np.searchsorted(self.shard_of[by_shard], np.arange(num_shards + 1))
        per_rank = []
        for rank in range(self.num_replicas):
            stream = np.concatenate([by_shard[starts[s]:starts[s + 1]] for s in shard_order[rank::self.num_replicas]])
            rank_rng = np.random.RandomState([self.seed % 2**32, epoch, rank])
            first = int(rank_rng.randint(self.shuffle_buffer)) if self.shuffle else self.shuffle_buffer
            edges = list(range(min(first, len(stream)) or self.shuffle_buffer, len(stream), self.shuffle_buffer))
            batches = []
            for window in np.split(stream, edges):
                ties = rank_rng.permutation(len(window)) if self.shuffle else np.arange(len(window))
                order = window[np.lexsort((ties, self.sizes[window]))[::-1]]  # longest first
                cut = batch_by_size(order, self.sizes, max_tokens=self.max_tokens, max_sentences=self.max_sentences,
                                    required_batch_size_multiple=self.required_batch_size_multiple)
                if self.shuffle:
                    rank_rng.shuffle(cut)
                batches += cut
            per_rank.append(batches)
        even = min(len(b) for b in per_rank)
        dropped = sum(len(b) - even for b in per_rank)
        if dropped and epoch != getattr(self, "_reported", None):
            self._reported = epoch
            log.info("shards, epoch %d: %d batches per rank; %d left over on the fuller ranks are skipped this epoch",
                     epoch, even, dropped)
        batches = [per_rank[rank][k] for k in range(even) for rank in range(self.num_replicas)]
        self._cache = (epoch, batches)
        return batches


def main(argv: list[str] | None = None) -> int:
    """`wav2vec2-shards MANIFEST [MANIFEST ...] DEST`: pack manifests into tar shards for
    `data.train_shards`."""
    parser = argparse.ArgumentParser(prog="wav2vec2-shards", description=main.__doc__)
    parser.add_argument("manifest", nargs="+", help="manifests (fairseq's, or with segments and several roots), "
                                                    "packed together")
    parser.add_argument("dest", help="directory for shard-*.tar and index.tsv")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="megabytes per shard (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the packing order")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    index = write_shards(args.manifest, args.dest, shard_mb=args.shard_mb, seed=args.seed,
                         progress=not args.no_progress and sys.stderr.isatty())
    hours = index.num_samples.sum() / 16000 / 3600
    print(f"{len(index.keys)} utterances ({hours:.2f} h at 16 kHz) in {len(index.shards)} shards in {args.dest}")
    return 0
