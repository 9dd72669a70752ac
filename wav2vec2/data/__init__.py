"""Data pipeline: fairseq TSV manifests, raw-audio dataset, token-budget batching."""

from wav2vec2.data.batching import TokenBudgetBatchSampler, batch_by_size
from wav2vec2.data.dataset import (
    Collater,
    RawAudioDataset,
    collate_finetune,
    collate_pretrain,
    crop_seed,
)
from wav2vec2.data.loader import build_dataloader
from wav2vec2.data.manifest import (
    ManifestSummary,
    build_manifest,
    find_audio,
    read_manifest,
    write_manifest,
)
from wav2vec2.data.synthetic import synth_utterance, write_synthetic_corpus

__all__ = [
    "Collater",
    "ManifestSummary",
    "RawAudioDataset",
    "TokenBudgetBatchSampler",
    "batch_by_size",
    "build_dataloader",
    "build_manifest",
    "collate_finetune",
    "collate_pretrain",
    "crop_seed",
    "find_audio",
    "read_manifest",
    "synth_utterance",
    "write_manifest",
    "write_synthetic_corpus",
]
