"""Data-parallel training on ``torch.distributed`` (``lc.train(..., workers=N)``,
``lincompile train --workers N``; docs/data-parallel.md).

Every process runs the same loop on the same shuffled minibatches. At each step a process
takes its contiguous shard of the batch, runs the gradient graph of the split training step
(:class:`~.training.SplitTraining`), and the processes all-reduce ``Σ shard_rows · P.grad``
(and the loss) in float64; divided by the batch's rows that is the gradient of the whole
batch's mean, exact for an uneven last batch too. Every process then runs the update graph on
the same numbers, so the parameters stay identical without being sent; rank 0 prints and writes.

The transport is torch's: gloo on CPU targets, NCCL when the target is ``cuda`` (and torch has
CUDA). Outside ``torchrun`` the N processes are started here on this machine (spawned, with a
rendezvous on 127.0.0.1 only); under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process
joins its group. torch is imported only when more than one worker is asked for.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from .backends import compile
from .errors import LincompileError
from .training import SplitTraining

#: How long spawned workers may take to start (import torch, connect) and to finish after
#: rank 0 is done, before they are stopped.
START_TIMEOUT_S, JOIN_TIMEOUT_S = 300.0, 120.0
_READY = "lincompile.ready"


class DistributedError(LincompileError):
    """Data-parallel training cannot start or a worker failed."""


@dataclass(frozen=True)
class Worker:
    """This process's place in a data-parallel run (passed as ``train(workers=...)``)."""

    rank: int
    size: int
    backend: str
    local_rank: int = 0

    def __str__(self) -> str:
        return f"{self.size} workers ({self.backend})"

    def step(self, pair: SplitTraining, target: str, options: dict | None = None
             ) -> DataParallelStep:
        return DataParallelStep(pair, target, self, options)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def torch_distributed():
    """``torch.distributed``, or one line saying how to get it."""
    try:
        import torch.distributed as dist
    except ImportError:
        raise DistributedError("data-parallel training (workers > 1) needs torch: "
                               "pip install torch") from None
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; data-parallel "
                               "training (workers > 1) needs one (pip install torch)")
    return dist


def world_size(workers: int | None) -> int:
    """How many processes train: ``workers``, or under torchrun (``workers=None``) its
    ``WORLD_SIZE``; checks that torch is there when that is more than one."""
    if isinstance(workers, Worker):
        return workers.size
    if workers is not None and (isinstance(workers, bool) or not isinstance(
            workers, (int, np.integer)) or workers < 1):
        raise DistributedError(f"workers must be an integer ≥ 1, got {workers!r}")
    env = int(os.environ["WORLD_SIZE"]) if under_torchrun() else None
    if workers is None:
        n = env or 1
    elif env is not None and workers not in (1, env):
        raise DistributedError(f"workers={workers}, but torchrun started {env} processes "
                               "(WORLD_SIZE); leave workers out under torchrun")
    else:
        n = int(workers)
    if n > 1:
        torch_distributed()
    return n


