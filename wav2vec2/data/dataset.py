"""Raw-audio dataset over a manifest (fairseq's, or with segments and several roots), and the
two collations.

Shapes: B batch, L waveform samples.

Follows fairseq's `FileAudioDataset`: float32 via soundfile, multi-channel averaged to
mono, whole-item normalisation before any crop, `min_sample_size` filtering at load. A
segment row (`manifest.Row.start`) is read by seeking to its start, not by decoding the
whole file, where the format allows it (WAV, FLAC, OGG... through libsndfile).
Stricter than fairseq: a file whose length differs from its manifest entry (truncated
or replaced since the manifest was written) is an error naming the file, as are missing,
unreadable, empty, wrong-rate and NaN/inf files; `bad_files="skip"` replaces such items
instead (see `RawAudioDataset`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from wav2vec2.data.labels import PAD, Dictionary, class_indices, collate_targets, read_class_labels, read_label_file
from wav2vec2.data.manifest import read_rows

logger = logging.getLogger(__name__)

BAD_FILE_POLICIES = ("error", "skip")
# Replacements tried for one bad item before giving up: that many bad candidates in a row
# means something systemic (a missing directory, an unmounted disk), not bad luck.
MAX_REPLACEMENT_TRIES = 100
# A replacement is looked for among this many entries after the bad one: enough to find
# one of about the same length, and cheap to sort in a manifest of millions.
REPLACEMENT_WINDOW = 10_000


class BadAudioFile(ValueError):
    """An unusable audio file. `str()` names the file and manifest line; `reason` is the
    short why (what `batch["bad_files"]` reports)."""

    # Callable with the message alone: that is how a DataLoader worker's error is re-raised.
    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class MissingAudioFile(BadAudioFile, FileNotFoundError):
    pass


class RawAudioDataset(torch.utils.data.Dataset):
    """Audio files listed in a fairseq manifest.

    Args:
        manifest_path: TSV manifest (root line, then `relpath<TAB>num_samples`).
        sample_rate: expected rate; a file at another rate is an error naming it,
            unless `resample` is set.
        min_sample_size: entries shorter than this are dropped at load (count logged);
            entries of 0 samples are always dropped.
        max_sample_size: crop cap applied by the collaters; also caps `.sizes` when
            `pad` is False (as fairseq), since those items are cropped to it anyway.
        normalize: zero mean, unit variance over the whole file (layer norm, eps 1e-5).
        resample: resample other rates with soxr. Reads every file's header at init to
            convert manifest lengths to `sample_rate`, so batching sees true sizes.
        pad: fine-tuning mode (padding collation); only changes `.sizes`.
        bad_files: what a missing, unreadable, empty, truncated, wrong-rate or NaN/inf
            file does when read. "error" raises `BadAudioFile` naming it and its manifest
            line. "skip" returns a replacement (see `_replace`) whose item carries
            "bad_file": "path (manifest:line): reason", which `Collater` gathers into
            `batch["bad_files"]`.
    """

    def __init__(
        self,
        manifest_path: str | os.PathLike,
        *,
        sample_rate: int = 16000,
        min_sample_size: int = 0,
        max_sample_size: int | None = None,
        normalize: bool = False,
        resample: bool = False,
        pad: bool = False,
        bad_files: str = "error",
    ) -> None:
        if bad_files not in BAD_FILE_POLICIES:
            raise ValueError(f"bad_files must be one of {BAD_FILE_POLICIES}, got {bad_files!r}")
        self.bad_files = bad_files
        self.manifest_path = os.fspath(manifest_path)
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size
        self.normalize = normalize
        self.resample = resample
        self.pad = pad

        manifest = read_rows(self.manifest_path)
        entries = [(row.path, row.num_samples) for row in manifest.rows]
        if not entries:
            raise ValueError(
                f"{self.manifest_path}: manifest lists no files (only the root line); "
                "check --ext and the root directory used to build it"
            )
        self.roots = manifest.roots
        self.root = manifest.roots[0]
        min_keep = max(min_sample_size, 1)
        # Keep the manifest line of each item so errors can point at it (+2: 1-based, root line).
        keep = [i for i, (_, n) in enumerate(entries) if n >= min_keep]
        num_dropped = len(entries) - len(keep)
        limit = (f"min_sample_size={min_sample_size} samples ({min_sample_size / sample_rate:.2f} s at "
                 f"{sample_rate} Hz; data.min_sample_size in a training config)")
        if num_dropped:
            dropped_sec = sum(n for _, n in entries) - sum(entries[i][1] for i in keep)
            # fairseq drops them the same way; most of a corpus going is usually a wrong setting.
            level = logging.WARNING if num_dropped * 2 > len(entries) else logging.INFO
            logger.log(
                level, "%s: left out %d of %d files (%.1f min of audio) shorter than %s; lower it to keep them",
                self.manifest_path, num_dropped, len(entries), dropped_sec / sample_rate / 60, limit,
            )
        if not keep:
            raise ValueError(f"{self.manifest_path}: all {len(entries)} files are shorter than {limit}")
        self.paths = [entries[i][0] for i in keep]
        self.root_index = np.array([manifest.rows[i].root for i in keep], dtype=np.int32)
        self.starts = np.array([-1 if manifest.rows[i].start is None else manifest.rows[i].start for i in keep],
                               dtype=np.int64)
        """First sample of each segment row in its file; -1 for a whole file."""
        self.lines = np.asarray(keep, dtype=np.int64) + 2
        self.manifest_sizes = np.array([entries[i][1] for i in keep], dtype=np.int64)
        self.num_dropped = num_dropped

        self.lengths = self.manifest_sizes.copy()  # in samples at `sample_rate`
        if resample:
            rates = np.array([sf.info(self._abspath(i)).samplerate for i in range(len(self))])
            self.lengths = np.ceil(self.manifest_sizes * sample_rate / rates).astype(np.int64)
        # What batching counts: the collater crops to max_sample_size unless padding.
        if max_sample_size is not None and not pad:
            self.sizes = np.minimum(self.lengths, max_sample_size)
        else:
            self.sizes = self.lengths

    def __len__(self) -> int:
        return len(self.paths)

    def _abspath(self, index: int) -> str:
        return os.path.join(self.roots[self.root_index[index]], self.paths[index])

    def describe(self, index: int) -> str:
        """The item's file and manifest line, for messages."""
        return f"{self._abspath(index)} ({self.manifest_path}:{self.lines[index]})"

    def __getitem__(self, index: int) -> dict:
        try:
            return self._load(index)
        except BadAudioFile as e:
            if self.bad_files == "error":
                e.add_note("(in a training config, data.bad_files=skip replaces bad files instead)")
                raise
            item = self._replace(index)
            item["bad_file"] = f"{self.describe(index)}: {e.reason}"
            return item

    def _replace(self, index: int) -> dict:
        """A good item from the entries after `index` (wrapping around) that leaves the
        batch's shape as it was: the first at least as long when cropping (pretraining
        crops the batch to its shortest), at most as long when padding (so the token
        budget holds); failing that, the nearest in length. Depends only on the manifest
        and the files, so every rank and a resumed run pick the same.
        """
        after = (index + np.arange(1, min(len(self), REPLACEMENT_WINDOW + 1))) % len(self)
        grow = self.sizes[after] - self.sizes[index]
        misfit = np.maximum(grow, 0) if self.pad else np.maximum(-grow, 0)
        candidates = after[np.argsort(misfit, kind="stable")[:MAX_REPLACEMENT_TRIES]]  # ties: manifest order
        for j in candidates:
            try:
                return self._load(int(j))
            except BadAudioFile:
                continue  # reported when its own turn comes, not here
        raise BadAudioFile(
            f"data.bad_files=skip: {self.describe(index)} is bad, and so are the {len(candidates)} "
            f"files tried in its place; is the corpus (roots {', '.join(self.roots)}) readable?"
        )

    def _bad(self, index: int, reason: str, hint: str = "", *, cls: type = BadAudioFile) -> BadAudioFile:
        return cls(f"{self.describe(index)}: {reason}{hint}", reason)

    def _load(self, index: int) -> dict:
        return self._checked(index, *self._read(index))

    def _read(self, index: int) -> tuple[np.ndarray, int, str]:
        """The item's samples as stored, (L, channels) float32, with the sample rate and the
        libsndfile subtype; raises `BadAudioFile`. A segment row seeks to its start."""
        path = self._abspath(index)
        if not os.path.isfile(path):
            raise self._bad(index, "audio file not found", cls=MissingAudioFile)
        if os.path.getsize(path) == 0:
            raise self._bad(index, "empty file (0 bytes)")
        start, wanted = int(self.starts[index]), int(self.manifest_sizes[index])
        try:
            with sf.SoundFile(path) as f:
                if start >= 0 and start + wanted > f.frames:
                    raise self._bad(index, f"segment [{start}, {start + wanted}) ends past the file's {f.frames} "
                                           "samples", "; rebuild the manifest")
                if start >= 0:
                    f.seek(start)
                wav = f.read(frames=wanted if start >= 0 else -1, dtype="float32", always_2d=True)  # (L, channels)
                return wav, f.samplerate, f.subtype
        except BadAudioFile:
            raise
        except Exception as e:  # libsndfile errors come as several types
            # libsndfile's own words, without the path we already name
            raise self._bad(index, f"cannot read audio ({getattr(e, 'error_string', e)})") from e

    def _checked(self, index: int, wav: np.ndarray, sr: int, subtype: str) -> dict:
        """The item from what `_read` returned, after the checks every reader shares: length,
        finite samples, sample rate; mono, resampled and normalised as configured."""
        wanted = int(self.manifest_sizes[index])
        if len(wav) == 0:
            raise self._bad(index, "empty (0 samples)")
        if len(wav) != wanted:
            raise self._bad(index, f"file has {len(wav)} samples, manifest says {self.manifest_sizes[index]} "
                                   "(truncated or changed)", "; rebuild the manifest")
        # Only float files can hold NaN/inf, and one such sample poisons the whole run.
        if subtype in ("FLOAT", "DOUBLE") and not np.isfinite(wav).all():
            raise self._bad(index, "non-finite samples (NaN or inf)")
        wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]  # (L,)
        if sr != self.sample_rate:
            if not self.resample:
                raise self._bad(index, f"sample rate {sr} Hz, expected {self.sample_rate} Hz",
                                " (resample the corpus, or set resample=True)")
            import soxr

            wav = soxr.resample(wav, sr, self.sample_rate, quality="HQ").astype(np.float32)
        source = torch.from_numpy(np.ascontiguousarray(wav))
        if self.normalize:
            source = F.layer_norm(source, source.shape)  # whole file, eps 1e-5, as fairseq
        return {"id": index, "source": source}


