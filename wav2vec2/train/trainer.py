"""The pretraining loop: one process or many (DDP), fp32 / bf16 / fp16, exact resume.

Gradient semantics are fairseq's (spec §4): every rank back-propagates the *sum* of L over
its micro-batches' masked frames; after accumulation the gradients (averaged over ranks by
DDP) are multiplied by world_size / n_global, with n_global the all-reduced masked-frame
count. The update is therefore grad(sum of L) / n_global however the global batch is split
over ranks and micro-batches, and n need not be known before the first backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from wav2vec2.data import RawAudioDataset, TokenBudgetBatchSampler, build_dataloader
from wav2vec2.model.losses import pretraining_loss
from wav2vec2.model.quantizer import gumbel_temperature
from wav2vec2.model.wav2vec2 import Wav2Vec2Model
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train import distributed as dist_utils
from wav2vec2.train.config import TrainConfig, validate
from wav2vec2.train.metrics import (
    SUM_KEYS,
    Averager,
    MetricLogger,
    codebook_health,
    metrics_from_sums,
    setup_logging,
)
from wav2vec2.train.optim import (
    build_loss_scaler,
    build_optimizer,
    grad_norm,
    lr_at,
    scale_grads_,
    set_lr,
)
from wav2vec2.train.stream import BatchStream, batch_seed

log = logging.getLogger("wav2vec2.train")

_MASK_STREAM, _VALID_STREAM = 1, 2


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.dist = dist_utils.init_distributed(backend=cfg.distributed.backend, device=cfg.train.device)
        self.cfg = validate(cfg, world_size=self.dist.world_size)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run_dir)
        setup_logging(self.dist.is_main)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

        # Same init on every rank; then dropout streams differ per rank.
        torch.manual_seed(cfg.seed)
        self.model = Wav2Vec2Model(cfg.model).to(self.device)
        ckpt.seed_global_rngs(cfg.seed + self.dist.rank)
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.is_distributed:
            unused = cfg.distributed.find_unused_parameters
            if unused is None:
                unused = cfg.model.transformer.layerdrop > 0  # skipped layers get no grad
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=ids, find_unused_parameters=unused)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = build_loss_scaler(
            cfg.precision, world_size=self.dist.world_size, update_freq=cfg.optim.update_freq
        )
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision.dtype)
        self.generator = torch.Generator(device=self.device)

        self.stream = self._build_train_stream()
        self.valid_loader = self._build_valid_loader()
        self.num_updates = 0
        self.best_valid_loss = math.inf
        self._stop_requested = False

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(cfg, self.run_dir / "config.yaml")
        dist_utils.barrier()
        self._restore()
        self.metrics = (
            MetricLogger(self.run_dir, tensorboard=cfg.logging.tensorboard, max_update=cfg.optim.max_update,
                         start_update=self.num_updates)
            if self.dist.is_main else None
        )
        log.info("model: %s parameters; world size %d, update_freq %d, precision %s, device %s",
                 f"{sum(p.numel() for p in self.model.parameters()):,}", self.dist.world_size,
                 cfg.optim.update_freq, cfg.precision.dtype, self.device)

    # ---------------------------------------------------------------- building blocks
    def _build_train_stream(self) -> BatchStream:
        d = self.cfg.data
        dataset = RawAudioDataset(
            Path(d.manifest_dir) / f"{d.train_subset}.tsv", sample_rate=d.sample_rate,
            min_sample_size=d.min_sample_size, max_sample_size=d.max_sample_size, normalize=d.normalize,
        )
        sampler = TokenBudgetBatchSampler(
            dataset.sizes, max_tokens=d.max_tokens, max_sentences=d.max_sentences,
            required_batch_size_multiple=d.required_batch_size_multiple, seed=self.cfg.seed,
            num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, drop_last=True,
        )
        return BatchStream(dataset, sampler, seed=self.cfg.seed, num_workers=d.num_workers,
                           pin_memory=self.device.type == "cuda")

    def _build_valid_loader(self) -> torch.utils.data.DataLoader | None:
        d = self.cfg.data
        if not d.valid_subset:
            return None
        dataset = RawAudioDataset(
            Path(d.manifest_dir) / f"{d.valid_subset}.tsv", sample_rate=d.sample_rate,
            min_sample_size=d.min_sample_size, max_sample_size=d.max_sample_size, normalize=d.normalize,
        )
        # Uneven ranks are fine here: evaluation runs the unwrapped model, no collectives.
        self.valid_sampler = TokenBudgetBatchSampler(
            dataset.sizes, max_tokens=d.max_tokens, max_sentences=d.max_sentences,
            required_batch_size_multiple=d.required_batch_size_multiple, seed=self.cfg.seed,
            num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=False, drop_last=False,
        )
        return build_dataloader(dataset, self.valid_sampler, seed=self.cfg.seed, num_workers=0)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _forward(self, model: torch.nn.Module, batch: dict[str, Any], temperature: float):
        source = batch["source"].to(self.device, non_blocking=True)
        padding_mask = batch.get("padding_mask")
        if padding_mask is not None:
            padding_mask = padding_mask.to(self.device, non_blocking=True)
        with self._autocast():
            out = model(source, padding_mask=padding_mask, temperature=temperature, generator=self.generator)
        loss = pretraining_loss(out, self.cfg.model.loss)
        frames = out.time_mask.numel() if out.padding_mask is None else int((~out.padding_mask).sum())
        parts = [loss.total.detach().float(), loss.contrastive.detach(), loss.diversity.detach(),
                 loss.feature_pen.detach(), loss.correct.float(), loss.sample_size,
                 out.prob_perplexity.detach().float(), out.code_perplexity.detach().float(), 1.0,
                 source.shape[0], source.numel() if padding_mask is None else int((~padding_mask).sum()),
                 frames]
        sums = torch.stack([torch.as_tensor(p, dtype=torch.float64, device=self.device) for p in parts])
        return loss, sums

    # ---------------------------------------------------------------- one update
    def train_step(self, micro_batches: list[tuple[int, int, dict[str, Any]]]) -> dict[str, float] | None:
        """Forward/backward over this rank's micro-batches, then one optimizer update.

        Returns the update's metrics, or None when fp16 overflowed: the update is skipped
        and the update count (hence lr and Gumbel temperature) does not advance.
        """
        self.ddp_model.train()
        temperature = gumbel_temperature(self.num_updates, self.cfg.model.quantizer)
        loss_scale = self.scaler.scale if self.scaler is not None else 1.0
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64, device=self.device)
        for i, (epoch, position, batch) in enumerate(micro_batches):
            self.generator.manual_seed(batch_seed(self.cfg.seed, epoch, position, stream=_MASK_STREAM))
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.ddp_model is self.model else self.ddp_model.no_sync()
            with sync:
                loss, part = self._forward(self.ddp_model, batch, temperature)
                (loss.total * loss_scale).backward()
            sums += part
        sums = dist_utils.all_reduce_sum(sums)
        n = float(sums[SUM_KEYS.index("masked_frames")])
        # DDP averaged over ranks: x world / n turns the summed-L gradient into a per-frame mean.
        scale_grads_(self.params, self.dist.world_size / (n * loss_scale))
        gnorm = grad_norm(self.params, self.cfg.optim.clip_norm)
        overflow = not math.isfinite(gnorm)
        if self.scaler is not None:
            self.scaler.update(overflow)
            if overflow:
                log.warning("fp16 overflow at update %d: skipped, loss scale now %g",
                            self.num_updates + 1, self.scaler.scale)
                self.optimizer.zero_grad(set_to_none=True)
                return None
        elif overflow:
            raise FloatingPointError(f"non-finite gradient norm at update {self.num_updates + 1}")
        lr = lr_at(self.num_updates, self.cfg.optim)
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.num_updates += 1
        metrics = metrics_from_sums(sums, sample_rate=self.cfg.data.sample_rate)
        metrics.update(temperature=temperature, lr=lr, grad_norm=gnorm)
        if self.scaler is not None:
            metrics["loss_scale"] = loss_scale
        return metrics

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Validation loss in eval mode (hard codes, no dropout) with masking still on.

        Masks come from a generator reseeded per batch, so every validation of a run sees the
        same masks and the curves compare like with like.
        """
        if self.valid_loader is None:
            return None
        self.model.eval()
        temperature = gumbel_temperature(self.num_updates, self.cfg.model.quantizer)
        sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64, device=self.device)
        self.valid_sampler.set_epoch(1)
        for i, batch in enumerate(self.valid_loader):
            if self.cfg.train.max_valid_batches and i >= self.cfg.train.max_valid_batches:
                break
            position = self.dist.rank + i * self.dist.world_size
            self.generator.manual_seed(batch_seed(self.cfg.seed, 0, position, stream=_VALID_STREAM))
            sums += self._forward(self.model, batch, temperature)[1]
        sums = dist_utils.all_reduce_sum(sums)
        if sums[SUM_KEYS.index("masked_frames")] == 0:
            return None
        metrics = metrics_from_sums(sums, sample_rate=self.cfg.data.sample_rate)
        metrics.pop("audio_sec")
        metrics["temperature"] = temperature
        return metrics

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float] | None:
        """Train to `optim.max_update` (or `train.stop_at_update`, a time limit or SIGTERM),
        validating and checkpointing on the way. Returns the last validation metrics."""
        cfg = self.cfg
        end = min(cfg.optim.max_update, cfg.train.stop_at_update or cfg.optim.max_update)
        if self.num_updates >= end:
            log.info("run already at update %d of %d: nothing to do", self.num_updates, end)
            return None
        previous_handlers = self._install_signal_handlers()
        t_start = time.monotonic()
        averager = Averager()
        valid: dict[str, float] | None = None
        validated_at = -1
        micro_epoch = self.stream.epoch
        new_best = False
        while self.num_updates < end:
            t0 = time.monotonic()
            micro = [self.stream.next() for _ in range(cfg.optim.update_freq)]
            data_wait = time.monotonic() - t0
            metrics = self.train_step(micro)
            if metrics is None:
                continue
            metrics["data_wait_sec"] = data_wait
            metrics["audio_sec_per_sec"] = metrics.pop("audio_sec") / (time.monotonic() - t0)
            averager.add(metrics)
            u = self.num_updates
            if u % cfg.logging.log_every == 0 or u == end:
                self._log("train", averager.mean())
                averager.reset()
            new_epoch = micro[-1][0] > micro_epoch
            micro_epoch = micro[-1][0]
            if (cfg.train.validate_every and u % cfg.train.validate_every == 0) or (
                cfg.train.validate_every_epoch and new_epoch
            ):
                valid, validated_at = self._validate(), u
                new_best = self._is_best(valid)
            else:
                new_best = False
            stop = self._should_stop(t_start)
            snapshot = u % cfg.checkpoint.save_every == 0
            refresh = cfg.checkpoint.save_last_every and u % cfg.checkpoint.save_last_every == 0
            if (snapshot or refresh or stop or new_best) and u < end:
                self.save(snapshot=snapshot, best=new_best)
            if stop:
                log.info("stopping at update %d (time limit or signal); resume by rerunning", u)
                break
        if self.num_updates == end:
            if validated_at != self.num_updates:
                valid = self._validate()
                new_best = self._is_best(valid)
            snapshot = self.num_updates % cfg.checkpoint.save_every == 0
            self.save(snapshot=snapshot, best=new_best)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if self.metrics is not None:
            self.metrics.close()
        return valid

    def _validate(self) -> dict[str, float] | None:
        valid = self.evaluate()
        if valid is not None:
            best = min(self.best_valid_loss, valid["loss"])
            valid["best_loss"] = best
            self._log("valid", valid)
        return valid

    def _is_best(self, valid: dict[str, float] | None) -> bool:
        if valid is None or not valid["loss"] < self.best_valid_loss:
            return False
        self.best_valid_loss = valid["loss"]
        return True

    def _log(self, split: str, metrics: dict[str, float]) -> None:
        if self.metrics is None:
            return
        self.metrics.log(split, self.num_updates, metrics)
        for warning in codebook_health(
            metrics, num_codebooks=self.cfg.model.quantizer.num_codebooks,
            num_negatives=self.cfg.model.num_negatives,
            after_warmup=self.num_updates > self.cfg.optim.warmup_updates,
            collapse_factor=self.cfg.logging.collapse_factor, chance_margin=self.cfg.logging.chance_margin,
        ):
            log.warning("[%s %d] %s", split, self.num_updates, warning)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM / SIGUSR1 (SLURM preemption) ask for a checkpoint at the next update."""
        def request_stop(signum: int, frame: Any) -> None:
            self._stop_requested = True

        previous = {}
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                with contextlib.suppress(ValueError):  # not the main thread
                    previous[sig] = signal.signal(sig, request_stop)
        return previous

    def _should_stop(self, t_start: float) -> bool:
        limit = self.cfg.train.time_limit_minutes
        stop = self._stop_requested or (limit > 0 and time.monotonic() - t_start > 60 * limit)
        # One rank's signal must stop them all at the same update.
        flag = dist_utils.all_reduce_sum(torch.tensor([float(stop)], device=self.device))
        return bool(flag.item() > 0)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: collective (all ranks must call it)."""
        rng = dist_utils.all_gather_object(ckpt.rng_state())
        return {
            "version": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "num_updates": self.num_updates,
            "best_valid_loss": self.best_valid_loss,
            "data": self.stream.state_dict(),
            "rng": rng,
            "world_size": self.dist.world_size,
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self, *, snapshot: bool, best: bool) -> None:
        state = self.state_dict()
        if self.dist.is_main:
            ckpt.save(self.run_dir, state, snapshot=snapshot, best=best, keep_last=self.cfg.checkpoint.keep_last)
        dist_utils.barrier()

    def _restore(self) -> None:
        """Resume from `run_dir` if it holds a checkpoint, else start from
        `checkpoint.continue_from` with its resets, else start fresh."""
        found = ckpt.load_latest(self.run_dir)
        c = self.cfg.checkpoint
        if found is not None:
            path, state = found
            resets = dict(optimizer=False, schedule=False, dataloader=False, rng=False)
        elif c.continue_from:
            path = Path(c.continue_from)
            state = ckpt.load(path)
            resets = dict(optimizer=c.reset_optimizer, schedule=c.reset_schedule,
                          dataloader=c.reset_dataloader, rng=True)
        else:
            return
        ckpt.check_same_architecture(state.get("config", {}).get("model"), dataclasses.asdict(self.cfg.model), path)
        self.model.load_state_dict(state["model"])
        if not resets["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("loss_scaler"):
                self.scaler.load_state_dict(state["loss_scaler"])
        if not resets["schedule"]:
            self.num_updates = int(state["num_updates"])
        if not resets["dataloader"]:
            try:
                self.stream.load_state_dict(state["data"])
            except ValueError as err:  # other world size or batching: position is meaningless
                log.warning("cannot restore the data position (%s); starting the next epoch", err)
                self.stream.epoch, self.stream.consumed = state["data"]["epoch"] + 1, 0
        if not resets["rng"]:
            self.best_valid_loss = float(state.get("best_valid_loss", math.inf))
            if state.get("world_size") == self.dist.world_size:
                ckpt.set_rng_state(state["rng"][self.dist.rank])
            else:
                log.warning("checkpoint from %s ranks, now %s: RNG streams restart", state.get("world_size"),
                            self.dist.world_size)
        log.info("restored %s at update %d (resets: %s)", path, self.num_updates,
                 [k for k, v in resets.items() if v] or "none")


def _write_config(cfg: TrainConfig, path: Path) -> None:
    from omegaconf import OmegaConf

    ckpt.atomic_write(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)).encode())