# ------------------------------------------------------------------------------ the step
class DataParallelStep:
    """One training step of this worker: its shard through the gradient graph, the weighted
    all-reduce, the update graph. Called as ``step(x, y, lr, state) -> (loss, state)``, the
    loss being the whole batch's."""

    def __init__(self, pair: SplitTraining, target: str, worker: Worker,
                 options: dict | None = None):
        self.grad = compile(pair.grad, target, **(options or {}))
        self.update = compile(pair.update, target, **(options or {}))
        self.data = pair.grad.inputs[0].name
        grads = {v.name for v in pair.grad.outputs}
        self.params = [v for v in pair.grad.inputs if f"{v.name}.grad" in grads]
        sizes = [int(np.prod(v.shape)) for v in self.params]
        self.offsets = np.cumsum([1, *sizes])   # buffer: [loss, P1.grad..., P2.grad..., ...]
        self.worker = worker

    def __call__(self, x: np.ndarray, y: np.ndarray, lr: np.ndarray,
                 state: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        n, w = len(x), self.worker
        lo, hi = n * w.rank // w.size, n * (w.rank + 1) // w.size   # contiguous, uneven ok
        buf = np.zeros(self.offsets[-1], np.float64)
        if hi > lo:   # a batch smaller than the group leaves some workers without rows
            out = self.grad.run({self.data: x[lo:hi], "target": y[lo:hi],
                                 **{p.name: state[p.name] for p in self.params}})
            buf[0] = out["loss"]
            for p, a, b in zip(self.params, self.offsets[:-1], self.offsets[1:]):
                buf[a:b] = out[f"{p.name}.grad"].reshape(-1)
            buf *= hi - lo   # the gradient of the shard's sum
        _all_reduce_sum(buf, w)
        buf /= n
        grads = {f"{p.name}.grad": buf[a:b].reshape(p.shape).astype(p.dtype)
                 for p, a, b in zip(self.params, self.offsets[:-1], self.offsets[1:])}
        out = self.update.run({**state, **grads, "lr": lr})
        return float(buf[0]), {k: out[f"{k}.next"] for k in state}


def _all_reduce_sum(buf: np.ndarray, worker: Worker) -> None:
    import torch

    dist = torch_distributed()
    t = torch.from_numpy(buf)
    if worker.backend == "nccl":
        t = t.to(f"cuda:{worker.local_rank}")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if t.device.type != "cpu":
        buf[:] = t.cpu().numpy()


def _bind(target: str, backend: str, local_rank: int) -> None:
    """Before anything is compiled or reduced: this process's GPU is number ``local_rank``, for
    NCCL and for lincompile's CUDA kernels alike."""
    if backend == "nccl":
        import torch

        torch.cuda.set_device(local_rank)
    if target == "cuda":
        _use_gpu(local_rank)


def _use_gpu(local_rank: int) -> None:
    """Run lincompile's CUDA kernels of this process on GPU ``local_rank`` (mod the count)."""
    import ctypes

    from .backends.cuda_build import check, cudart, gpu_available

    if not gpu_available():
        return   # the step's first run says why there is no GPU
    rt, count = cudart(), ctypes.c_int(0)
    check(rt.cudaGetDeviceCount(ctypes.byref(count)), "cudaGetDeviceCount")
    rt.cudaSetDevice.argtypes, rt.cudaSetDevice.restype = [ctypes.c_int], ctypes.c_int
    check(rt.cudaSetDevice(local_rank % max(count.value, 1)), "cudaSetDevice")


def _backend(target: str, local_size: int) -> str:
    """NCCL for the cuda target when torch has CUDA and a GPU per local worker; else gloo."""
    if target != "cuda":
        return "gloo"
    import torch

    dist = torch_distributed()
    ok = dist.is_nccl_available() and torch.cuda.is_available() \
        and torch.cuda.device_count() >= local_size
    return "nccl" if ok else "gloo"


# ------------------------------------------------------------------------------ launching
def data_parallel(train: Callable[..., Any], args: dict[str, Any]) -> Any:
    """``train(**args)`` in every process of a data-parallel group, with ``workers`` set to
    this process's :class:`Worker`; returns rank 0's result. Joins torchrun's group (or one
    already set up), or starts the workers here."""
    dist = torch_distributed()
    if dist.is_initialized():   # the caller's own group
        if args["workers"] is not None and args["workers"] != dist.get_world_size():
            raise DistributedError(f"workers={args['workers']}, but this process is in a group "
                                   f"of {dist.get_world_size()}; leave workers out")
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        me = Worker(dist.get_rank(), dist.get_world_size(), dist.get_backend(), local)
        _bind(args["target"], me.backend, local)
        return _run(train, args, me)
    if under_torchrun():
        local = int(os.environ.get("LOCAL_RANK", 0))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        backend = _backend(args["target"], local_size)
        _bind(args["target"], backend, local)
        dist.init_process_group(backend)   # env://: MASTER_ADDR, MASTER_PORT from torchrun
        try:
            return _run(train, args, Worker(dist.get_rank(), dist.get_world_size(), backend,
                                            local))
        finally:
            dist.destroy_process_group()
    n = world_size(args["workers"])
    return _spawn(train, args, n, _backend(args["target"], n))


def _run(train: Callable[..., Any], args: dict[str, Any], me: Worker) -> Any:
    if me.rank != 0:   # rank 0 prints and writes
        args = {**args, "stream": None, "out": None}
    return train(**{**args, "workers": me})


def _spawn(train: Callable[..., Any], args: dict[str, Any], n: int, backend: str) -> Any:
    """Rank 0 here, ranks 1..n-1 in spawned processes; the rendezvous listens on 127.0.0.1
    only (a socket bound to port 0 there, handed to torch's store)."""
    dist = torch_distributed()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    child_args = {**args, "stream": None, "out": None}
    procs = [ctx.Process(target=_worker, args=(train, child_args, r, n, backend, port, errors),
                         name=f"lincompile-worker-{r}", daemon=True) for r in range(1, n)]
    try:
        store = dist.TCPStore("127.0.0.1", port, n, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=START_TIMEOUT_S),
                              master_listen_fd=sock.fileno())
        for p in procs:
            p.start()
        _await_workers(store, procs, errors, n)
        _bind(args["target"], backend, 0)
        with _loopback_gloo():
            dist.init_process_group(backend, store=store, rank=0, world_size=n)
        try:
            result = _run(train, args, Worker(0, n, backend, 0))
        finally:
            dist.destroy_process_group()
        _join(procs, errors)
        return result
    except BaseException as e:
        _stop(procs)
        failed = _first_error(errors)
        if failed and not isinstance(e, LincompileError):
            raise DistributedError(failed) from e
        raise
    finally:
        sock.close()


