"""What every downstream task shares: its encoder from `task.init` through the one loader
(`load_init`), and about `model.upstream` (SUPERB's protocol, `wav2vec2/model/upstream.py`)
the learned layer weights as sums, logged metrics and a panel of the curves. Which hidden state a head leans on is itself a finding, so every task
whose model reads a weighted sum logs its weights at every logged row.
"""

from __future__ import annotations

from torch import Tensor

from wav2vec2.config import ModelConfig, TrainConfig, with_architecture
from wav2vec2.interop.load import load_model
from wav2vec2.model.upstream import hidden_state_indices
from wav2vec2.tasks.base import Panel, check_architecture_overrides

FORWARDS = "forwards"
"""The sum counting forwards, by which the summed weights are averaged."""


def layer_weight_key(state: int) -> str:
    """The metric of hidden state `state`'s weight: "layer_weight_0" is the input of the first layer."""
    return f"layer_weight_{state}"


def layer_weight_sums(cfg: ModelConfig, weights: Tensor | None) -> dict[str, Tensor | float]:
    """The sums of one forward: each selected hidden state's softmaxed weight (detached), and
    one forward; nothing without `upstream.layer_sum`. Averaged over micro-batches and ranks
    by `layer_weight_metrics` (every rank holds the same weights)."""
    if weights is None:
        return {}
    sums: dict[str, Tensor | float] = {layer_weight_key(state): weights[i].detach()
                                       for i, state in enumerate(hidden_state_indices(cfg))}
    sums[FORWARDS] = 1.0
    return sums


def layer_weight_metrics(cfg: ModelConfig, sums: dict[str, float]) -> dict[str, float]:
    """The logged weights, from the sums of `layer_weight_sums`; nothing without them."""
    if not cfg.upstream.layer_sum:
        return {}
    n = max(sums[FORWARDS], 1.0)
    return {layer_weight_key(state): sums[layer_weight_key(state)] / n for state in hidden_state_indices(cfg)}


def layer_weight_panels(cfg: ModelConfig) -> list[Panel]:
    """A panel of the weights against updates, when the model has them."""
    if not cfg.upstream.layer_sum:
        return []
    states = hidden_state_indices(cfg)
    lines = tuple((layer_weight_key(s), "input" if s == 0 else f"layer {s}") for s in states)
    return [Panel("layer weights (softmax) of the hidden states the head reads", train=lines,
                  references=((1.0 / len(states), "uniform (the initial weights)"),), ylabel="weight")]


def load_init(init: str, cfg: TrainConfig, overrides: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """The encoder weights of the model at `init` (any format `load_model` reads: this
    project's checkpoints, fairseq's, a transformers directory), fixing `cfg.model`'s
    architecture to its own; errors name `task.init`. Everything but the architecture
    (dropouts, masking, `upstream`) stays this run's; an architecture field the user set
    (`overrides`, `Task.architecture_overrides`) that contradicts the model's is an error."""
    try:
        pretrained = load_model(init)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"task.init: {err}") from None
    if pretrained.normalize is not None and pretrained.normalize != cfg.data.normalize:
        raise ValueError(
            f"data.normalize={cfg.data.normalize} but {init} was pretrained with normalize={pretrained.normalize}: "
            "fine-tune with the normalisation the model was pretrained with (fairseq asserts the same)")
    check_architecture_overrides(cfg.model, pretrained.config, overrides, where=init)
    cfg.model = with_architecture(cfg.model, pretrained.config)
    return pretrained.encoder_weights()
