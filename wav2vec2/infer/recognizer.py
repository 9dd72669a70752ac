"""A speech recogniser from any CTC model this project can read: its own fine-tuning
checkpoints, a transformers `Wav2Vec2ForCTC` directory, a fairseq `Wav2VecCtc` checkpoint.

Everything downstream (transcription, scoring, export) takes a `Recognizer`: the model in
eval mode, its vocabulary, and how it wants its audio (sample rate, normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from wav2vec2.files import load_checkpoint
from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import BLANK, Dictionary
from wav2vec2.model.ctc import CtcOutput, Wav2Vec2Ctc


@dataclass
class Recognizer:
    model: Wav2Vec2Ctc
    """In eval mode, on its device."""
    dictionary: Dictionary
    """Output index i is `dictionary.symbols[i]`; index 0 is the CTC blank."""
    normalize: bool
    """Zero-mean unit-variance each file's waveform first (what the model was trained on)."""
    sample_rate: int = 16000
    source: str = ""
    """Where it came from, for messages."""
    manifest_dir: str | None = None
    """The manifests it was fine-tuned on (this project's checkpoints), else None."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, source: Tensor, padding_mask: Tensor | None = None) -> CtcOutput:
        """Shape: source (B, L) at `sample_rate`, already normalised if `normalize` -> logits (B, T, V)."""
        return self.model(source.to(self.device), None if padding_mask is None else padding_mask.to(self.device))


def build_recognizer(cfg: ModelConfig, state_dict: dict[str, Tensor], dictionary: Dictionary, *, normalize: bool,
                     sample_rate: int = 16000, source: str = "", device: str | torch.device = "cpu") -> Recognizer:
    """A Recognizer from our config and `Wav2Vec2Ctc` state dict (the importers' common end)."""
    num_outputs = state_dict["proj.weight"].shape[0]
    if num_outputs != len(dictionary):
        raise ValueError(f"{source}: the model has {num_outputs} outputs but the dictionary {len(dictionary)} "
                         "symbols: not the dictionary it was trained with")
    model = Wav2Vec2Ctc(cfg, vocab_size=num_outputs, blank=BLANK)
    model.load_state_dict(state_dict, strict=True)
    return Recognizer(model.to(device).eval(), dictionary, normalize, sample_rate, source)


def load_recognizer(path: str | Path, *, dictionary: str | Path | None = None,
                    device: str | torch.device = "cpu") -> Recognizer:
    """The CTC model at `path`:

    - a fine-tuning checkpoint of this project (`checkpoint_best.pt`): its vocabulary and
      data settings travel with it;
    - a local transformers `Wav2Vec2ForCTC` directory (with the tokenizer's `vocab.json`);
    - a fairseq `Wav2VecCtc` checkpoint, with `dictionary` its `dict.ltr.txt`.

    Nothing is downloaded, and no file can run code when loaded.
    """
    path = Path(path)
    if path.is_dir():
        from wav2vec2.interop.hf import load_hf_ctc

        return load_hf_ctc(path, device=device)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: give a checkpoint file or a transformers directory")
    from wav2vec2.interop.fairseq import FAIRSEQ_SAFE_TYPES, is_fairseq_checkpoint, load_fairseq_ctc

    state = load_checkpoint(path, allow=FAIRSEQ_SAFE_TYPES)  # ours, or fairseq's (argparse / omegaconf configs)
    if is_fairseq_checkpoint(state):
        if dictionary is None:
            raise ValueError(f"{path} is a fairseq checkpoint: its letters are in a separate dict.ltr.txt; "
                             "pass it (--dictionary)")
        return load_fairseq_ctc(path, dictionary=dictionary, state=state, device=device)
    return _from_our_checkpoint(path, state, device=device)


def _from_our_checkpoint(path: Path, state: dict, *, device: str | torch.device) -> Recognizer:
    if state.get("task") != "ctc":
        raise ValueError(f"{path} is a {state.get('task', 'pretrain')!r} checkpoint of this project, not a CTC "
                         "one: fine-tune it first (configs/ctc_*.yaml, task.init=...)")
    from wav2vec2.tasks import config_from_dict

    cfg = config_from_dict(state["config"])
    dictionary = Dictionary.from_symbols(state["task_state"]["dictionary"])
    recognizer = build_recognizer(cfg.model, state["model"], dictionary, normalize=cfg.data.normalize,
                                  sample_rate=cfg.data.sample_rate, source=str(path), device=device)
    recognizer.manifest_dir = cfg.data.manifest_dir
    return recognizer
