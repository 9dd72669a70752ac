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
