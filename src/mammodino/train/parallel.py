"""Multi-process training with PyTorch's own engine: torchrun, DDP, FSDP2, gloo on CPU.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: nccl on CUDA, gloo on CPU. Without those variables it
returns a one-process context and every helper below is a no-op, so the same training code runs
on a laptop, one GPU or many nodes. Checkpoints go through `full_state_dicts` /
`load_full_state_dicts`: whole tensors keyed by parameter name, gathered on rank 0, so a run saved
with N ranks (DDP or FSDP2) resumes with any number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mammodino.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs and checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> DistributedContext:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); one process without torchrun."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    if world_size == 1:
        return DistributedContext(device=torch_device)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=timedelta(minutes=timeout_min),
            device_id=torch_device if backend == "nccl" else None,
        )
    return DistributedContext(rank, local_rank, world_size, torch_device, backend)


def cleanup_distributed(synchronize: bool = True) -> None:
    """Leave the process group. At a normal end (`synchronize`) every rank first waits for the
    others: rank 0 hosts the rendezvous store, and a rank still leaving when rank 0 has torn it
    down can abort ("terminate called without an active exception", 1 in 16 two-rank test runs
    under load). After an error, leave at once: the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if synchronize and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def is_enabled() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank."""
    if is_enabled():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no gradient); returns it."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over ranks in place (no gradient); returns it."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0, differentiably.

    Gradients flow back to each rank's own slice (summed over ranks), so a loss computed on the
    gathered tensor and averaged by DDP has the gradient of the same loss on the global batch.
    """
    if not is_enabled():
        return tensor
    from torch.distributed import _functional_collectives as funcol

    gathered = funcol.all_gather_single_autograd(tensor.contiguous(), 0, dist.group.WORLD)
    return funcol.wait_tensor(gathered)


def reduce_metrics(metrics: Mapping[str, float], device: torch.device | None = None) -> dict:
    """Means over ranks of scalar metrics (for logging on rank 0)."""
    if not is_enabled() or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    all_reduce_mean_(values)
    return dict(zip(keys, values.tolist(), strict=True))


def all_gather_objects(obj: Any) -> list[Any]:
    """A picklable object of every rank (small things: data positions, counters)."""
    if not is_enabled():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank."""
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def transformer_blocks(model: nn.Module, blocks_attr: str = "blocks") -> list[nn.Module]:
    """The transformer blocks of a ViT (or of a module holding one as `backbone`)."""
    for owner in (model, getattr(model, "backbone", None)):
        blocks = getattr(owner, blocks_attr, None) if owner is not None else None
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    raise ConfigError(f"{type(model).__name__} has no {blocks_attr!r} ModuleList to wrap per block")


def apply_activation_checkpointing(model: nn.Module, blocks_attr: str = "blocks") -> nn.Module:
    """Recompute each block's activations in backward: memory O(1 block) for ~1/3 more compute.

    The composable `checkpoint` keeps parameter names unchanged (no `_checkpoint_wrapped_module`),
    so checkpoints and optimiser groups by name are unaffected.
    """
    from torch.distributed._composable import checkpoint

    for block in transformer_blocks(model, blocks_attr):
        checkpoint(block)
    return model


def apply_fsdp2(
    model: nn.Module,
    *,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    shard_blocks: bool = True,
) -> nn.Module:
    """Shard parameters, gradients and optimiser state over ranks with FSDP2, one unit per block.

    Per-block units let rank r all-gather block k+1 while computing block k. Gradients are reduced
    in float32 whatever `param_dtype` (bf16 compute) is.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in transformer_blocks(model) if shard_blocks else []:
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def apply_replicate(module: nn.Module, ctx: DistributedContext, **ddp_kwargs: Any) -> nn.Module:
    """DDP on `module` in place (composable `replicate`): names and the object stay unchanged.

    Unlike the DistributedDataParallel wrapper, the module can still be called directly, so a
    loop that calls `student["backbone"]` twice per step (global, then local crops) needs no change.
    """
    from torch.distributed._composable import replicate

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return replicate(module, device_ids=device_ids, **ddp_kwargs)


