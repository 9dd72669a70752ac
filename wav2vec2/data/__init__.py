"""Data pipeline: fairseq TSV manifests, raw-audio datasets (with transcripts for CTC),
token-budget batching, the resumable batch stream."""

from wav2vec2.data.batching import (
    STREAM_CROP,
    STREAM_LAYERDROP,
    STREAM_TRAIN,
    STREAM_VALID,
    TokenBudgetBatchSampler,
    batch_by_size,
    batch_seed,
)
from wav2vec2.data.dataset import (
    ClassLabelledAudioDataset,
    Collater,
    LabelledAudioDataset,
    RawAudioDataset,
    crop_to_shortest,
    pad_to_longest,
)
from wav2vec2.data.labels import Dictionary, read_label_file
from wav2vec2.data.loader import BatchStream, Update, build_dataloader, make_batch_sampler, updates_per_epoch
from wav2vec2.data.manifest import (
    Manifest,
    ManifestSummary,
    Row,
    build_manifest,
    find_audio,
    merge_manifests,
    read_manifest,
    read_rows,
    write_manifest,
    write_rows,
)
from wav2vec2.data.shards import ShardBatchSampler, ShardedAudioDataset, read_index, write_shards
from wav2vec2.data.synthetic import synth_utterance, write_synthetic_corpus

__all__ = [
    "STREAM_CROP",
    "STREAM_LAYERDROP",
    "STREAM_TRAIN",
    "STREAM_VALID",
    "BatchStream",
    "ClassLabelledAudioDataset",
    "Collater",
    "Dictionary",
    "LabelledAudioDataset",
    "Manifest",
    "ManifestSummary",
    "RawAudioDataset",
    "ShardBatchSampler",
    "ShardedAudioDataset",
    "Row",
    "TokenBudgetBatchSampler",
    "Update",
    "batch_by_size",
    "batch_seed",
    "build_dataloader",
    "build_manifest",
    "make_batch_sampler",
    "crop_to_shortest",
    "find_audio",
    "pad_to_longest",
    "read_label_file",
    "read_index",
    "merge_manifests",
    "read_manifest",
    "read_rows",
    "synth_utterance",
    "updates_per_epoch",
    "write_manifest",
    "write_rows",
    "write_shards",
    "write_synthetic_corpus",
]
