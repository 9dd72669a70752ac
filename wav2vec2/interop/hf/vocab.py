"""transformers' CTC vocabulary (a `Wav2Vec2CTCTokenizer`'s vocab.json, special tokens and
word delimiter) onto this project's `Dictionary`, and the output rows with it. transformers is
not imported here: the directory reader hands over what the tokenizer says.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from wav2vec2.data.labels import WORD_BOUNDARY, Dictionary

# Mapping transformers' vocabulary onto ours (`directory.read_hf`). Ours is fixed: 0 <blank>,
# 1 <pad>, 2 </s>, 3 <unk>, then the letters (`wav2vec2.data.labels`). Theirs is whatever
# vocab.json says (plus the tokenizer's added tokens), with the CTC blank at
# config.pad_token_id. Each of our indices takes one of their lm_head rows:
#
#   our 0 <blank> <- their blank (config.pad_token_id, which must be the tokenizer's pad_token:
#                    transformers' decoding drops that token, its CTC loss that row)
#   our 1 <pad>   <- their bos_token (default "<s>"): never a CTC target on either side.
#                    fairseq's index 1 is its <pad>, which transformers' conversion renamed <s>
#   our 2 </s>    <- their eos_token (default "</s>")
#   our 3 <unk>   <- their unk_token (default "<unk>")
#   our 4...      <- every other row, in their index order; their word_delimiter_token
#                    (tokenizer_config.json, default "|") becomes our "|"
#
# An index of ours that they lack (say they have no "<s>") gets weight 0 and bias -1e4: it
# is never emitted. So a fairseq-converted vocabulary ({"<pad>": 0, "<s>": 1, "</s>": 2,
# "<unk>": 3, "|": 4, "E": 5, ...}, pad_token_id 0), which is also what `export_hf` writes,
# maps row for row and the logits are transformers' exactly; any other order is permuted.
NEVER_EMITTED_BIAS = -1e4
HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # what export writes for our indices 0..3


def map_vocab(
    id_to_token: dict[int, str],
    num_rows: int,
    *,
    blank: int,
    bos: str | None,
    eos: str | None,
    unk: str | None,
    delimiter: str | None,
    where: str,
) -> tuple[Dictionary, list[int | None]]:
    """Our Dictionary for transformers' rows 0..num_rows-1 (`id_to_token`), and for each of our
    indices the row it takes (None: a special they lack). The rule is above `NEVER_EMITTED_BIAS`.
    Errors name `where` (the vocabulary's file)."""
    missing = [i for i in range(num_rows) if i not in id_to_token]
    if missing:
        raise ValueError(
            f"{where}: no token for lm_head row(s) {missing[:10]} of {num_rows}: the vocabulary does "
            "not match the model's output layer"
        )
    if not 0 <= blank < num_rows:
        raise ValueError(f"{where}: the CTC blank (pad_token_id) {blank} is not one of the {num_rows} rows")
    token_to_row = {id_to_token[i]: i for i in range(num_rows)}
    rows: list[int | None] = [blank]
    for role in (bos, eos, unk):  # our 1 <pad>, 2 </s>, 3 <unk>
        row = token_to_row.get(role) if role is not None else None
        rows.append(None if row in rows else row)  # a token plays one role (the blank first)
    symbols = []
    for i in range(num_rows):
        if i in rows:
            continue
        token = id_to_token[i]
        if token == delimiter:
            token = WORD_BOUNDARY
        elif token == WORD_BOUNDARY and delimiter is not None:
            raise ValueError(
                f"{where}: the word delimiter is {delimiter!r} but '|' is also a token; '|' is our "
                "word boundary, so the two cannot be told apart"
            )
        symbols.append(token)
        rows.append(i)
    dictionary = Dictionary(symbols, [1] * len(symbols), where=where)
    return dictionary, rows


def remap_head(weight: Tensor, bias: Tensor, rows: list[int | None]) -> tuple[Tensor, Tensor]:
    """Our output layer from transformers' lm_head: our row j is their row rows[j], or, where
    None, weight 0 and bias -1e4 (never emitted). Shape: weight (R, D), bias (R,) -> (V, D), (V,)."""
    new_weight = weight.new_zeros(len(rows), weight.shape[1])
    new_bias = bias.new_full((len(rows),), NEVER_EMITTED_BIAS)
    for j, i in enumerate(rows):
        if i is not None:
            new_weight[j] = weight[i]
            new_bias[j] = bias[i]
    return new_weight, new_bias



def word_delimiter(path: Path) -> str | None:
    """The tokenizer's word_delimiter_token as its files say (tokenizer_config.json, else
    special_tokens_map.json; default "|"). Read here because transformers 5's
    `Wav2Vec2CTCTokenizer.from_pretrained` drops a saved one (it files every unknown `*_token`
    key under model_specific_special_tokens) and falls back to "|"."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = path / name
        if file.is_file():
            settings = json.loads(file.read_text(encoding="utf-8"))
            if "word_delimiter_token" in settings:
                token = settings["word_delimiter_token"]
                return token.get("content") if isinstance(token, dict) else token  # an AddedToken's dict
    return WORD_BOUNDARY
