"""Learning-rate schedules (tri_stage against hand-computed values and a stateful reference,
polynomial_decay to the last bit), dispatch on `optim.schedule`, `validate_schedule`, and
which parameters the optimizer steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wav2vec2.config import OptimConfig, validate_schedule
from wav2vec2.train.optim import (
    build_optimizer,
    lr_at,
    polynomial_decay_lr,
    tri_stage_lr,
)

LR = 2e-3


def tri(max_update: int = 100, phase_ratio=(0.1, 0.4, 0.5), **kw) -> OptimConfig:
    return OptimConfig(
        schedule="tri_stage", lr=kw.pop("lr", LR), max_update=max_update,
        phase_ratio=list(phase_ratio), **kw,
    )


# --- hand-computed values -------------------------------------------------------------
# max_update=100, phase_ratio (0.1, 0.4, 0.5), init 0.01, final 0.05:
# warmup u in [0, 10), hold u in [10, 50), decay u in [50, 100] (offsets 0..50), then final.


def test_tri_stage_warmup_by_hand() -> None:
    cfg = tri()
    assert lr_at(0, cfg) == pytest.approx(0.01 * LR, rel=1e-12)  # before the first update
    assert lr_at(1, cfg) == pytest.approx((0.01 + 0.99 * 1 / 10) * LR, rel=1e-12)
    assert lr_at(5, cfg) == pytest.approx((0.01 + 1.0) / 2 * LR, rel=1e-12)  # midpoint
    # the last warmup count is still one increment short of the peak
    assert lr_at(9, cfg) == pytest.approx((0.01 + 0.99 * 9 / 10) * LR, rel=1e-12)
    assert lr_at(9, cfg) < LR


def test_tri_stage_hold_by_hand() -> None:
    cfg = tri()
    for u in (10, 11, 30, 49):
        assert lr_at(u, cfg) == LR, u


def test_tri_stage_decay_by_hand() -> None:
    cfg = tri()
    assert lr_at(50, cfg) == LR  # decay offset 0: exp(0) == 1 exactly
    # offset 25 of 50: halfway in log space, peak * final_scale**0.5
    assert lr_at(75, cfg) == pytest.approx(LR * math.sqrt(0.05), rel=1e-12)
    assert lr_at(51, cfg) == pytest.approx(LR * 0.05 ** (1 / 50), rel=1e-12)
    # offset 50 == decay_steps is still the decay phase and lands on the final lr
    assert lr_at(100, cfg) == pytest.approx(0.05 * LR, rel=1e-12)
    assert lr_at(99, cfg) == pytest.approx(LR * 0.05 ** (49 / 50), rel=1e-12)


def test_tri_stage_after_decay_is_final() -> None:
    cfg = tri()
    for u in (101, 102, 150, 10_000):
        assert lr_at(u, cfg) == 0.05 * LR, u  # the tail is exactly final_lr_scale * lr


def test_tri_stage_uses_scales() -> None:
    cfg = tri(init_lr_scale=0.5, final_lr_scale=0.25)
    assert lr_at(0, cfg) == pytest.approx(0.5 * LR, rel=1e-12)
    assert lr_at(5, cfg) == pytest.approx(0.75 * LR, rel=1e-12)
    assert lr_at(100, cfg) == pytest.approx(0.25 * LR, rel=1e-12)
    assert lr_at(101, cfg) == 0.25 * LR


def test_tri_stage_phase_lengths_round_down() -> None:
    """int(max_update * ratio), as fairseq: 100 * 0.29 is 28.999..., so warmup is 28
    updates, not 29 (round() would give 29)."""
    cfg = tri(phase_ratio=(0.29, 0.01, 0.7))
    assert lr_at(27, cfg) < LR
    assert lr_at(28, cfg) == LR  # hold: int(100 * 0.01) == 1 update
    assert lr_at(29, cfg) == LR  # decay offset 0 (hold 1 update, decay int(70.0...) == 70)
    assert lr_at(30, cfg) < LR
    assert lr_at(99, cfg) == pytest.approx(0.05 * LR, rel=1e-12)  # 29 + 70
    assert lr_at(100, cfg) == 0.05 * LR


def test_tri_stage_without_decay_steps() -> None:
    """fairseq divides by zero when the decay phase is empty; here the decay phase is the
    single count at offset 0 (the peak) and the final lr follows."""
    cfg = tri(phase_ratio=(0.2, 0.8, 0.0))
    assert lr_at(19, cfg) < LR
    assert lr_at(99, cfg) == LR  # last hold count
    assert lr_at(100, cfg) == LR  # hold ended; decay offset 0
    assert lr_at(101, cfg) == 0.05 * LR
    assert lr_at(200, cfg) == 0.05 * LR


# --- shape ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_update,ratio", [(100, (0.1, 0.4, 0.5)), (1000, (0.3, 0.0, 0.7)),
                                               (37, (0.25, 0.25, 0.5))])
def test_tri_stage_monotonic(max_update: int, ratio: tuple[float, float, float]) -> None:
    cfg = tri(max_update=max_update, phase_ratio=ratio)
    w = int(max_update * ratio[0])
    h = int(max_update * ratio[1])
    d = int(max_update * ratio[2])
    lrs = [lr_at(u, cfg) for u in range(max_update + 10)]
    warmup = lrs[: w + 1]  # through the first count at the peak
    assert all(a < b for a, b in zip(warmup, warmup[1:])), "warmup must rise strictly"
    assert all(x == LR for x in lrs[w : w + h + 1])  # hold, plus decay offset 0
    decay = lrs[w + h : w + h + d + 1]
    assert all(a > b for a, b in zip(decay, decay[1:])), "decay must fall strictly"
    tail = lrs[w + h + d :]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    assert lrs[0] == min(warmup) and max(lrs) == LR
    assert min(lrs[w:]) == pytest.approx(0.05 * LR, rel=1e-12)


# --- a stateful reference in fairseq's style ------------------------------------------


class _FakeOptimizer:
    def __init__(self) -> None:
        self.lr = float("nan")

    def set_lr(self, lr: float) -> None:
        self.lr = lr


class _ReferenceTriStage:
    """fairseq's TriStageLRSchedule as a stateful object: stage lengths and rates are
    computed once, and `step_update(num_updates)` sets the optimizer's lr."""

    def __init__(self, cfg: OptimConfig, optimizer: _FakeOptimizer) -> None:
        self.optimizer = optimizer
        self.peak_lr = cfg.lr
        self.init_lr = cfg.init_lr_scale * cfg.lr
        self.final_lr = cfg.final_lr_scale * cfg.lr
        self.stage_lengths = [int(cfg.max_update * r) for r in cfg.phase_ratio]
        warmup, _, decay = self.stage_lengths
        self.warmup_rate = (self.peak_lr - self.init_lr) / warmup if warmup != 0 else 0
        self.decay_factor = -math.log(cfg.final_lr_scale) / decay  # fairseq: no guard
        self.optimizer.set_lr(self.init_lr)

    def _stage(self, num_updates: int) -> tuple[int, int]:
        start = 0
        for stage, length in enumerate(self.stage_lengths):
            end = start + length
            inside = num_updates <= end if stage == 2 else num_updates < end
            if inside:
                return stage, num_updates - start
            start = end
        return 3, num_updates - start

    def step_update(self, num_updates: int) -> float:
        stage, offset = self._stage(num_updates)
        if stage == 0:
            lr = self.init_lr + self.warmup_rate * offset
        elif stage == 1:
            lr = self.peak_lr
        elif stage == 2:
            lr = self.peak_lr * math.exp(-self.decay_factor * offset)
        else:
            lr = self.final_lr
        self.optimizer.set_lr(lr)
        return lr


