"""How ranks share the model: DDP, or FSDP2 (`distributed.strategy=fsdp`), behind one object.

`ParallelModel` is what the loop holds: `.module` to call in a training step (DDP's wrapper,
or the sharded model itself), `gradient_sync(last)` around each micro-batch, and the model's
and optimizer's state as *full* state dicts, whatever the strategy.

FSDP2 is PyTorch's own `torch.distributed.fsdp.fully_shard` (per-parameter DTensor sharding
on dim 0). The units, as fairseq2's `apply_fsdp_to_wav2vec2(granularity="layer")`:
- each Transformer layer (`EncoderLayer`): most of the weights, all-gathered just before it
  runs and freed after (again in backward);
- the feature encoder (`ConvFeatureEncoder`) and the quantizer (`GumbelVectorQuantizer`):
  one unit each, kept in fp32 parameters (their norms and Gumbel softmax are fp32 islands);
- the root: what is left (positional conv, LayerNorms, projections, mask embedding, CTC head).

Precision follows `precision.dtype`. Autocast stays on exactly as under DDP; with bf16 or
fp16 the Transformer layers also get a `MixedPrecisionPolicy` that all-gathers their weights
in that dtype (half the traffic; the matmuls autocast would run in it anyway) and
reduce-scatters gradients in fp32. Forward inputs are not cast (`cast_forward_inputs=False`),
so the residual stream keeps the dtype autocast gives it under DDP.

Gradient accumulation: the non-final micro-batches of an update skip the reduce-scatter
(`set_requires_gradient_sync(False)`, FSDP2's `no_sync`), unless
`distributed.fsdp_reduce_every_micro_batch` trades traffic for sharded gradient memory.
Every rank must run as many forwards as the others (each one all-gathers), so the data
stream pads a short rank's update with zero-weight stand-ins (`data.loader.Update.padding`),
validation pads with discarded forwards, and LayerDrop draws from a generator reseeded alike
on every rank (`ContextNetwork.layerdrop_generator`). Activation checkpointing composes: the
layer's recompute runs inside FSDP's backward unshard.

Checkpoints: gathered full state dicts (`torch.distributed.checkpoint.state_dict`,
`full_state_dict=True`, offloaded to the CPU on rank 0), the optimizer's renumbered to
`torch.optim`'s own layout. A checkpoint of an FSDP run is therefore the same file as a DDP
run's: one file written by `files.atomic_write`, read by every tool (`load_model`,
`continue_from`), resumable on any world size and under either strategy. The price is that
rank 0 holds the whole model and Adam's moments in CPU memory while saving (16 bytes per
parameter: 104 GB at omniASR-W2V-7B's 6.49B, docs/training.md); past that, DCP's sharded save is the next step.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from wav2vec2.data import STREAM_LAYERDROP, batch_seed
from wav2vec2.model.feature_encoder import ConvFeatureEncoder
from wav2vec2.model.quantizer import GumbelVectorQuantizer
from wav2vec2.model.transformer import ContextNetwork, EncoderLayer
from wav2vec2.train.distributed import DistInfo, data_parallel

log = logging.getLogger("wav2vec2.train")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
"""Gather each tensor whole, to the CPU of rank 0 (the other ranks get empty dicts)."""
_FULL_IN = StateDictOptions(full_state_dict=True)
"""Every rank holds the full state (it read the checkpoint); each keeps its own shard."""


def device_mesh(info: DistInfo) -> DeviceMesh:
    """A 1-D mesh over all ranks, of the training device's type, named explicitly: with gloo
    on a machine that also has a GPU, FSDP2 would otherwise move CPU weights to CUDA
    (pytorch/pytorch#132471)."""
    return init_device_mesh(info.device.type, (info.world_size,), mesh_dim_names=("shard",))


def shard_wav2vec2(model: nn.Module, mesh: DeviceMesh, *, precision: str) -> None:
    """`fully_shard` in place: each Transformer layer, the feature encoder, the quantizer, then
    the root (children first, as FSDP2 requires). `precision`: "fp32", "bf16" or "fp16"."""
    dtype = _DTYPES.get(precision)
    layer_policy = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
                    if dtype is not None else MixedPrecisionPolicy())
    modules = list(model.modules())
    for module in modules:
        if isinstance(module, EncoderLayer):
            fully_shard(module, mesh=mesh, mp_policy=layer_policy)
    for module in modules:
        if isinstance(module, (ConvFeatureEncoder, GumbelVectorQuantizer)):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


