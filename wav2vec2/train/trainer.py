"""The training loop: any task, one process or many (DDP), fp32 / bf16 / fp16, exact resume.

What is trained is the task's business (`wav2vec2.tasks`; the contract between the two is
written in `tasks/base.py`): its model, data, loss and metrics. The loop owns everything
else: devices, DDP or FSDP (`sharding.py`), gradient accumulation without a reduction
per micro-batch, precision and loss scaling,
clipping, the lr schedule, logging, the validation cadence and checkpoints. What is not the
loop itself sits beside it: `sums.py` (an update's sums, the task's apart from the loop's),
`resume.py` (which checkpoint a run starts from, and whether it fits), `checkpoint.py`
(the files), `stopping.py` (signals, time limit), `faults.py` (inf/nan updates, bad files).

Gradient semantics are fairseq's (`trainer.py`, `train_step`): every rank back-propagates the *sum* of the
loss over its micro-batches; after accumulation the gradients (averaged over ranks by DDP)
are multiplied by world_size / n_global, with n_global the all-reduced sample size (masked
frames in pretraining, utterances in CTC fine-tuning). The update is therefore
grad(sum of L) / n_global however the global batch is split over ranks and micro-batches,
and n need not be known before the first backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from wav2vec2.config import TrainConfig, validate
from wav2vec2.data import (
    STREAM_TRAIN, STREAM_VALID, BatchStream, TokenBudgetBatchSampler, batch_seed, build_dataloader, make_batch_sampler,
)
from wav2vec2.files import atomic_write
from wav2vec2.tasks.base import Task
from wav2vec2.train import cadence, checkpoint as ckpt, distributed as dist_utils, resume, rng
from wav2vec2.train.sharding import ParallelModel
from wav2vec2.train.faults import BadFileLog, NonFiniteSkips
from wav2vec2.train.metrics import (Averager, MetricLogger, add_throughput, hold_log, log_to_file, setup_logging,
                                    stop_log_to_file, update_flops)
from wav2vec2.train.optim import (
    build_loss_scaler, build_optimizer, grad_norm, lr_at, resolve_precision, scale_grads_, set_lr,
)
from wav2vec2.train.plots import summary
from wav2vec2.train.stopping import StopRequests
from wav2vec2.train.sums import Sums, batch_counts, nothing, refuse_reserved

log = logging.getLogger("wav2vec2.train")


class Trainer:
    """One run of one task: built (and restored) from the config, trained by `fit()`."""

    def __init__(self, cfg: TrainConfig, task: Task) -> None:
        self.dist = dist_utils.init_distributed(backend=cfg.distributed.backend, device=cfg.train.device,
                                                timeout_minutes=cfg.distributed.timeout_minutes)
        setup_logging(self.dist.is_main)
        held_log = hold_log() if self.dist.is_main else None  # for train.log, once run_dir exists
        task.prepare()  # may fix the architecture (a pretrained model's), so before anything else
        self.cfg = validate(cfg, world_size=self.dist.world_size)
        self.task = task
        self.device = self.dist.device
        self.run_dir = Path(cfg.run_dir)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            rng.set_deterministic()

        # Same init on every rank; then dropout streams differ per rank.
        torch.manual_seed(cfg.seed)
        self.model = task.build_model().to(self.device)
        rng.seed_global_rngs(cfg.seed + self.dist.rank)
        unused = cfg.distributed.find_unused_parameters
        self.precision = resolve_precision(cfg.precision.dtype, self.device)
        self.parallel = ParallelModel(
            self.model, self.dist, strategy=cfg.distributed.strategy, precision=self.precision,
            find_unused_parameters=task.has_unused_parameters() if unused is None else unused,
            reduce_every_micro_batch=cfg.distributed.fsdp_reduce_every_micro_batch)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # FSDP: their shards
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
            torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
        self.scaler = build_loss_scaler(
            cfg.precision, world_size=self.dist.world_size, update_freq=cfg.optim.update_freq,
            dtype=self.precision,
        )
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.generator = torch.Generator(device=self.device)

        self.stream = self._build_train_stream()
        self.valid_loader = self._build_valid_loader()
        self.num_updates = 0
        self.best_valid = -math.inf if task.higher_is_better else math.inf
        self.nonfinite = NonFiniteSkips(limit=cfg.train.max_consecutive_nonfinite, run_dir=self.run_dir,
                                        rank=self.dist.rank)
        self.num_bad_files = 0
        """Files the data pipeline replaced (`data.bad_files: skip`), over all ranks and the whole run."""
        self.update_audio_sec = 0.0
        """Seconds of audio (all ranks, unpadded) in the last update: the loop's throughput."""
        self.update_flops: float | None = None
        """This rank's analytical FLOPs in the last update (`Task.update_flops`), counted only
        when `logging.peak_tflops` is set (for the MFU); None otherwise or when unknown."""
        self.bad_file_log = BadFileLog(self.run_dir, self.dist.rank)
        self.stop_reason: str | None = None
        """Why the last `fit` ended before `optim.max_update` / `train.stop_at_update`, with a
        checkpoint written: "preempted" (SIGTERM, SIGUSR1, `train.time_limit_minutes`) or
        "interrupted" (Ctrl-C); None when it ran to the end. The CLI's exit status follows it."""

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = log_to_file(self.run_dir / "train.log", held_log)
            atomic_write(self.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)).encode())
        dist_utils.barrier()
        self._restore()
        self.metrics = (
            MetricLogger(self.run_dir, tensorboard=cfg.logging.tensorboard, max_update=cfg.optim.max_update,
                         start_update=self.num_updates, console=task.console)
            if self.dist.is_main else None
        )
        log.info("task %s; model: %s parameters (%s trained); world size %d, update_freq %d, precision %s, "
                 "device %s", task.name, f"{sum(p.numel() for p in self.model.parameters()):,}",
                 f"{sum(p.numel() for p in self.params):,}", self.dist.world_size, cfg.optim.update_freq,
                 self.precision, self.device)

    # ---------------------------------------------------------------- building blocks
    def _sampler(self, dataset: Any, *, train: bool) -> TokenBudgetBatchSampler:
        d = self.cfg.data
        # Every batch is dealt, ranks uneven (fairseq): training pads the short ranks with a
        # stand-in batch (`data.loader.Update`); validation runs the unwrapped model, no collectives.
        return make_batch_sampler(  # shard by shard for `data.train_shards`
            dataset, shuffle_buffer=d.shuffle_buffer, max_tokens=d.max_tokens, describe=dataset.describe,
            sample_rate=d.sample_rate,
            max_sentences=d.max_sentences, required_batch_size_multiple=d.required_batch_size_multiple,
            seed=self.cfg.seed, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=train,
            drop_last=train and self.cfg.optim.updates_span_epochs,  # updates across epochs: even ranks
        )

    def _build_train_stream(self) -> BatchStream:
        dataset = self.task.build_dataset(self.cfg.data.train_subset)
        self.train_dataset = dataset  # for messages naming a batch's files
        return BatchStream(dataset, self._sampler(dataset, train=True), seed=self.cfg.seed,
                           update_freq=self.cfg.optim.update_freq, spans_epochs=self.cfg.optim.updates_span_epochs,
                           num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                           timeout=60 * self.cfg.distributed.timeout_minutes,  # a hung worker, as a hung peer
                           even_forwards=self.parallel.even_forwards)

    def _build_valid_loader(self) -> torch.utils.data.DataLoader | None:
        if not self.cfg.data.valid_subset:
            return None
        dataset = self.task.build_dataset(self.cfg.data.valid_subset)
        self.valid_sampler = self._sampler(dataset, train=False)
        return build_dataloader(dataset, self.valid_sampler, seed=self.cfg.seed, num_workers=0)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    # ---------------------------------------------------------------- one update
    def train_step(self, micro_batches: list[tuple[int, int, dict[str, Any]]], *,
                   stand_in: bool = False, padding: int = 0) -> dict[str, float] | None:
        """Forward/backward over this rank's micro-batches, then one optimizer update.
        With `stand_in` (`data.loader.Update`), the micro-batches count for nothing, and so do
        the last `padding` ones: their loss is back-propagated at zero weight, so that this
        rank joins the all-reduce (and under FSDP runs as many forwards as the others).

        Returns the update's metrics, or None when the update is skipped: fp16 overflowed
        (the loss scaler lowers its scale), or in fp32/bf16 the loss or gradient norm is
        not finite (`faults.NonFiniteSkips`). A skipped update leaves the weights, the
        optimizer and the update count (hence lr and any schedule of the task) as they
        were; its batches are consumed all the same.
        """
        self.parallel.module.train()
        loss_scale = self.scaler.scale if self.scaler is not None else 1.0
        self.optimizer.zero_grad(set_to_none=True)
        sums = Sums(self.task, self.device)
        counted: list[tuple[dict[str, Any], Any]] | None = [] if self.cfg.logging.peak_tflops > 0 else None
        for i, (epoch, position, batch) in enumerate(micro_batches):
            self.generator.manual_seed(batch_seed(self.cfg.seed, epoch, position, stream=STREAM_TRAIN))
            self.parallel.seed_micro_batch(self.cfg.seed, num_updates=self.num_updates, index=i)
            zero_weight = stand_in or i >= len(micro_batches) - padding
            num_bad = self.bad_file_log.take(batch, update=self.num_updates + 1)
            counts = batch_counts(batch)
            with self.parallel.gradient_sync(last=i == len(micro_batches) - 1):
                with self._autocast():
                    out = self.task.loss(self.parallel.module, self._to_device(batch), num_updates=self.num_updates,
                                         generator=self.generator)
                (out.loss * (0.0 if zero_weight else loss_scale)).backward()
            if zero_weight:  # fairseq's dummy batch: in the all-reduce, out of every sum
                out, counts = nothing(out), dict.fromkeys(counts, 0)
            elif counted is not None:
                counted.append((batch, out.sample_size))
            # The back-propagated loss joins the sums, so its finiteness is decided on the
            # all-reduced total: the same on every rank, and no host sync per micro-batch.
            sums.add(out.sums, sample_size=out.sample_size, loss=out.loss.detach(), bad_files=num_bad, **counts)
        task_sums, loop_sums = sums.all_reduce()
        self.num_bad_files += int(loop_sums["bad_files"])
        loss_sum = loop_sums["loss"]
        n = task_sums["sample_size"]
        # DDP averaged over ranks: x world / n turns the summed-loss gradient into a per-sample mean.
        scale_grads_(self.params, self.dist.world_size / (n * loss_scale))
        gnorm = grad_norm(self.params, self.cfg.optim.clip_norm)  # all-reduced grads: agrees on all ranks
        nonfinite = not (math.isfinite(gnorm) and math.isfinite(loss_sum))
        if self.scaler is not None:
            self.scaler.update(nonfinite)
            if nonfinite:
                log.warning("fp16 overflow at update %d: skipped, loss scale now %g",
                            self.num_updates + 1, self.scaler.scale)
                self.optimizer.zero_grad(set_to_none=True)
                return None
        elif nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            files = [self.train_dataset.describe(int(i)) for _, _, batch in micro_batches for i in batch["id"]]
            self.nonfinite.skipped(self.num_updates + 1, loss_sum=loss_sum, grad_norm=gnorm, files=files)
            return None
        self.nonfinite.in_a_row = 0
        lr = lr_at(self.num_updates, self.cfg.optim)
        set_lr(self.optimizer, lr)
        metrics = self.task.metrics(task_sums, num_updates=self.num_updates)
        refuse_reserved(self.task, metrics, "metric")
        self.optimizer.step()
        self.num_updates += 1
        self.update_audio_sec = loop_sums["audio_samples"] / self.cfg.data.sample_rate
        self.update_flops = update_flops(self.task, counted, self.num_updates - 1)
        metrics.update(utterances=loop_sums["utterances"], lr=lr, grad_norm=gnorm)
        if self.scaler is not None:
            metrics["loss_scale"] = loss_scale
        return metrics

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Validation metrics in eval mode, over the whole valid set of every rank.

        The task's generator is reseeded per batch, so every validation of a run sees the
        same random draws (pretraining's masks) and the curves compare like with like.
        """
        if self.valid_loader is None:
            return None
        self.model.eval()
        sums = Sums(self.task, self.device)
        self.valid_sampler.set_epoch(1)
        cap, num_run = self.cfg.train.max_valid_batches, 0
        for i, batch in enumerate(self.valid_loader):
            if cap and i >= cap:
                break
            num_run += 1
            position = self.dist.rank + i * self.dist.world_size
            self.generator.manual_seed(batch_seed(self.cfg.seed, 0, position, stream=STREAM_VALID))
            self.bad_file_log.take(batch, update=self.num_updates + 1)
            counts = batch_counts(batch)
            with self._autocast():
                out = self.task.valid_step(self.model, self._to_device(batch), num_updates=self.num_updates,
                                           generator=self.generator)
            sums.add(out.sums, sample_size=out.sample_size, **counts)
        if self.parallel.even_forwards:  # FSDP: as many forwards as rank 0, whose share is never shorter
            batches = self.valid_sampler.epoch_batches(1)
            wanted = -(-len(batches) // self.dist.world_size)
            for _ in range((min(wanted, cap) if cap else wanted) - num_run):
                batch = self.valid_loader.dataset[(0, batches[0].tolist())]
                batch.pop("bad_files", None)  # reported by the rank that validates it
                with self._autocast():
                    self.task.valid_step(self.model, self._to_device(batch), num_updates=self.num_updates,
                                         generator=self.generator)  # results dropped
        task_sums, loop_sums = sums.all_reduce(uneven=True)
        if task_sums.get("sample_size", 0) == 0:
            return None
        metrics = self.task.valid_metrics(task_sums, num_updates=self.num_updates)
        refuse_reserved(self.task, metrics, "metric")
        metrics["utterances"] = loop_sums["utterances"]
        return metrics

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float] | None:
        """Train to `optim.max_update` (or `train.stop_at_update`, a time limit or SIGTERM),
        validating and checkpointing on the way. Returns the last validation metrics.

        `stop_reason` says afterwards whether (and why) it stopped early. An error (too
        many non-finite updates, a checkpoint that cannot be written) propagates, leaving
        the last checkpoint as it was."""
        cfg = self.cfg
        end = min(cfg.optim.max_update, cfg.train.stop_at_update or cfg.optim.max_update)
        self.stop_reason = None
        if self.num_updates >= end:
            log.info("run already at update %d of %d: nothing to do", self.num_updates, end)
            return None
        try:
            if self.num_updates == 0 and cfg.train.validate_at_start:  # a continued run's yardstick;
                self.save(snapshot=False, best=self._validate()[1])  # the source is its first best
            with StopRequests(time_limit_minutes=cfg.train.time_limit_minutes, device=self.device) as stop:
                return self._loop(end, stop)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            stop_log_to_file(getattr(self, "_log_file", None))
            self._log_file = None

    def _loop(self, end: int, stop_requests: StopRequests) -> dict[str, float] | None:
        cfg = self.cfg
        averager = Averager(weights=self.task.interval_weights)
        valid: dict[str, float] | None = None
        while self.num_updates < end:
            t0 = time.monotonic()
            update = self.stream.next_update()
            data_wait = time.monotonic() - t0
            metrics = self.train_step(update.micro_batches, stand_in=update.stand_in, padding=update.padding)
            u = self.num_updates
            last = u == end  # always logged, validated and checkpointed
            if metrics is not None:
                metrics["data_wait_sec"] = data_wait
                add_throughput(metrics, audio_sec=self.update_audio_sec, seconds=time.monotonic() - t0,
                               world_size=self.dist.world_size, flops=self.update_flops,
                               peak_tflops=cfg.logging.peak_tflops)
                averager.add(metrics)
                if u % cfg.logging.log_every == 0 or last:
                    self._log("train", {**averager.mean(), **self._run_counts()})
                    averager.reset()
            due = cadence.due(u, epoch=update.epoch, end_of_epoch=update.end_of_epoch, last=last,
                              updated=metrics is not None, loop=cfg.train, checkpoint=cfg.checkpoint)
            valid, new_best = self._validate() if due.validate else (valid, False)
            stop = stop_requests.reason()
            refresh = metrics is not None and cfg.checkpoint.save_last_every and u % cfg.checkpoint.save_last_every == 0
            if due.save or refresh or stop or new_best:
                self.save(snapshot=due.snapshot, best=new_best)
            if stop and not last:
                self.stop_reason = stop
                log.info("stopped at update %d with a checkpoint; rerun the same command to resume", u)
                break
        if self.num_updates == end and self.metrics is not None and self.metrics.history:
            lines, _ = summary(self.run_dir, self.task, self.metrics.history)
            log.info("summary of %s\n%s", self.run_dir, "\n".join(lines))
        return valid

    def _run_counts(self) -> dict[str, int]:
        """Run totals that join the train rows once they are non-zero (rows of a clean run
        stay as they were): skipped non-finite updates and replaced bad files."""
        counts = {"nonfinite_skips": self.nonfinite.total, "bad_files": self.num_bad_files}
        return {k: v for k, v in counts.items() if v}

    def _validate(self) -> tuple[dict[str, float] | None, bool]:
        """Validate and log; the metrics (None without a valid set) and whether they are the
        best so far by the task's `best_metric` (then `best_valid` is theirs)."""
        valid = self.evaluate()
        if valid is None:
            return None, False
        value = valid[self.task.best_metric]
        better = value > self.best_valid if self.task.higher_is_better else value < self.best_valid
        if better:
            self.best_valid = value
        valid[f"best_{self.task.best_metric}"] = self.best_valid
        self._log("valid", valid)
        return valid, better

    def _log(self, split: str, metrics: dict[str, float]) -> None:
        if self.metrics is None:
            return
        self.metrics.log(split, self.num_updates, metrics)
        for warning in self.task.health(self.metrics.history):
            log.warning("[%s %d] %s", split, self.num_updates, warning)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: collective (all ranks must call it)."""
        rng_states = dist_utils.all_gather_object(rng.rng_state())
        return {
            "version": resume.CHECKPOINT_VERSION,
            "task": self.task.name,
            "task_state": self.task.state_dict(),
            "model": self.parallel.model_state(),  # full tensors, whatever the strategy
            "optimizer": self.parallel.optimizer_state(self.optimizer),
            "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "num_updates": self.num_updates,
            "nonfinite_skips": self.nonfinite.total,
            "bad_files": self.num_bad_files,
            "best_valid_metric": {"name": self.task.best_metric, "value": self.best_valid},
            "data": self.stream.state_dict(),
            "rng": rng_states,
            "world_size": self.dist.world_size,
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self, *, snapshot: bool, best: bool) -> None:
        """Write `checkpoint_last` (and a snapshot, `checkpoint_best`): a collective, every
        rank raises CheckpointWriteError if rank 0 could not write (`checkpoint.save_from_rank0`)."""
        ckpt.save_from_rank0(self.run_dir, self.state_dict(), is_main=self.dist.is_main, device=self.device,
                             snapshot=snapshot, best=best, keep_last=self.cfg.checkpoint.keep_last)

    def _restore(self) -> None:
        """Resume from `run_dir`, continue from a checkpoint or from the task's source model
        (`resume.restore`), or start fresh."""
        resume.restore(self)