class LabelledAudioDataset(RawAudioDataset):
    """Audio with its transcript (fairseq `AddTargetDataset`): items gain "target", the
    label ids of the manifest entry's line in `labels_path` (`{subset}.ltr`).

    Always padding collation (a crop would cut audio away from its letters), so the size
    used for batching is the whole utterance. Label problems (line count, unknown symbols,
    empty transcripts) are errors naming the file and line; see `labels.read_label_file`.
    """

    def __init__(
        self, manifest_path: str | os.PathLike, *, labels_path: str | os.PathLike, dictionary: Dictionary,
        **kwargs,
    ) -> None:
        super().__init__(manifest_path, pad=True, max_sample_size=None, **kwargs)
        self.labels_path = os.fspath(labels_path)
        self.dictionary = dictionary
        if not os.path.isfile(self.labels_path):
            raise FileNotFoundError(f"no transcripts for {self.manifest_path}: {self.labels_path} is missing")
        num_entries = len(self) + self.num_dropped
        labels = read_label_file(self.labels_path, dictionary=dictionary, num_lines=num_entries)
        self.labels = [labels[line - 2] for line in self.lines]  # manifest line 2 is entry 0

    def _load(self, index: int) -> dict:
        item = super()._load(index)  # so that a replacement item carries its own transcript
        item["target"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item


class ClassLabelledAudioDataset(RawAudioDataset):
    """Audio with its class: items gain "target", a (1,) long tensor holding the index in
    `classes` of the entry's line in `labels_path` (`{subset}.lbl`), so batches carry
    "target" (B, 1). Padding collation (pooling must see every frame); label problems
    (line count, empty line, unknown class) are errors naming the file and line."""

    def __init__(self, manifest_path: str | os.PathLike, *, labels_path: str | os.PathLike, classes: list[str],
                 **kwargs) -> None:
        super().__init__(manifest_path, pad=True, max_sample_size=None, **kwargs)
        self.labels_path = os.fspath(labels_path)
        if not os.path.isfile(self.labels_path):
            raise FileNotFoundError(f"no class labels for {self.manifest_path}: {self.labels_path} is missing")
        labels = read_class_labels(self.labels_path, num_lines=len(self) + self.num_dropped)
        indices = class_indices(labels, classes, path=self.labels_path)
        self.labels = [indices[line - 2] for line in self.lines]  # manifest line 2 is entry 0

    def _load(self, index: int) -> dict:
        item = super()._load(index)
        item["target"] = torch.tensor([self.labels[index]], dtype=torch.long)
        return item


def _crop_starts(lens: list[int], target: int, generator: torch.Generator) -> list[int]:
    """Uniform start in [0, len - target] for each item longer than target, else 0."""
    starts = []
    for n in lens:
        diff = n - target
        starts.append(int(torch.randint(0, diff + 1, (), generator=generator)) if diff > 0 else 0)
    return starts


def _new_batch(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """Uninitialised batch tensor and its numpy view.

    In a DataLoader worker the tensor is allocated in shared memory, so handing it to the
    main process costs no extra copy (as torch's default_collate does). Copies go through
    numpy: torch's multi-threaded copy of a few MB was 50x slower on a busy 2-core box.
    """
    tensor = torch.empty(shape, dtype=dtype)
    if torch.utils.data.get_worker_info() is not None:
        tensor.share_memory_()
    return tensor, tensor.numpy()


def crop_to_shortest(
    items: list[dict], *, max_sample_size: int | None, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Crop every item to the batch's shortest (capped at max_sample_size); no padding.

    Shape: source (B, L) with L = min(shortest item, max_sample_size); id (B,).
    """
    if not items:
        raise ValueError("crop_to_shortest: empty batch")
    lens = [len(it["source"]) for it in items]
    target = min(lens) if max_sample_size is None else min(min(lens), max_sample_size)
    starts = _crop_starts(lens, target, generator)
    source, out = _new_batch((len(items), target), torch.float32)
    for b, (it, s) in enumerate(zip(items, starts)):
        out[b] = it["source"].numpy()[s : s + target]
    ids = torch.tensor([it["id"] for it in items], dtype=torch.long)
    return {"id": ids, "source": source}


def pad_to_longest(
    items: list[dict], *, max_sample_size: int | None, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Right zero-pad to the batch's longest (capped; longer items randomly cropped).

    `padding_mask` is only there when some item is padded: the model then behaves as
    fairseq's does after its `padding_mask.any()` test, without a device round trip.

    Shape: source (B, L), padding_mask (B, L) bool with True = padding, id (B,).
    """
    if not items:
        raise ValueError("pad_to_longest: empty batch")
    lens = [len(it["source"]) for it in items]
    target = max(lens) if max_sample_size is None else min(max(lens), max_sample_size)
    starts = _crop_starts(lens, target, generator)
    source, out = _new_batch((len(items), target), torch.float32)
    padding_mask, mask = _new_batch((len(items), target), torch.bool)
    for b, (it, s) in enumerate(zip(items, starts)):
        n = min(lens[b], target)
        out[b, :n] = it["source"].numpy()[s : s + n]
        out[b, n:] = 0.0
        mask[b, :n] = False
        mask[b, n:] = True
    ids = torch.tensor([it["id"] for it in items], dtype=torch.long)
    if min(lens) >= target:
        return {"id": ids, "source": source}
    return {"id": ids, "source": source, "padding_mask": padding_mask}


class Collater:
    """Picklable collate for DataLoader workers: `collater(items, crop_seed=...)`.

    `pad=False` crops every utterance to the batch's shortest (`crop_to_shortest`: what
    pretraining does, no padding), `pad=True` pads to the longest (`pad_to_longest`: what
    fine-tuning needs, every sample kept). Items that
    replaced a bad file (`RawAudioDataset(bad_files="skip")`) add `batch["bad_files"]`,
    one "path (manifest:line): reason" string each.
    """

    def __init__(self, *, pad: bool, max_sample_size: int | None) -> None:
        self.pad = pad
        self.max_sample_size = max_sample_size

    def __call__(self, items: list[dict], *, crop_seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(crop_seed)
        collate = pad_to_longest if self.pad else crop_to_shortest
        batch = collate(items, max_sample_size=self.max_sample_size, generator=generator)
        if "target" in items[0]:
            # target (B, S) padded with <pad>, target_lengths (B,)
            batch["target"], batch["target_lengths"] = collate_targets([it["target"] for it in items],
                                                                       pad_index=PAD)
        bad_files = [it["bad_file"] for it in items if "bad_file" in it]
        if bad_files:  # only then: clean batches stay exactly as they were
            batch["bad_files"] = bad_files
        return batch
