"""Transcript text -> the words a CTC model is trained to spell.

`normalize_transcript` turns a prompt's written text into upper-case words of letters and
apostrophes, in the languages of `wav2vec2.data.corpora.asterisk`, or says why it cannot:
the line is then left out of the corpus, never guessed. How words become a .ltr line is
the label format's business: `wav2vec2.data.labels.letters`.

A reference must be what is said, nothing more and nothing less: a word the voice does
not say, or one it says that is missing, is an error no model can avoid, in training and
in every WER/CER reported. Hence the rules below.
"""

from __future__ import annotations

import re
import unicodedata

# Single digits as read in these prompts ("press 1"). Russian number words inflect
# (одну/один/одна), so Russian lines with digits are skipped rather than guessed.
DIGITS = {
    "en": "zero one two three four five six seven eight nine",
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve",
    "fr": "zéro un deux trois quatre cinq six sept huit neuf",
    "it": "zero uno due tre quattro cinque sei sette otto nove",
}

# Why a line is not used; the preparation counts these and lists each file.
NUMBER = "number"  # a number of several digits, or any digit in Russian: not spelt reliably
NOT_SPEECH = "not speech"  # nothing but notes: "[beep]", "(2 seconds of silence)", "<beep ascending>"
KEYPAD_SYMBOL = "keypad symbol"  # "*" / "#" are said ("star", "pound", "dièse"...) but are no words

# Notes about a recording, not words of it: "[this is a simple beep tone]", "dot [.]",
# "(1 second of silence)", "<beep ascending>", "IAX (note: does not say "2")",
# "Pour (emphase)". The transcript files use all three brackets for them.
_NOTES = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_NOTES_BUT_PARENTHESES = re.compile(r"\[[^\]]*\]|<[^>]*>")
_KEYPAD = re.compile(r"[*#]")


def normalize_transcript(text: str, lang: str, *, spoken_parentheses: bool = False) -> tuple[list[str] | None, str]:
    """Upper-case words of letters and apostrophes, or (None, reason) if unusable.

    Bracketed parts, `[...]`, `<...>` and `(...)`, are notes and are removed; a line that
    is nothing but notes is not speech (NOT_SPEECH). `spoken_parentheses` keeps what is in
    parentheses, for the few lines where they quote words the voice says. Single digits
    become words (not for ru); other numbers (NUMBER) and keypad symbols (KEYPAD_SYMBOL)
    make the line unusable, as their spoken words are not in it.
    """
    text = unicodedata.normalize("NFC", (_NOTES_BUT_PARENTHESES if spoken_parentheses else _NOTES).sub(" ", text))
    if _KEYPAD.search(text):
        return None, KEYPAD_SYMBOL
    if re.search(r"\d\d", text) or (re.search(r"\d", text) and lang not in DIGITS):
        return None, NUMBER
    if lang in DIGITS:
        names = DIGITS[lang].split()
        text = re.sub(r"\d", lambda m: f" {names[int(m.group())]} ", text)
    text = text.replace("\u2019", "'").upper()
    cleaned = "".join(c if unicodedata.category(c).startswith("L") or c == "'" else " " for c in text)
    words = [w.strip("'") for w in cleaned.split()]
    words = [w for w in words if w]
    return (words, "") if words else (None, NOT_SPEECH)
