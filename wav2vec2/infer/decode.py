"""CTC decoding: the best path (greedy), a beam search with or without a KenLM language model,
the words of a decoded path with their frame spans, and WER/CER counting.

Greedy decoding follows fairseq's `Wav2VecCtc` validation: the CTC blank is vocabulary index
0, targets are letters with `|` as the word boundary, the best path is argmax per frame with
repeats collapsed and blanks dropped, and WER/CER are logged in percent.

Error counts are plain sums (edits and reference lengths), never rates, so counts from many
batches and ranks can be added (e.g. all-reduced) before `wer_cer` divides once.

Shapes: B batch, T frames, V vocabulary entries (blank included).
"""

from __future__ import annotations

import os
from pathlib import Path

import jiwer
import torch
from torch import Tensor

from wav2vec2.data.labels import BLANK, EOS, PAD, WORD_BOUNDARY, Dictionary

_LM_SPECIALS = ("<s>", "</s>", "<unk>")  # KenLM's


def greedy_ctc(logits: Tensor, lengths: Tensor | None = None, *, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, then drop blanks.

    The order matters: a blank between two equal labels keeps both ([1, 1, 0, 1] -> [1, 1]).
    Everything runs on the logits' device and the batch crosses to the host in one `.cpu()`.

    Shape: logits (B, T, V) float, or already-argmaxed ids (B, T) integer.
    Shape: lengths (B,) valid frames per utterance; None means all T.
    Shape: returns B lists of label ids (no blanks), of varying length.
    """
    if logits.dim() == 3:
        ids = logits.argmax(dim=-1)  # (B, T, V) -> (B, T)
    elif logits.dim() == 2 and not logits.is_floating_point():
        ids = logits  # (B, T)
    else:
        raise ValueError(
            f"logits must be (B, T, V) scores or (B, T) integer ids, "
            f"got shape {tuple(logits.shape)} dtype {logits.dtype}"
        )
    T = ids.shape[1]

    # A frame is emitted when it differs from the previous frame (repeat collapse) and is not
    # blank. Frame 0 has no predecessor, so it always passes the collapse test.
    differs = torch.ones_like(ids, dtype=torch.bool)  # (B, T)
    differs[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = differs & (ids != blank)  # (B, T)
    if lengths is not None:
        # Frames past an utterance's end are padding. Dropping them after the collapse test
        # is safe: a frame's decision depends only on itself and the frame before it.
        frames = torch.arange(T, device=ids.device)  # (T,)
        keep &= frames[None, :] < lengths.to(ids.device)[:, None]  # (B, T)

    # -1 is never a vocabulary index, so it marks dropped frames; one transfer for the batch
    # instead of a device sync per utterance.
    marked = ids.masked_fill(~keep, -1).cpu().tolist()  # B lists of T ints
    return [[i for i in row if i >= 0] for row in marked]


def _words(text: str) -> list[str]:
    # Split on any whitespace run. jiwer's default transforms split on " " only (a tab
    # stays inside a word) and, for characters, keep doubled spaces, so we normalize first.
    return text.split()


def error_counts(references: list[str], hypotheses: list[str]) -> dict[str, int]:
    """Word and character edit distances (Levenshtein, via jiwer), summed over the pairs.

    Returns {"word_errors", "words", "char_errors", "chars"}: errors are substitutions +
    deletions + insertions, words/chars the reference lengths. They add across batches and
    ranks; `wer_cer` turns the sums into percentages.

    Text is first normalized to its words joined by single spaces (leading, trailing and
    repeated whitespace dropped). Characters are counted over that string, so the single
    space between two words is a character (it plays the role of fairseq's `|`), but there is
    no trailing boundary. fairseq counts CER over target token ids including the final `|`,
    so its CER can differ slightly from ours.

    An empty (or whitespace-only) hypothesis is allowed: every reference word and character
    is a deletion. An empty reference raises ValueError (its error rate is undefined).
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references and hypotheses must pair up, got {len(references)} references "
            f"and {len(hypotheses)} hypotheses"
        )
    counts = {"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}
    pair_refs: list[str] = []
    pair_hyps: list[str] = []
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref_words, hyp_words = _words(ref), _words(hyp)
        if not ref_words:
            # jiwer 3.x raised here but 4.0 accepts an empty reference silently (scoring
            # only insertions), so we check ourselves: its rate has no denominator.
            raise ValueError(f"references[{i}] is empty: {ref!r}")
        ref_text = " ".join(ref_words)
        counts["words"] += len(ref_words)
        counts["chars"] += len(ref_text)
        if not hyp_words:
            # Handled here rather than in jiwer, whose treatment of empty strings has changed
            # between releases; no alignment is needed: everything is deleted.
            counts["word_errors"] += len(ref_words)
            counts["char_errors"] += len(ref_text)
            continue
        pair_refs.append(ref_text)
        pair_hyps.append(" ".join(hyp_words))

    if pair_refs:
        # One call per level over all pairs: jiwer aligns each pair separately and sums the
        # edit operations, which is exactly the per-pair sum we want.
        words = jiwer.process_words(pair_refs, pair_hyps)
        chars = jiwer.process_characters(pair_refs, pair_hyps)
        counts["word_errors"] += words.substitutions + words.deletions + words.insertions
        counts["char_errors"] += chars.substitutions + chars.deletions + chars.insertions
        # hits + S + D is the reference length jiwer aligned against. It must equal ours,
        # i.e. jiwer's default transforms left our normalized text alone.
        assert words.hits + words.substitutions + words.deletions == sum(
            len(r.split()) for r in pair_refs
        )
        assert chars.hits + chars.substitutions + chars.deletions == sum(map(len, pair_refs))
    return counts


def wer_cer(counts: dict[str, float]) -> tuple[float, float]:
    """(WER, CER) in percent, as fairseq logs them, from summed `error_counts`.

    Counts may be floats (e.g. after an all-reduce of a float tensor).
    """
    if counts["words"] <= 0 or counts["chars"] <= 0:
        raise ValueError(
            f"counts need words > 0 and chars > 0, got words={counts['words']} "
            f"chars={counts['chars']}"
        )
    wer = 100.0 * counts["word_errors"] / counts["words"]
    cer = 100.0 * counts["char_errors"] / counts["chars"]
    return wer, cer


# ---------------------------------------------------------------- words of a path
Span = tuple[str, int, int]  # (word, first frame, one past its last frame)


def greedy_words(logits: Tensor, dictionary: Dictionary) -> list[Span]:
    """Best-path CTC words with their frame spans; the words are exactly
    `dictionary.words(greedy_ctc(logits))`. Shape: logits (T, V)."""
    return path_words(logits.argmax(dim=-1), dictionary)


def path_words(path: Tensor, dictionary: Dictionary) -> list[Span]:
    """The words of a CTC label path (one label per frame) with their frame spans: runs of one
    label are one emission, blanks (and <pad>, </s>) are dropped, `|` ends a word.

    Shape: path (T,) integer.
    """
    labels, counts = torch.unique_consecutive(path, return_counts=True)  # one entry per run
    ends = counts.cumsum(0)
    words: list[Span] = []
    letters: list[str] = []
    first = last = 0
    for label, end, count in zip(labels.tolist(), ends.tolist(), counts.tolist()):
        if label in (BLANK, PAD, EOS):  # what Dictionary.string leaves out
            continue
        symbol = dictionary.symbols[label]
        if symbol == WORD_BOUNDARY:
            if letters:
                words.append(("".join(letters), first, last))
            letters = []
            continue
        if not letters:
            first = end - count
        letters.append(symbol)
        last = end
    if letters:
        words.append(("".join(letters), first, last))
    return words



# ---------------------------------------------------------------- beam search
class BeamSearch:
    """CTC beam search with flashlight's decoder (flashlight-text, the `lm` extra; the decoder
    torchaudio's `ctc_decoder` wraps), over a recogniser's vocabulary: blank 0, `|` the word
    boundary (its silence token).

    Without `lm` any spelling can come out (lexicon-free). With a KenLM word n-gram (`.arpa`
    or `.bin`; flashlight-text's wheels have KenLM built in), words come from a lexicon:
    `lexicon`, a file in flashlight's format (`WORD<TAB>W O R D |` per line), or by default
    the unigrams of the `.arpa` that can be spelled in the vocabulary. `lm_weight` weighs the
    LM's log10-probabilities against the model's and `word_score` is added per word
    (torchaudio's defaults: 2 and 0).

    A file is decoded `chunk_frames` at a time: after each chunk the best path up to
    `look_back_frames` before its end is kept and the decoder's lattice before that point is
    freed. Decoded whole, the lattice grows by ~100 kB a frame at beam 50 (20 GB for an hour);
    this way memory stays at a few seconds' worth. Only the last `look_back_frames` (2 s) of
    hypotheses stay open when a chunk ends, which is the only way a chunked decode can differ
    from a whole one.
    """

    def __init__(self, dictionary: Dictionary, *, beam_width: int, lm: str | os.PathLike | None = None,
                 lexicon: str | os.PathLike | None = None, lm_weight: float = 2.0, word_score: float = 0.0,
                 beam_threshold: float = 50.0, chunk_frames: int = 400, look_back_frames: int = 100) -> None:
        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        for path in (lm, lexicon):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"no such file: {path}")
        if lexicon is not None and lm is None:
            raise ValueError("a lexicon goes with a language model (--lm)")
        if WORD_BOUNDARY not in dictionary.symbols:
            raise ValueError(f"beam search needs the word boundary {WORD_BOUNDARY!r} in the dictionary")
        try:
            from flashlight.lib.text import decoder as fl
            from flashlight.lib.text.dictionary import Dictionary as FlDictionary, load_words
        except ImportError:
            raise ImportError("beam search needs flashlight-text: pip install -e '.[lm]' (the lm extra)") from None
        if chunk_frames < 1 or look_back_frames < 0:
            raise ValueError(f"chunk_frames must be >= 1 and look_back_frames >= 0, got {chunk_frames}, {look_back_frames}")
        self.dictionary = dictionary
        self.chunk_frames, self.look_back_frames = chunk_frames, look_back_frames
        V = len(dictionary)
        sil = dictionary.index(WORD_BOUNDARY)
        if lm is None:
            options = fl.LexiconFreeDecoderOptions(beam_size=beam_width, beam_size_token=V, beam_threshold=beam_threshold,
                                                   lm_weight=0.0, sil_score=0.0, log_add=False,
                                                   criterion_type=fl.CriterionType.CTC)
            self._decoder = fl.LexiconFreeDecoder(options, fl.ZeroLM(), sil, BLANK, [])
            return
        try:
            from flashlight.lib.text.decoder.kenlm import KenLM
        except ImportError:
            raise ImportError(f"a language model ({lm}) needs KenLM, which flashlight-text's PyPI wheels include: "
                              "pip install -e '.[lm]' (the lm extra)") from None
        spellings = load_words(os.fspath(lexicon)) if lexicon is not None else _arpa_lexicon(lm, dictionary)
        spellings = {w: s for w, s in spellings.items() if w not in _LM_SPECIALS}  # load_words adds <unk>
        words = FlDictionary([*_LM_SPECIALS, *spellings])
        words.set_default_index(words.get_index("<unk>"))
        self._lm = KenLM(os.fspath(lm), words)  # held here too, as long as the decoder lives
        trie = fl.Trie(V, sil)
        start = self._lm.start(False)
        for word, word_spellings in spellings.items():
            index = words.get_index(word)
            _, score = self._lm.score(start, index)
            for spelling in word_spellings:
                try:
                    trie.insert([dictionary.index(s) for s in spelling], index, score)
                except ValueError as err:
                    raise ValueError(f"{lexicon}: the spelling of {word!r}: {err}") from None
        trie.smear(fl.SmearingMode.MAX)
        options = fl.LexiconDecoderOptions(beam_size=beam_width, beam_size_token=V, beam_threshold=beam_threshold,
                                           lm_weight=lm_weight, word_score=word_score, unk_score=float("-inf"),
                                           sil_score=0.0, log_add=False, criterion_type=fl.CriterionType.CTC)
        self._decoder = fl.LexiconDecoder(options, trie, self._lm, sil, BLANK, words.get_index("<unk>"), [], False)

    def __call__(self, logits: Tensor) -> list[Span]:
        """Shape: logits (T, V)."""
        if len(logits) == 0:
            return []
        log_probs = torch.log_softmax(logits.float(), dim=-1).contiguous()  # (T, V)
        log_probs[:, [PAD, EOS]] = -1e4  # never emitted: not text (Dictionary.string drops them)
        T, V = log_probs.shape
        decoder = self._decoder
        decoder.decode_begin()
        tokens: list[int] = []  # the start state, then one label per frame, then the end state
        for start in range(0, T, self.chunk_frames):
            chunk = log_probs[start:start + self.chunk_frames]  # (T_chunk, V), contiguous rows
            decoder.decode_step(chunk.data_ptr(), len(chunk), V)
            if start + self.chunk_frames < T:
                done = decoder.get_best_hypothesis(self.look_back_frames).tokens
                if done:  # else too few frames yet to commit any
                    decoder.prune(self.look_back_frames)  # the same path's end becomes the new start
                    tokens += done[1:] if tokens else done
        decoder.decode_end()
        rest = decoder.get_all_final_hypothesis()[0].tokens  # the best; get_best_hypothesis(0) stops at a word's end
        tokens += rest[1:] if tokens else rest
        assert len(tokens) == T + 2, (len(tokens), T)
        return path_words(torch.tensor(tokens[1:-1]), self.dictionary)


def _arpa_lexicon(lm: str | os.PathLike, dictionary: Dictionary) -> dict[str, list[list[str]]]:
    """The words of an ARPA file's unigrams that the vocabulary spells letter by letter, each
    spelt as its letters then `|`."""
    if not os.fspath(lm).endswith(".arpa"):
        raise ValueError(f"{lm}: a binary LM's words cannot be listed; give a lexicon (--lexicon) or the .arpa")
    letters = set(dictionary.symbols[4:]) - {WORD_BOUNDARY}
    spellings: dict[str, list[list[str]]] = {}
    with open(lm, encoding="utf-8") as f:
        for line in f:
            if line.strip() == "\\1-grams:":
                break
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if fields[0].startswith("\\"):  # the 2-grams, or the end
                break
            word = fields[1]
            if word not in _LM_SPECIALS and set(word) <= letters:
                spellings[word] = [[*word, WORD_BOUNDARY]]
    if not spellings:
        raise ValueError(f"{lm}: no unigram is spelt in the model's letters ({' '.join(sorted(letters))})")
    return spellings
