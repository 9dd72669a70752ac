"""The model config: which fields are architecture is declared in the dataclass, and the
declaration is checked against what actually changes the parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from wav2vec2.config import ModelConfig, architecture, architecture_differences, tiny, with_architecture
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


def _fields(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += _fields(value, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _set(cfg: ModelConfig, name: str, value: Any) -> None:
    *path, leaf = name.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part)
    setattr(node, leaf, value)


def _get(cfg: ModelConfig, name: str) -> Any:
    node = cfg
    for part in name.split("."):
        node = getattr(node, part)
    return node


def _other(name: str, value: Any) -> Any:
    """A different, still valid, value for a field of the tiny config."""
    special = {"feature_encoder.mode": "layer_norm", "transformer.num_heads": 4, "transformer.embed_dim": 64,
               "quantizer.codebook_dim": 32, "transformer.conv_pos_groups": 4, "quantizer.depth": 3,
               "masking.selection": "uniform", "masking.channel_selection": "uniform"}
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 2
    if isinstance(value, float):
        return value / 2 + 0.01
    if isinstance(value, list):
        return [v + 8 for v in value] if name.endswith("dims") else [v + 1 for v in value]
    raise AssertionError(f"no alternative value for {name}={value!r}")


def _shapes(cfg: ModelConfig) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in Wav2Vec2Model(cfg).state_dict().items()}


def test_every_field_that_changes_parameters_is_declared_architecture() -> None:
    base_cfg = tiny()
    base_cfg.quantizer.depth = 2  # so hidden_factor has a layer to size
    reference = _shapes(base_cfg)
    declared = set(architecture(base_cfg))
    changes_shapes = set()
    for name in _fields(base_cfg):
        cfg = tiny()
        cfg.quantizer.depth = 2
        _set(cfg, name, _other(name, _get(cfg, name)))
        if _shapes(cfg) != reference:
            changes_shapes.add(name)
    assert changes_shapes <= declared, sorted(changes_shapes - declared)
    # Declared but shape-preserving: they change what the same weights compute.
    assert declared - changes_shapes == {"transformer.layer_norm_first", "transformer.num_heads",
                                         "feature_encoder.conv_strides"}
    assert "quantizer.hidden_factor" in declared


def test_architecture_differences_name_the_fields() -> None:
    saved = dataclasses.asdict(tiny())
    current = tiny()
    assert architecture_differences(saved, current) == []
    current.quantizer.hidden_factor = 4
    current.transformer.dropout = 0.3  # not architecture
    assert architecture_differences(saved, current) == ["quantizer.hidden_factor"]
    del saved["quantizer"]["hidden_factor"]  # an older checkpoint without the field: the default (3)
    assert architecture_differences(saved, current) == ["quantizer.hidden_factor"]


def test_with_architecture_keeps_everything_else() -> None:
    mine = tiny()
    mine.masking.mask_prob = 0.33
    mine.transformer.dropout = 0.2
    other = ModelConfig()  # BASE
    merged = with_architecture(mine, other)
    assert architecture(merged) == architecture(other)
    assert merged.masking.mask_prob == 0.33 and merged.transformer.dropout == 0.2
    assert architecture(mine) == architecture(tiny())  # the input is not modified


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_layer_norm_first_changes_what_the_same_weights_compute(layer_norm_first: bool) -> None:
    torch.manual_seed(0)
    a = Wav2Vec2Model(tiny()).eval()
    cfg = tiny()
    cfg.transformer.layer_norm_first = not a.cfg.transformer.layer_norm_first
    b = Wav2Vec2Model(cfg).eval()
    b.load_state_dict(a.state_dict())  # loads: same shapes...
    x = torch.randn(1, 4000)
    assert not torch.allclose(a.encode(x).x, b.encode(x).x)  # ...different model
