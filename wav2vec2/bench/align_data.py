"""Recordings with known boundaries for the alignment benchmark: real prompts, trimmed to their
speech, laid end to end with pauses of known length.

A prompt's speech is where its 10 ms frames are within 35 dB of its loudest (its leading and
trailing silence are cut off), so a prompt's place in the long file is its true start and end.
The pauses between prompts are faint noise (-60 dBFS) of 0.5 to 2 s, drawn with a fixed seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from wav2vec2.data.labels import read_references
from wav2vec2.data.manifest import read_manifest
from wav2vec2.infer.audio import AudioFile

TRIM_DB = 35.0
"""A 10 ms frame is speech when its RMS is within this of the prompt's loudest frame."""
PAUSE_SECONDS = (0.5, 2.0)
NOISE_RMS = 1e-3  # -60 dBFS


@dataclass
class Prompt:
    text: str
    speech: np.ndarray
    """(L,) float32 at the model's rate, leading and trailing silence cut off."""


@dataclass
class Recording:
    wav: np.ndarray
    """(L,) float32."""
    lines: list[str]
    truth: list[tuple[float, float]]
    """Each line's speech (start, end), seconds."""


def load_prompts(manifests: list[str], sample_rate: int) -> list[Prompt]:
    """The utterances of fairseq manifests with their .wrd (or .ltr) transcripts, trimmed."""
    prompts = []
    for manifest in manifests:
        root, entries = read_manifest(manifest)
        texts = read_references(manifest, num_lines=len(entries))
        if texts is None:
            raise ValueError(f"{manifest}: no .wrd or .ltr transcripts beside it")
        for (rel, _), text in zip(entries, texts):
            with AudioFile(os.path.join(root, rel), sample_rate=sample_rate) as audio:
                speech = trim(audio.read().numpy(), sample_rate)
            if len(speech) and text.strip():
                prompts.append(Prompt(text, speech))
    return prompts


def trim(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """`wav` from its first to its last 10 ms frame within TRIM_DB of the loudest."""
    hop = sample_rate // 100
    frames = len(wav) // hop
    if frames == 0:
        return wav[:0]
    rms = np.sqrt((wav[:frames * hop].reshape(frames, hop).astype(np.float64) ** 2).mean(axis=1))  # (frames,)
    loud = np.nonzero(rms >= rms.max() * 10 ** (-TRIM_DB / 20))[0]
    return wav[loud[0] * hop:(loud[-1] + 1) * hop]


def concatenate(prompts: list[Prompt], seconds: float, sample_rate: int, *, seed: int) -> Recording:
    """Prompts drawn in a random order (each once before any repeats) until `seconds` of
    audio, a pause before each and after the last."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    parts, lines, truth, at = [], [], [], 0
    while at < seconds * sample_rate:
        if not order:
            order = list(rng.permutation(len(prompts)))
        pause = _pause(rng, sample_rate)
        prompt = prompts[order.pop()]
        parts += [pause, prompt.speech]
        at += len(pause)
        truth.append((at / sample_rate, (at + len(prompt.speech)) / sample_rate))
        lines.append(prompt.text)
        at += len(prompt.speech)
    parts.append(_pause(rng, sample_rate))
    return Recording(np.concatenate(parts).astype(np.float32), lines, truth)


def _pause(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    return (NOISE_RMS * rng.standard_normal(int(rng.uniform(*PAUSE_SECONDS) * sample_rate))).astype(np.float32)