class ParallelModel:
    """The model as the ranks share it (see the module docstring).

    `module` is what a training step calls; `model` stays the plain module (under FSDP the
    same object, its parameters now DTensor shards)."""

    def __init__(self, model: nn.Module, info: DistInfo, *, strategy: str, precision: str,
                 find_unused_parameters: bool, reduce_every_micro_batch: bool = False) -> None:
        self.model = model
        self.sharded = strategy == "fsdp" and info.is_distributed
        self.reduce_every_micro_batch = reduce_every_micro_batch
        self.layerdrop_generator: torch.Generator | None = None
        if not self.sharded:
            if strategy == "fsdp":
                log.info("distributed.strategy=fsdp with one process: nothing to shard, the model runs as is")
            self.module = data_parallel(model, info, find_unused_parameters=find_unused_parameters)
            return
        shard_wav2vec2(model, device_mesh(info), precision=precision)
        # The model's outputs (logits reshaped with view) trip FSDP2's warning about in-place
        # ops on a view of a root output; nothing here modifies them in place, and the
        # FSDP-equals-DDP tests would see a skipped all-gather.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        self.layerdrop_generator = torch.Generator()
        for module in model.modules():
            if isinstance(module, ContextNetwork):
                module.layerdrop_generator = self.layerdrop_generator
        self.module = model
        self._trained = [name for name, p in model.named_parameters() if p.requires_grad]
        """Parameter names in `build_optimizer`'s order: the optimizer's indices."""

    @property
    def even_forwards(self) -> bool:
        """Every rank must run the same number of forwards (FSDP all-gathers in each)."""
        return self.sharded

    def gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager:
        """Around one micro-batch's forward and backward: reduce gradients over ranks only
        after the update's last micro-batch (DDP's `no_sync`, FSDP2's
        `set_requires_gradient_sync`)."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last or self.reduce_every_micro_batch)
            return contextlib.nullcontext()
        if last or self.module is self.model:
            return contextlib.nullcontext()
        return self.module.no_sync()

    def seed_micro_batch(self, seed: int, *, num_updates: int, index: int) -> None:
        """Reseed the shared LayerDrop generator for micro-batch `index` of the update after
        `num_updates`: the same draws on every rank, and after a resume."""
        if self.layerdrop_generator is not None:
            self.layerdrop_generator.manual_seed(batch_seed(seed, num_updates, index, stream=STREAM_LAYERDROP))

    # ---------------------------------------------------------------- full state dicts
    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's full state dict (collective under FSDP; then only rank 0's is filled)."""
        if not self.sharded:
            return self.model.state_dict()
        return get_model_state_dict(self.model, options=_FULL)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full state dict (every rank holds it); under FSDP each rank keeps its shard."""
        if not self.sharded:
            self.model.load_state_dict(state)
            return
        set_model_state_dict(self.model, state, options=_FULL_IN)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()` with full tensors, in torch.optim's layout (parameters by
        index), whatever the strategy: collective under FSDP, then only rank 0's is filled."""
        if not self.sharded:
            return optimizer.state_dict()
        by_name = get_optimizer_state_dict(self.model, optimizer, options=_FULL)
        if not by_name:
            return {}
        index = {name: i for i, name in enumerate(self._trained)}
        return {"state": {index[name]: value for name, value in by_name["state"].items()},
                "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                                 for group in by_name["param_groups"]]}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load what `optimizer_state` returns (from a run of either strategy, any world size)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        names = self._trained
        by_name = {"state": {names[i]: value for i, value in state["state"].items()},
                   "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                    for group in state["param_groups"]]}
        set_optimizer_state_dict(self.model, optimizer, by_name, options=_FULL_IN)
