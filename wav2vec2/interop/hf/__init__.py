"""transformers' wav2vec 2.0 (`Wav2Vec2ForPreTraining`, verified equal to fairseq 0.12.2;
`Wav2Vec2Model`; `Wav2Vec2ForCTC`): the parameter names (`names.py`), the config fields
(`config.py`), the CTC vocabulary (`vocab.py`) and the directories (`directory.py`), each
table written once and used in both directions. transformers itself is optional (the `hf`
extra) and imported only where a directory is read or written."""

from wav2vec2.interop.hf.config import config_from_hf, config_to_hf, ctc_config_to_hf
from wav2vec2.interop.hf.directory import export_hf, is_hf_directory, read_hf
from wav2vec2.interop.hf.names import (
    ctc_state_dict_from_hf,
    ctc_state_dict_to_hf,
    negatives_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)

__all__ = [
    "config_from_hf", "config_to_hf", "ctc_config_to_hf", "ctc_state_dict_from_hf", "ctc_state_dict_to_hf",
    "export_hf", "is_hf_directory", "negatives_to_hf", "read_hf", "state_dict_from_hf", "state_dict_to_hf",
]
