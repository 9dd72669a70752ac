"""WER and CER of a fine-tuned CTC checkpoint on a labelled manifest subset.

    python -m wav2vec2.infer.evaluate runs/ft/checkpoint_best.pt --subset test
    python -m wav2vec2.infer.evaluate CKPT --manifest-dir DIR --subset test --hypotheses out.txt
    python -m wav2vec2.infer.evaluate CKPT_A CKPT_B --subset test --json results.json

The model is anything `load_recognizer` reads (this project's CTC checkpoint, a transformers
`Wav2Vec2ForCTC` directory, a fairseq checkpoint with --dictionary); its vocabulary and data
settings come with it. The transcripts are `{subset}.ltr` beside `{subset}.tsv`. Greedy decoding, the
same as validation during fine-tuning, so the numbers compare with the training logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wav2vec2.data import LabelledAudioDataset, TokenBudgetBatchSampler, build_dataloader
from wav2vec2.files import atomic_write
from wav2vec2.infer.decode import error_counts, greedy_ctc, wer_cer
from wav2vec2.infer.recognizer import PRECISIONS, load_recognizer


@dataclass
class Evaluation:
    wer: float
    """Word error rate, percent."""
    cer: float
    """Character error rate, percent (over words joined by single spaces)."""
    utterances: int
    counts: dict[str, int]
    """word_errors, words, char_errors, chars."""
    hypotheses: list[str] = field(default_factory=list)
    """One per manifest entry, in manifest order."""
    references: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_ctc(
    checkpoint: str | Path, *, subset: str = "test", manifest_dir: str | None = None,
    dictionary: str | None = None, max_tokens: int = 3_200_000, device: str = "cpu", precision: str = "fp32",
) -> Evaluation:
    """Decode every utterance of `subset` and score it against its transcript. The model is
    anything `load_recognizer` reads, run in `precision`; `manifest_dir` defaults to the one it
    was fine-tuned on."""
    rec = load_recognizer(checkpoint, dictionary=dictionary, device=device, precision=precision)
    manifest_dir = manifest_dir or rec.manifest_dir
    if manifest_dir is None:
        raise ValueError(f"{checkpoint}: say which manifests to score (--manifest-dir)")
    manifest = Path(manifest_dir) / f"{subset}.tsv"
    if not manifest.is_file():
        subsets = sorted(p.stem for p in Path(manifest_dir).glob("*.tsv") if p.with_suffix(".ltr").is_file())
        raise FileNotFoundError(f"no subset {subset!r} in {manifest_dir} (no {manifest.name}); the labelled subsets "
                                f"there are: {', '.join(subsets) or 'none'} (--subset NAME)")
    dataset = LabelledAudioDataset(
        manifest, labels_path=Path(manifest_dir) / f"{subset}.ltr",
        dictionary=rec.dictionary, sample_rate=rec.sample_rate, normalize=rec.normalize,
    )
    # The BASE encoder's first GroupNorm averages over time, zero padding included, so in a
    # padded batch an utterance's transcript would depend on its neighbours: one at a time.
    alone = rec.model.cfg.feature_encoder.mode == "default"
    sampler = TokenBudgetBatchSampler(dataset.sizes, max_tokens=max(max_tokens, int(dataset.sizes.max())),
                                      max_sentences=1 if alone else None, required_batch_size_multiple=1,
                                      shuffle=False, drop_last=False)
    hyps: dict[int, str] = {}
    for batch in build_dataloader(dataset, sampler, seed=0):
        out = rec(batch["source"], batch.get("padding_mask"))
        for i, ids in zip(batch["id"].tolist(), greedy_ctc(out.logits, out.lengths)):
            hyps[i] = rec.dictionary.words(ids)
    order = sorted(hyps)
    references = [rec.dictionary.words(dataset.labels[i]) for i in order]
    hypotheses = [hyps[i] for i in order]
    counts = error_counts(references, hypotheses)
    wer, cer = wer_cer(counts)
    return Evaluation(wer=wer, cer=cer, utterances=len(order), counts=counts,
                      hypotheses=hypotheses, references=references)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+",
                        help="CTC checkpoints (checkpoint_best.pt of fine-tuning runs); several are compared")
    parser.add_argument("--subset", default="test", help="manifest subset to score (default: test)")
    parser.add_argument("--manifest-dir", default=None, help="default: the one each model was trained on")
    parser.add_argument("--dictionary", default=None, help="dict.ltr.txt of a fairseq checkpoint")
    parser.add_argument("--hypotheses", type=Path, default=None,
                        help="write one hypothesis per line here (one checkpoint only)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: bfloat16 autocast, faster on CPUs with AMX and on GPUs (default: fp32)")
    args = parser.parse_args(argv)
    if args.hypotheses is not None and len(args.checkpoints) > 1:
        parser.error("--hypotheses takes a single checkpoint")
    results = {}
    for path in args.checkpoints:
        try:
            result = evaluate_ctc(path, subset=args.subset, manifest_dir=args.manifest_dir,
                                  dictionary=args.dictionary, precision=args.precision)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        c = result.counts
        print(f"{path}: {args.subset}, {result.utterances} utterances, {c['words']} words: "
              f"WER {result.wer:.2f}% ({c['word_errors']} errors), CER {result.cer:.2f}% ({c['char_errors']} errors)")
        results[str(path)] = {"wer": result.wer, "cer": result.cer, "utterances": result.utterances,
                              "precision": args.precision, **c}
        if args.hypotheses is not None:
            atomic_write(args.hypotheses, "".join(h + "\n" for h in result.hypotheses))
    if args.json is not None:
        atomic_write(args.json, json.dumps({"subset": args.subset, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
