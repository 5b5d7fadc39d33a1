"""Process groups for multi-GPU / multi-node training, on torch.distributed's own machinery.

Two ways in, both standard:

- ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``):
  each process joins with ``init_method="env://"``.
- detectron2's flags (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``):
  :func:`launch` starts one worker per device with ``torch.multiprocessing.start_processes``
  and each joins the group at ``--dist-url`` with its global rank, as detectron2's ``launch`` does.

NCCL on CUDA, gloo on CPU (so multi-process training can be tested without a GPU).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

_local_rank = 0
_local_world_size = 1


class LaunchError(RuntimeError):
    """Flags that cannot describe a process group (message says which and why)."""


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    """Index of this process on its machine (selects the GPU)."""
    return _local_rank if is_initialized() else 0


def get_local_world_size() -> int:
    return _local_world_size if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all ranks; a no-op in a single process."""
    if is_initialized() and get_world_size() > 1:
        if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (e.g. a random seed all ranks must share)."""
    if not is_initialized() or get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a (detached) tensor; NaN/inf on any rank shows up on every rank."""
    if not is_initialized() or get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / get_world_size()


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def find_free_port() -> int:
    """A port the OS just gave out on localhost (another process could still take it: a rare race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_from_environment(device_type: str, timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """Join the group described by torchrun's environment variables (``env://``)."""
    global _local_rank, _local_world_size
    _local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    # torchrun sets OMP_NUM_THREADS for its workers itself: threads are left alone here.
    _bind_device(device_type, _local_rank, share_cores=False)
    dist.init_process_group(backend_for(device_type), init_method="env://", timeout=timeout)
    logger.info("joined process group via env:// as rank %d of %d (local rank %d)",
                dist.get_rank(), dist.get_world_size(), _local_rank)


def _bind_device(device_type: str, local_rank: int, share_cores: bool = True) -> None:
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise LaunchError(f"local rank {local_rank} needs GPU {local_rank}, but only "
                              f"{torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
    elif share_cores:
        # Workers on one machine share its cores: without this each would start all-core thread pools.
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(_local_world_size, 1)))


def validate_launch(num_gpus_per_machine: int, num_machines: int, machine_rank: int, dist_url: str,
                    device_type: str) -> None:
    """Fail before any process starts when the flags cannot work."""
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise LaunchError("--num-gpus and --num-machines must be at least 1")
    if not 0 <= machine_rank < num_machines:
        raise LaunchError(f"--machine-rank {machine_rank} must be in [0, {num_machines - 1}]")
    if num_machines > 1 and dist_url.startswith("auto"):
        raise LaunchError("multi-machine training needs --dist-url tcp://<address of machine 0>:<port>; "
                          "'auto' only works on one machine")
    if device_type == "cuda":
        available = torch.cuda.device_count()
        if available == 0:
            raise LaunchError("MODEL.DEVICE is cuda but no CUDA device is available; add "
                              "'MODEL.DEVICE cpu' to train on the CPU")
        if num_gpus_per_machine > available:
            raise LaunchError(f"--num-gpus {num_gpus_per_machine} but only {available} CUDA devices are visible")


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
    device_type: str = "cuda",
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run ``main_func(*args)`` in every process of the job; returns its result in a single process.

    Under torchrun the current process simply joins the group. With a world size of one nothing
    distributed happens. Otherwise ``num_gpus_per_machine`` workers start here (``spawn``: fresh
    interpreters, so ``main_func`` and ``args`` must be picklable); the call returns None when
    they all succeed and raises :class:`WorkerFailed` (with the exit code) when one does not.
    """
    if launched_by_torchrun():
        init_from_environment(device_type, timeout)
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()
    validate_launch(num_gpus_per_machine, num_machines, machine_rank, dist_url, device_type)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        if device_type == "cuda":
            torch.cuda.set_device(0)
        return main_func(*args)
    if dist_url.startswith("auto"):
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    logger.info("starting %d workers on this machine (rank %d of %d machines), rendezvous at %s",
                num_gpus_per_machine, machine_rank, num_machines, dist_url)
    context = mp.start_processes(
        _worker, nprocs=num_gpus_per_machine, join=False, start_method="spawn",
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args),
              device_type, timeout),
    )
    return _join(context)


class WorkerFailed(RuntimeError):
    """A spawned worker exited with a non-zero code (its own log says why)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _join(context: mp.ProcessContext) -> None:
    interrupted = False
    while True:
        try:
            if context.join():
                break
        except KeyboardInterrupt:
            # The workers got the same Ctrl-C and are saving a checkpoint: wait for them.
            interrupted = True
            logger.warning("interrupted: waiting for the workers to save and stop")
        except mp.ProcessExitedException as error:
            raise WorkerFailed(f"worker {error.error_index} exited with code {error.exit_code}",
                               error.exit_code or 1) from None
        except mp.ProcessRaisedException as error:
            raise WorkerFailed(f"worker {error.error_index} failed:\n{error}", 1) from None
    if interrupted:
        raise KeyboardInterrupt


def _worker(local_rank: int, main_func: Callable[..., Any], world_size: int, num_gpus_per_machine: int,
            machine_rank: int, dist_url: str, args: tuple, device_type: str, timeout: timedelta) -> None:
    global _local_rank, _local_world_size
    _local_rank, _local_world_size = local_rank, num_gpus_per_machine
    rank = machine_rank * num_gpus_per_machine + local_rank
    _bind_device(device_type, local_rank)
    try:
        dist.init_process_group(backend_for(device_type), init_method=dist_url, world_size=world_size,
                                rank=rank, timeout=timeout)
    except Exception as error:
        raise LaunchError(f"rank {rank}: could not join the process group at {dist_url}: {error}") from error
    try:
        synchronize()
        result = main_func(*args)
    finally:
        dist.destroy_process_group()
    if isinstance(result, int) and result != 0:
        sys.exit(result)