def parallelize(
    module: nn.Module,
    ctx: DistributedContext,
    *,
    strategy: str = "ddp",
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
    trainable: bool = True,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Move to the device, then per-block checkpointing and DDP or FSDP2 (config `distributed`).

    In place: the same module comes back with the same parameter names. Call it for each module
    the loop calls (backbone, heads) rather than a container without forward; call it with
    `trainable=False` for the teacher (FSDP2 shards it like the student, so the EMA update runs on
    local shards; DDP leaves it alone: the EMA of identical students stays identical). Build the
    optimiser after this call.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed.strategy {strategy!r} is not one of {STRATEGIES}")
    module = module.to(ctx.device)
    has_blocks = isinstance(getattr(module, "blocks", None), nn.ModuleList)
    if activation_checkpointing and trainable and has_blocks:
        if hasattr(module, "activation_checkpointing"):
            module.activation_checkpointing = True  # the ViT checkpoints its own blocks
        else:
            apply_activation_checkpointing(module)
    if not ctx.enabled:
        return module
    if strategy == "fsdp":
        route_through_call(module)
        return apply_fsdp2(module, param_dtype=param_dtype, shard_blocks=has_blocks)
    if trainable:
        route_through_call(module)
        return apply_replicate(module, ctx, find_unused_parameters=find_unused_parameters)
    return module


def route_through_call(module: nn.Module, method: str = "forward_features") -> nn.Module:
    """Make `module.<method>(...)` run as `module(...)`, so DDP's and FSDP2's hooks see the call.

    Both engines act in forward hooks: DDP prepares its gradient reduction there, FSDP2 gathers
    the root's parameters. A meta-architecture that calls `backbone.forward_features(...)`
    directly would skip them (unsynchronised gradients, unsharded parameters). DINOv2 avoids this
    by calling `backbone(..., is_training=True)`; this does the same without changing the caller.
    """
    target = getattr(module, method, None)
    if target is None:
        return module
    plain_forward = module.forward

    def forward(*args: Any, _route: Any = None, **kwargs: Any) -> Any:
        return (_route or plain_forward)(*args, **kwargs)

    def routed(*args: Any, **kwargs: Any) -> Any:
        return module(*args, _route=target, **kwargs)

    module.forward = forward
    setattr(module, method, routed)
    return module


def parallelize_all(
    modules: nn.ModuleDict, ctx: DistributedContext, **kwargs: Any
) -> nn.ModuleDict:
    """`parallelize` each module of a ModuleDict (the student or the teacher), in place."""
    for child in modules.values():
        parallelize(child, ctx, **kwargs)
    return modules


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, all_ranks: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model, optimiser) state as whole CPU tensors keyed by parameter name, on rank 0.

    Other ranks get empty dicts (only rank 0 writes the checkpoint) unless `all_ranks`. Names carry
    no `module.` prefix and optimiser state is keyed by parameter name, so any world size loads it.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    # cpu_offload also keeps the gathered tensors on rank 0 only.
    options = StateDictOptions(full_state_dict=True, cpu_offload=is_enabled() and not all_ranks)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = (
        get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else {}
    )
    # Copies: on CPU the state API may return the live tensors, which the next step would change.
    return _snapshot(model_sd), _snapshot(optim_sd)


def _snapshot(tree: Any) -> Any:
    """A copy of a nested dict/list of tensors with every tensor cloned to the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, Mapping):
        return {k: _snapshot(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_snapshot(v) for v in tree)
    return tree


def load_full_state_dicts(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_sd: Mapping[str, torch.Tensor] | None,
    optim_sd: Mapping[str, Any] | None = None,
) -> None:
    """Load rank-agnostic state saved by `full_state_dicts`; every rank passes what it read.

    With several ranks only rank 0 needs to have read the file: its tensors are broadcast (and
    sharded for FSDP2); other ranks may pass empty dicts. `model_sd=None` loads the optimiser only.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=is_enabled())
    if model_sd is not None:
        set_model_state_dict(model, dict(model_sd), options=options)
    # Every rank must enter the same collectives: rank 0 says whether optimiser state follows.
    if optimizer is not None and broadcast_object(bool(optim_sd)):
        set_optimizer_state_dict(model, optimizer, dict(optim_sd or {}), options=options)


def optimizer_state_by_index(named: Mapping[str, Any]) -> dict[str, Any]:
    """Optimiser state keyed by parameter name -> torch's own format (keyed by position).

    Positions count the parameters of all groups in order, as `Optimizer.state_dict()` does, so
    a checkpoint written by N ranks loads with a plain `optimizer.load_state_dict` in 1 process.
    """
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    state = {index[name]: value for name, value in named["state"].items()}
    return {"state": state, "param_groups": groups}


def optimizer_state_by_name(indexed: Mapping[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """Torch's optimiser format -> keyed by parameter name; `names[g]` lists group g's params."""
    groups = []
    by_index: dict[int, str] = {}
    for group, group_names in zip(indexed["param_groups"], names, strict=True):
        if len(group["params"]) != len(group_names):
            raise ConfigError("optimiser state does not match the parameter groups of this model")
        by_index.update(zip(group["params"], group_names, strict=True))
        groups.append({**group, "params": list(group_names)})
    state = {by_index[int(i)]: value for i, value in indexed["state"].items()}
    return {"state": state, "param_groups": groups}


class GatherInputs(nn.Module):
    """Apply a loss to its input gathered over all ranks (KoLeo over the global batch).

    Each rank gets the global value; the gradient reaching each rank's slice is the sum over ranks,
    which DDP's average turns into the gradient of the loss of the global batch.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.loss(all_gather_cat(x), *args, **kwargs)