@pytest.mark.parametrize(
    "max_update,ratio,init_scale,final_scale",
    [
        (100, (0.1, 0.4, 0.5), 0.01, 0.05),
        (100, (0.0, 0.5, 0.5), 0.01, 0.05),  # no warmup
        (50, (0.3, 0.0, 0.7), 0.1, 0.2),  # no hold
        (37, (0.25, 0.25, 0.5), 0.5, 0.01),  # phases that do not divide evenly
        (7, (0.1, 0.4, 0.5), 0.01, 0.05),  # no warmup after rounding down (int(0.7) == 0)
        (1000, (0.1, 0.4, 0.5), 1.0, 1.0),  # flat
    ],
)
def test_tri_stage_matches_stateful_reference(
    max_update: int, ratio: tuple[float, float, float], init_scale: float, final_scale: float
) -> None:
    cfg = tri(max_update=max_update, phase_ratio=ratio, init_lr_scale=init_scale,
              final_lr_scale=final_scale)
    optimizer = _FakeOptimizer()
    sched = _ReferenceTriStage(cfg, optimizer)
    sched.step_update(0)  # fairseq's trainer, on building the scheduler
    for u in range(max_update + 6):
        # optimizer.lr is what update u + 1 runs with; then update u + 1 completes
        assert lr_at(u, cfg) == optimizer.lr, f"u={u}"
        sched.step_update(u + 1)


