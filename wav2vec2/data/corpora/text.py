"""Transcript text -> the words a CTC model is trained to spell.

`normalize_transcript` turns a prompt's written text into upper-case words of letters and
apostrophes, in the languages of `wav2vec2.data.corpora.asterisk`, or says why it cannot
(the line is then left out of the corpus, never guessed). How words become a .ltr line is
the label format's business: `wav2vec2.data.labels.letters`.
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


def normalize_transcript(text: str, lang: str) -> tuple[list[str] | None, str]:
    """Upper-case words of letters and apostrophes, or (None, reason) if unusable.

    Bracketed parts are stage directions ("[beep]", "dot [.]") and are removed; a line
    that is nothing but those is not speech. Single digits become words (not for ru).
    """
    text = unicodedata.normalize("NFC", re.sub(r"\[[^\]]*\]", " ", text))
    if re.search(r"\d\d", text) or (re.search(r"\d", text) and lang not in DIGITS):
        return None, "number"
    if lang in DIGITS:
        names = DIGITS[lang].split()
        text = re.sub(r"\d", lambda m: f" {names[int(m.group())]} ", text)
    text = text.replace("\u2019", "'").upper()
    cleaned = "".join(c if unicodedata.category(c).startswith("L") or c == "'" else " " for c in text)
    words = [w.strip("'") for w in cleaned.split()]
    words = [w for w in words if w]
    return (words, "") if words else (None, "not speech")
