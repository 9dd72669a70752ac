from __future__ import annotations

import pytest

from wav2vec2.data.corpora.text import normalize_transcript


@pytest.mark.parametrize(
    "text, lang, want",
    [
        ("Agent logged in.", "en", ["AGENT", "LOGGED", "IN"]),
        ("Échec à l'ouverture de session.", "fr", ["ÉCHEC", "À", "L'OUVERTURE", "DE", "SESSION"]),
        ("Регистрация оператора удалена.", "ru", ["РЕГИСТРАЦИЯ", "ОПЕРАТОРА", "УДАЛЕНА"]),
        ("dot [.]", "en", ["DOT"]),
        ("Press 1 or 2", "en", ["PRESS", "ONE", "OR", "TWO"]),
        ("Pulse 3", "it", ["PULSE", "TRE"]),
        ("[this is a simple beep tone]", "en", None),
        ("Call 911", "en", None),
        ("Нажмите 1", "ru", None),
    ],
)
def test_normalize_transcript(text, lang, want):
    assert normalize_transcript(text, lang)[0] == want


@pytest.mark.parametrize(
    "text, lang, want, reason",
    [
        ("(8 seconds of silence)", "en", None, "not speech"),  # a note in parentheses, digits and all
        ("<beep ascending>", "ru", None, "not speech"),
        ("[ tono de error ]", "es", None, "not speech"),
        ('IAX (note: does not say "2")', "en", ["IAX"], ""),
        ("Voce disattivata. (You are now muted.)", "it", ["VOCE", "DISATTIVATA"], ""),
        ("press * to toggle pause", "en", None, "keypad symbol"),  # "star" is said, not written
        ("followed by # or just # to exit", "en", None, "keypad symbol"),
        ("Call 911", "en", None, "number"),
    ],
)
def test_notes_are_not_words_and_unsaid_words_are_not_guessed(text, lang, want, reason):
    assert normalize_transcript(text, lang) == (want, reason)


def test_spoken_parentheses_are_kept_when_asked():
    text = "au menu poli (ne m'appelez plus, jamais)"
    assert normalize_transcript(text, "fr")[0] == ["AU", "MENU", "POLI"]
    assert normalize_transcript(text, "fr", spoken_parentheses=True)[0] == "AU MENU POLI NE M'APPELEZ PLUS JAMAIS".split()
    assert normalize_transcript("dot [.] (note)", "en", spoken_parentheses=True)[0] == ["DOT", "NOTE"]