# --- dispatch -------------------------------------------------------------------------


def test_lr_at_dispatches_on_schedule() -> None:
    poly = OptimConfig(lr=LR, warmup_updates=10, max_update=100)  # the default schedule
    assert poly.schedule == "polynomial_decay"
    tri_cfg = tri()
    assert lr_at(1, poly) == LR / 10 != lr_at(1, tri_cfg)
    for u in (0, 5, 10, 50, 75, 100, 120):
        assert lr_at(u, poly) == polynomial_decay_lr(u, poly)
        assert lr_at(u, tri_cfg) == tri_stage_lr(u, tri_cfg)


def test_polynomial_decay_floats_unchanged() -> None:
    """polynomial_decay is pinned to the last bit (a golden trajectory depends on it): these
    literals are what the schedule returned before tri_stage was added, except at u=0, which
    is 0 since the first update follows fairseq (lr 0). lr * u / warmup and lr / warmup * u
    differ at u=3 and u=6 here."""
    cfg = OptimConfig(lr=1e-3, warmup_updates=13, max_update=100, end_lr=1e-7, power=1.5)
    expected = {0: 0.0, 1: 7.692307692307693e-05, 3: 0.00023076923076923076,
                6: 0.00046153846153846153, 13: 0.001, 14: 0.0009828099793807747,
                26: 0.0007844777558954492, 29: 0.0007372658579375048, 50: 0.0004357449619393939,
                99: 1.3321900271084012e-06, 100: 1e-07, 101: 1e-07}
    assert {u: lr_at(u, cfg) for u in expected} == expected
    no_warmup = OptimConfig(lr=1e-3, warmup_updates=0, max_update=30)
    expected = {0: 0.001, 1: 0.0009666666666666667, 3: 0.0009000000000000001, 6: 0.0008,
                29: 3.333333333333333e-05, 30: 0.0, 50: 0.0}
    assert {u: lr_at(u, no_warmup) for u in expected} == expected


def test_build_optimizer_starts_at_schedule_start() -> None:
    opt = build_optimizer(nn.Linear(2, 2), tri())
    assert opt.param_groups[0]["lr"] == lr_at(0, tri()) == pytest.approx(0.01 * LR, rel=1e-12)


def test_unknown_schedule_names_key() -> None:
    cfg = OptimConfig(schedule="cosine")
    with pytest.raises(ValueError, match=r"optim\.schedule.*'cosine'"):
        lr_at(0, cfg)
    with pytest.raises(ValueError, match=r"optim\.schedule.*'cosine'"):
        validate_schedule(cfg)


