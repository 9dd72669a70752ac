"""Transcribe recordings of any length with a CTC `Recognizer`, with word timestamps.

    rec = load_recognizer("runs/ft/checkpoint_best.pt")
    t = transcribe_file(rec, "talk.mp3")           # any soundfile format, rate, channels
    t.text, t.words[0]                             # "HELLO WORLD", Word("HELLO", 0.42, 0.8)

Every file is read in pieces (`AudioFile`: downmixed, resampled to the model's rate,
normalised over the whole file if the model wants it) and run through the model in
overlapping windows (`run_in_windows`: 30 s cores with 5 s of context on each side by
default); the windows' frame logits are stitched and decoded once, greedily or with a beam
(flashlight's CTC decoder, optionally with a KenLM n-gram). Memory holds one window of audio
and activations, plus the file's logits: 4·V bytes per 20 ms frame, 23 MB an hour at V = 32.

Word timestamps come from the CTC frames (one frame = hop / sample_rate = 20 ms) of the
decoded path (the best path, or the beam's): a word starts at the first frame of its first
letter and ends after the last frame of its last letter (the run of frames on that letter).

`transcribe_batch` runs a list of files into an `Output` (stdout, one file, or a directory
with one file per input) and scores the result against manifest transcripts if it has them;
`scripts/transcribe.py` is its command line.

Shapes: L samples, T frames, V vocabulary entries (blank = 0).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor

from wav2vec2.data.labels import BLANK, EOS, PAD, WORD_BOUNDARY, Dictionary
from wav2vec2.data.manifest import read_manifest
from wav2vec2.infer.audio import AudioFile
from wav2vec2.infer.chunking import run_in_windows
from wav2vec2.infer.decode import error_counts, wer_cer
from wav2vec2.infer.recognizer import Recognizer

WINDOW_SECONDS = 30.0
"""Audio per window whose frames are kept (transformers' pipeline uses 30 s chunks too)."""
CONTEXT_SECONDS = 5.0
"""Audio on each side of a window's core, computed and thrown away: the core frames' context."""
PROGRESS_AFTER_SECONDS = 60.0
"""Files longer than this get a progress bar (when asked for)."""
SRT_MAX_SECONDS, SRT_MAX_CHARS, SRT_MAX_GAP = 7.0, 42, 1.0
"""A subtitle holds at most 7 s and 42 characters (the usual line length), and a pause
longer than 1 s starts a new one."""
FORMATS = {"text": ".txt", "json": ".json", "srt": ".srt"}
_LM_SPECIALS = ("<s>", "</s>", "<unk>")  # KenLM's


@dataclass
class Word:
    word: str
    start: float
    """Seconds from the start of the file."""
    end: float


@dataclass
class Transcript:
    file: str
    text: str
    """The words joined by single spaces."""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    """Seconds of audio at the model's rate."""

    def to_dict(self) -> dict:
        return {"file": self.file, "text": self.text,
                "words": [{"word": w.word, "start": w.start, "end": w.end} for w in self.words],
                "duration": round(self.duration, 3)}


# ---------------------------------------------------------------- frames
def frame_logits(rec: Recognizer, audio: AudioFile, *, window: float = WINDOW_SECONDS,
                 context: float = CONTEXT_SECONDS, progress: Callable[[int], None] | None = None) -> Tensor:
    """The file's frame logits, computed window by window (`window` seconds kept per window,
    `context` seconds of audio on each side) and stitched. One window at a time, never a
    padded batch, which matters for group-norm (BASE-style) encoders.

    Shape: returns (T, V) float32 on the CPU; T = 0 for audio shorter than a frame.
    """
    if window <= 0 or context < 0:
        raise ValueError(f"window must be > 0 s and context >= 0 s, got window={window}, context={context}")
    encoder = rec.model.cfg.feature_encoder
    frame = encoder.hop / rec.sample_rate
    logits = run_in_windows(lambda wav: rec(wav).logits.float().cpu(), audio.read, audio.num_samples, encoder,
                            window_frames=max(1, round(window / frame)), context_frames=round(context / frame),
                            progress=progress)
    return logits if len(logits) else torch.zeros(0, len(rec.dictionary))


# ---------------------------------------------------------------- decoding
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


# ---------------------------------------------------------------- files
def transcribe_file(rec: Recognizer, path: str | os.PathLike, *, beam: BeamSearch | None = None,
                    window: float = WINDOW_SECONDS, context: float = CONTEXT_SECONDS,
                    progress: bool = False) -> Transcript:
    """One recording of any length, greedy CTC unless `beam`. With `progress`, files over a
    minute show a tqdm bar on stderr. Raises ValueError for audio it cannot read or that is empty."""
    frame = rec.model.cfg.feature_encoder.hop / rec.sample_rate  # seconds per CTC frame
    with AudioFile(path, sample_rate=rec.sample_rate, normalize=rec.normalize) as audio:
        duration = audio.num_samples / rec.sample_rate
        bar = None
        if progress and duration > PROGRESS_AFTER_SECONDS:
            from tqdm import tqdm

            bar = tqdm(total=round(duration, 1), desc=Path(path).name, unit="s", file=sys.stderr, leave=False,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")
        try:
            logits = frame_logits(rec, audio, window=window, context=context,
                                  progress=None if bar is None else lambda done: bar.update(
                                      round(done / rec.sample_rate, 1) - bar.n))
        finally:
            if bar is not None:
                bar.close()
    spans = beam(logits) if beam is not None else greedy_words(logits, rec.dictionary)
    words = [Word(w, round(start * frame, 3), round(end * frame, 3)) for w, start, end in spans]
    return Transcript(file=os.fspath(path), text=" ".join(w.word for w in words), words=words, duration=duration)


# ---------------------------------------------------------------- output
def format_srt(words: Sequence[Word]) -> str:
    """SubRip subtitles: words grouped in order into cues of at most SRT_MAX_SECONDS and
    SRT_MAX_CHARS (a longer word gets a cue of its own), a new cue after a pause over SRT_MAX_GAP."""
    cues: list[list[Word]] = []
    for w in words:
        cue = cues[-1] if cues else None
        if (cue is None or w.end - cue[0].start > SRT_MAX_SECONDS or w.start - cue[-1].end > SRT_MAX_GAP
                or sum(len(x.word) + 1 for x in cue) + len(w.word) > SRT_MAX_CHARS):
            cues.append([w])
        else:
            cue.append(w)
    return "".join(f"{i}\n{_srt_time(c[0].start)} --> {_srt_time(c[-1].end)}\n{' '.join(w.word for w in c)}\n\n"
                   for i, c in enumerate(cues, start=1))


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def render(transcript: Transcript, fmt: str) -> str:
    """A transcript as `fmt` ("text": one line; "json": one line, an object; "srt")."""
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        return json.dumps(transcript.to_dict(), ensure_ascii=False) + "\n"
    if fmt == "srt":
        return format_srt(transcript.words)
    raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")


class Output:
    """Where transcripts go, one record per input in input order:

    - `out=None`: stdout, as each file is done;
    - `out="DIR/"` (trailing slash, or an existing directory): DIR/<name>.txt|json|srt per
      input (`name` its file name, or its path inside a manifest), each written atomically
      when its file is done;
    - any other `out`: one file, grown as `out.tmp` and renamed to `out` by `close()`, which
      also runs if a later file crashes the batch, so nothing done is lost.

    In a stream (stdout or one file) text is a line per input and json a JSON object per line
    (JSON Lines); an input that failed leaves an empty line or {"file", "error"} in its place,
    so line k is still input k. SRT takes one input per stream.
    """

    def __init__(self, fmt: str, out: str | os.PathLike | None, names: Sequence[str]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        self.fmt, self.names = fmt, list(names)
        self.dir: Path | None = None
        self.path: Path | None = None
        self._stream: TextIO | None = None
        if out is not None and (os.fspath(out).endswith(os.sep) or Path(out).is_dir()):
            self.dir = Path(out)
            targets = [self._target(n) for n in self.names]
            clashes = sorted({str(t) for t in targets if targets.count(t) > 1})
            if clashes:
                raise ValueError(f"several inputs would write {', '.join(clashes)}: give them different names")
            self.dir.mkdir(parents=True, exist_ok=True)
            return
        if fmt == "srt" and len(self.names) > 1:
            raise ValueError("srt subtitles take one input per file: give a directory (--out DIR/)")
        if out is None:
            self._stream = sys.stdout
        else:
            self.path = Path(out)
            self._stream = open(self.path.with_name(self.path.name + ".tmp"), "w", encoding="utf-8")

    def _target(self, name: str) -> Path:
        return self.dir / Path(name).with_suffix(FORMATS[self.fmt])

    def write(self, index: int, path: str, transcript: Transcript | None, error: str | None = None) -> None:
        """Input `index` (at `path`): its transcript, or its failure (`transcript` None, `error` why)."""
        if self.dir is not None:
            if transcript is not None:
                target = self._target(self.names[index])
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_text(render(transcript, self.fmt), encoding="utf-8")
                os.replace(tmp, target)
            return
        if transcript is not None:
            text = render(transcript, self.fmt)
        elif self.fmt == "json":
            text = json.dumps({"file": os.fspath(path), "error": error}, ensure_ascii=False) + "\n"
        else:
            text = "\n" if self.fmt == "text" else ""
        self._stream.write(text)
        self._stream.flush()

    def close(self) -> None:
        if self.path is not None and self._stream is not None:
            self._stream.close()
            os.replace(self._stream.name, self.path)
        self._stream = None


# ---------------------------------------------------------------- batches
def read_manifest_inputs(path: str | os.PathLike) -> tuple[list[str], list[str], list[str] | None]:
    """(audio paths, their paths inside the manifest, reference transcripts or None) of a
    fairseq manifest `DIR/subset.tsv`; the references are `subset.ltr` beside it (letters,
    `|` between words), else `subset.wrd` (words), one line per entry."""
    path = Path(path)
    root, entries = read_manifest(path)
    names = [rel for rel, _ in entries]
    references = None
    for suffix in (".ltr", ".wrd"):
        labels = path.with_suffix(suffix)
        if labels.is_file():
            lines = labels.read_text(encoding="utf-8").split("\n")
            while len(lines) > len(entries) and not lines[-1].strip():
                lines.pop()
            if len(lines) != len(entries):
                raise ValueError(f"{labels}: {len(lines)} lines but {path} has {len(entries)} entries")
            if suffix == ".ltr":
                lines = ["".join(line.split()).replace(WORD_BOUNDARY, " ") for line in lines]
            references = [" ".join(line.split()) for line in lines]
            break
    return [os.path.join(root, n) for n in names], names, references


@dataclass
class BatchReport:
    hypotheses: list[str | None]
    """One per input, None where it failed."""
    failures: list[tuple[str, str]]
    """(path, why) of each input that failed, in order."""
    counts: dict[str, int] | None = None
    """Error counts against the references (the inputs that did not fail), if given."""
    wer: float | None = None
    cer: float | None = None


def transcribe_batch(rec: Recognizer, paths: Sequence[str], output: Output, *, references: Sequence[str] | None = None,
                     beam: BeamSearch | None = None, window: float = WINDOW_SECONDS, context: float = CONTEXT_SECONDS,
                     progress: bool = False, log: TextIO | None = None) -> BatchReport:
    """Transcribe `paths` one by one into `output` (then closed). An input that cannot be
    read, or holds no audio, or fails in any other way, is reported to `log` (stderr) by
    name and skipped; the batch goes on. With `references` (one per path), WER and CER of
    the inputs that did not fail."""
    log = sys.stderr if log is None else log
    report = BatchReport(hypotheses=[], failures=[])
    try:
        for i, path in enumerate(paths):
            transcript = error = None
            try:
                transcript = transcribe_file(rec, path, beam=beam, window=window, context=context, progress=progress)
            except Exception as err:  # noqa: BLE001 - one bad file must not end the batch; it is reported
                error = str(err) or type(err).__name__
                error = error if os.fspath(path) in error else f"{path}: {error}"
                print(f"failed: {error}", file=log, flush=True)
                report.failures.append((path, error))
            output.write(i, path, transcript, error)
            report.hypotheses.append(None if transcript is None else transcript.text)
    finally:
        output.close()  # also on Ctrl-C: what is done is kept
    if references is not None:
        pairs = [(r, h) for r, h in zip(references, report.hypotheses) if h is not None]
        if pairs:
            report.counts = error_counts(*map(list, zip(*pairs)))
            report.wer, report.cer = wer_cer(report.counts)
    return report
