"""Synthetic speech-like corpus for tests, demos and benchmarks.

Each utterance is a glottal-like harmonic source with a wandering pitch, shaped by three
formant resonances that move every syllable, gated by a ~4 Hz syllable envelope with
pauses, plus a little breath noise. Not speech, but with speech's spectral and temporal
structure, so a model has something learnable and codecs compress it realistically.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

# Rough formant ranges (Hz) for F1, F2, F3 of vowels.
_FORMANTS = ((300.0, 800.0), (900.0, 2300.0), (2400.0, 3000.0))


def synth_utterance(num_samples: int, *, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One speech-like signal, float32 in about [-0.9, 0.9]. Shape: (L,)."""
    t = np.arange(num_samples) / sample_rate
    # Pitch: base per speaker-ish draw, slow drift plus vibrato-scale wobble.
    f0_base = rng.uniform(90.0, 240.0)
    f0 = f0_base * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate  # (L,)

    # Syllables: ~4 Hz, each with its own formant targets; some become pauses.
    syllable_len = int(sample_rate / rng.uniform(3.0, 5.0))
    num_syll = num_samples // syllable_len + 1
    voiced = rng.random(num_syll) > 0.15
    formants = np.stack([rng.uniform(lo, hi, num_syll) for lo, hi in _FORMANTS], axis=1)  # (S, 3)
    syll = np.minimum(np.arange(num_samples) // syllable_len, num_syll - 1)  # (L,)
    within = (np.arange(num_samples) % syllable_len) / syllable_len
    envelope = np.sin(np.pi * within) ** 2 * voiced[syll]  # (L,)

    # Harmonics weighted by distance to the syllable's formants (a crude vocal tract).
    num_harmonics = int(min(4000.0, sample_rate / 2 - 100) // f0_base)
    wave = np.zeros(num_samples)
    for k in range(1, num_harmonics + 1):
        freq = k * f0  # (L,)
        gain = sum(np.exp(-(((freq - formants[syll, j]) / (80.0 + 40 * j)) ** 2)) for j in range(3))
        wave += (gain + 0.02) / k**0.5 * np.sin(k * phase)
    wave *= envelope
    wave += 0.01 * rng.standard_normal(num_samples) * (0.3 + envelope)
    peak = np.abs(wave).max()
    return (wave * (rng.uniform(0.3, 0.9) / max(peak, 1e-8))).astype(np.float32)


def write_synthetic_corpus(
    root: str | os.PathLike,
    *,
    num_files: int,
    min_seconds: float = 1.0,
    max_seconds: float = 4.0,
    sample_rate: int = 16000,
    ext: str = "flac",
    num_speakers: int = 3,
    seed: int = 0,
) -> list[tuple[str, int]]:
    """Write `num_files` utterances under root/spk{k}/utt{i}.{ext}; returns (relpath, num_samples).

    Lengths are uniform in [min_seconds, max_seconds] and deliberately not round numbers.
    """
    rng = np.random.default_rng(seed)
    written = []
    for i in range(num_files):
        num_samples = int(rng.uniform(min_seconds, max_seconds) * sample_rate)
        rel = os.path.join(f"spk{i % num_speakers}", f"utt{i:05d}.{ext.lstrip('.')}")
        path = os.path.join(os.fspath(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        wav = synth_utterance(num_samples, sample_rate=sample_rate, rng=rng)
        sf.write(path, wav, sample_rate, subtype="PCM_16")
        written.append((rel, num_samples))
    return written