# --- validate_schedule ----------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio",
    [
        [0.5, 0.5],  # too few
        [0.25, 0.25, 0.25, 0.25],  # too many
        [0.5, -0.1, 0.6],  # negative
        [0.1, 0.4, 0.4],  # sums to 0.9
        [0.1, 0.4, 0.5 + 2e-6],  # just outside the tolerance
        [float("nan"), 0.5, 0.5],
        ["0.1", 0.4, 0.5],
    ],
)
def test_validate_rejects_bad_phase_ratio(ratio: list) -> None:
    cfg = tri()
    cfg.phase_ratio = ratio
    with pytest.raises(ValueError, match=r"optim\.phase_ratio"):
        validate_schedule(cfg)


@pytest.mark.parametrize("key", ["init_lr_scale", "final_lr_scale"])
@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_validate_rejects_bad_scales(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"optim\.{key}"):
        validate_schedule(tri(**{key: value}))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"phase_ratio": (0.1, 0.4, 0.5 + 5e-7)},  # inside the tolerance
        {"phase_ratio": (0, 0, 1)},  # ints, empty phases
        {"init_lr_scale": 1.0, "final_lr_scale": 1.0},  # upper bounds are allowed
        {"init_lr_scale": 1e-9, "final_lr_scale": 1e-9},
    ],
)
def test_validate_accepts_good_tri_stage(kw: dict) -> None:
    validate_schedule(tri(**kw))


def test_validate_ignores_tri_stage_keys_for_polynomial_decay() -> None:
    validate_schedule(OptimConfig())
    validate_schedule(OptimConfig(phase_ratio=[1.0], init_lr_scale=0.0, final_lr_scale=2.0))


def test_lr_schedule_is_fairseq_polynomial_decay() -> None:
    cfg = OptimConfig(lr=5e-4, warmup_updates=32_000, max_update=400_000)
    assert lr_at(0, cfg) == 0.0  # the first update: fairseq's step_update(0) before it
    assert lr_at(1, cfg) == 5e-4 / 32_000
    assert lr_at(16_000, cfg) == pytest.approx(2.5e-4)
    assert lr_at(32_000, cfg) == pytest.approx(5e-4)
    assert lr_at(216_000, cfg) == pytest.approx(2.5e-4)  # halfway down
    assert lr_at(400_000, cfg) == 0.0 and lr_at(500_000, cfg) == 0.0
    assert lr_at(0, OptimConfig(lr=1.0, warmup_updates=0, max_update=10)) == 1.0


def test_layers_dropped_in_an_update_get_no_optimizer_step(make_tiny_cfg) -> None:
    """LayerDrop: a layer skipped on every rank has no gradient, and torch's Adam leaves it
    alone (no moment decay, no weight decay), as fairseq's fp32 Adam does. fairseq's fp16
    optimizer instead steps it with a zero gradient; README "Where this project departs"."""
    from wav2vec2.tasks import build_task
    from wav2vec2.train.trainer import Trainer

    cfg = make_tiny_cfg("model.transformer.layerdrop=1.0", "optim.max_update=2", "train.validate_every=0",
                        "data.valid_subset=", "checkpoint.save_every=100")
    trainer = Trainer(cfg, build_task(cfg))
    layers = {k: v.clone() for k, v in trainer.model.encoder.layers.state_dict().items()}
    others = {k: v.clone() for k, v in trainer.model.feature_encoder.state_dict().items()}
    trainer.fit()
    assert all(torch.equal(v, trainer.model.encoder.layers.state_dict()[k]) for k, v in layers.items())
    assert not all(torch.equal(v, trainer.model.feature_encoder.state_dict()[k]) for k, v in others.items())
    layer_params = {id(p) for p in trainer.model.encoder.layers.parameters()}
    assert not any(id(p) in layer_params for p in trainer.optimizer.state)  # no Adam state at all