def _worker(train, args, rank, n, backend, port, errors) -> None:
    """A spawned worker: connect, train, report a failure as one line to rank 0 (before the
    group goes down, so rank 0 finds it when its next collective fails)."""
    reported = False
    try:
        dist = torch_distributed()
        store = dist.TCPStore("127.0.0.1", port, n, is_master=False,
                              timeout=timedelta(seconds=START_TIMEOUT_S))
        store.add(_READY, 1)
        _bind(args["target"], backend, rank)
        with _loopback_gloo():
            dist.init_process_group(backend, store=store, rank=rank, world_size=n)
        try:
            _run(train, args, Worker(rank, n, backend, rank))
        except BaseException as e:
            reported = _report(errors, rank, e)
            raise
        finally:
            dist.destroy_process_group()
    except BaseException as e:   # every failure goes back to rank 0
        if not reported:
            _report(errors, rank, e)
        raise SystemExit(1) from None


def _report(errors, rank: int, e: BaseException) -> bool:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    errors.put(f"worker {rank}: {text}")
    return True


class _loopback_gloo:
    """gloo's connections of a run started here stay on the loopback interface."""

    def __enter__(self):
        self.old = os.environ.get("GLOO_SOCKET_IFNAME")
        lo = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None) \
            if hasattr(socket, "if_nameindex") else None
        if self.old is None and lo is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = lo

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)


def _await_workers(store, procs, errors, n: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while store.add(_READY, 0) < n - 1:
        dead = [p for p in procs if p.exitcode is not None]
        if dead:
            raise DistributedError(_first_error(errors) or f"{dead[0].name} exited with code "
                                   f"{dead[0].exitcode} before it connected")
        if time.monotonic() > deadline:
            raise DistributedError(f"the workers did not connect within {START_TIMEOUT_S:g} s")
        time.sleep(0.02)


def _join(procs, errors) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    late = [p.name for p in procs if p.exitcode is None]
    if late:
        raise DistributedError(f"{', '.join(late)} did not finish within {JOIN_TIMEOUT_S:g} s "
                               "after rank 0")
    bad = [p for p in procs if p.exitcode != 0]
    if bad:
        raise DistributedError(_first_error(errors) or f"{bad[0].name} exited with code "
                               f"{bad[0].exitcode}")


def _stop(procs) -> None:
    """End the workers started here: a moment to exit on their own (a failed group makes them
    fail too), then terminate, then kill; never wait forever."""
    deadline = time.monotonic() + 3
    for p in procs:
        if p.pid is not None:
            p.join(max(deadline - time.monotonic(), 0.01))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is not None:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def _first_error(errors) -> str | None:
    return None if errors.empty() else errors.get()
