#!/usr/bin/env python
"""Convert a wav2vec 2.0 model for fairseq or transformers users.

examples:
  # this project's fine-tuned model -> a directory transformers' pipeline() loads
  python scripts/convert.py runs/ft/checkpoint_best.pt --to hf exported/
  # this project's pretraining checkpoint -> a fairseq checkpoint (fairseq's wav2vec2 model)
  python scripts/convert.py runs/pretrain/checkpoint_best.pt --to fairseq wav2vec_ours.pt
  # a fairseq fine-tuned model and its dictionary -> transformers
  python scripts/convert.py wav2vec_small_10m.pt --dictionary dict.ltr.txt --to hf w2v_10m/
  # a transformers Wav2Vec2ForCTC directory -> fairseq (writes dict.ltr.txt beside it)
  python scripts/convert.py w2v_10m/ --to fairseq back/wav2vec_ctc.pt

The source is this project's checkpoint, a fairseq checkpoint or a transformers directory
(the one loader, `wav2vec2/interop/load.py`); every tool of this project reads all three as
they are. Writing transformers directories needs transformers: pip install -e '.[hf]'.
A CTC model stays a CTC model; a pretraining model keeps its quantizer and projections.
The result is loaded back and its outputs compared with the source's before this exits 0.
"""

from __future__ import annotations

import argparse
import sys

import torch

from wav2vec2.interop.load import TARGETS, convert, load_model


def _check(source, written, to: str, dictionary) -> str:
    """Read the written model back through the loader and compare outputs on 2 s of noise:
    CTC logits, or the encoder's output for pretraining models."""
    before = load_model(source, dictionary=dictionary).build()
    after = load_model(written, dictionary=written.parent / "dict.ltr.txt" if to == "fairseq" else None).build()
    wav = torch.randn(1, 32000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if hasattr(before, "proj"):  # a Wav2Vec2Ctc
            a, b = before(wav).logits, after(wav).logits
        else:
            a, b = before.encode(wav).x, after.encode(wav).x
    difference = (a - b).abs().max().item()
    if difference > 1e-4:
        raise RuntimeError(f"{written} computes differently from {source}: max |difference| {difference:.2e}")
    return f"outputs equal the source's within {difference:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a checkpoint of this project or fairseq, or a transformers directory")
    parser.add_argument("out", help="fairseq: the checkpoint file to write; hf: the directory")
    parser.add_argument("--to", choices=TARGETS, required=True)
    parser.add_argument("--dictionary", help="dict.ltr.txt of a fairseq CTC checkpoint")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the model expects standardised audio, if the source does not say")
    args = parser.parse_args(argv)
    try:
        written = convert(args.source, args.out, to=args.to, dictionary=args.dictionary, normalize=args.normalize)
        verdict = _check(args.source, written, args.to, args.dictionary)
    except (OSError, ValueError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {written}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
