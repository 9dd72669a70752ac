"""fairseq wav2vec 2.0 checkpoints (fairseq 0.12 layout; fairseq is never imported): the
parameter names (`names.py`), the config fields (`config.py`) and the files (`checkpoint.py`),
each table written once and used in both directions."""

from wav2vec2.interop.fairseq.checkpoint import (
    FAIRSEQ_SAFE_TYPES,
    export_fairseq,
    is_fairseq_checkpoint,
    read_fairseq,
)
from wav2vec2.interop.fairseq.config import (
    config_from_fairseq,
    config_to_fairseq,
    ctc_config_from_fairseq,
    parse_conv_layers,
)
from wav2vec2.interop.fairseq.names import (
    ctc_state_dict_from_fairseq,
    ctc_state_dict_to_fairseq,
    state_dict_from_fairseq,
    state_dict_to_fairseq,
)

__all__ = [
    "FAIRSEQ_SAFE_TYPES", "config_from_fairseq", "config_to_fairseq", "ctc_config_from_fairseq",
    "ctc_state_dict_from_fairseq", "ctc_state_dict_to_fairseq", "export_fairseq", "is_fairseq_checkpoint",
    "parse_conv_layers", "read_fairseq", "state_dict_from_fairseq", "state_dict_to_fairseq",
]
