"""Multi-rank generation: ``xvid generate --gpus N`` re-runs the same command as N ranks under torch's elastic
launcher (what ``torchrun`` uses), and each rank runs one shared generation with Ulysses context parallelism.

Parent (no ``WORLD_SIZE`` in the environment): validates the config and the parallel layout before anything
loads (exit 2 on bad input), then launches the ranks. The launcher stops every rank as soon as one fails and
the parent prints one line naming it. Ranks (``WORLD_SIZE`` set, by us or by a user's ``torchrun``): one
process group (NCCL on GPUs, gloo with ``--device cpu``), identical seeds and latents, and only rank 0 decodes,
writes the mp4 and the run record (after the last collective, atomically) and prints.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import ConfigError, RunConfig
from .env import DIST_TIMEOUT_ENV_VAR, dist_timeout_seconds
from .signals import LAUNCHED_ENV, Terminated

# NVLink SHARP/multicast off in every process we start (the GPU machines' notes: it can hang or fail there).
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# Collective timeout: a rank that neither fails nor progresses ends the run after XVID_DIST_TIMEOUT seconds.
TIMEOUT_ENV = DIST_TIMEOUT_ENV_VAR


def in_rank() -> bool:
    """True inside a rank started by us or by torchrun."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_device_spec(device: str) -> str:
    """Device for this rank: ``cpu`` stays the CPU; ``auto``/``cuda`` become ``cuda:<LOCAL_RANK>``."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ConfigError(f"config key 'model.device' is {device!r}; with --gpus use auto, cuda or cpu "
                          f"(rank r runs on cuda:r)")
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def dist_timeout() -> float:
    """Seconds of ``XVID_DIST_TIMEOUT`` (default 1800); ``ConfigError`` naming the variable if it is no positive
    finite number (``env.dist_timeout_seconds``, which the CLI's early environment check runs too)."""
    return dist_timeout_seconds()


def check_launch(run: RunConfig, gpus: int) -> dict:
    """Everything that can be checked before any rank starts or any weight loads; returns the layout record."""
    from .pipelines.limits import check_model_size
    from .pipelines.parallel import validate_parallel

    dist_timeout()
    check_model_size(run.model, run.generation)

    if run.model.offload is not None:
        raise ConfigError("config key 'model.offload' cannot be combined with --gpus (each rank holds the "
                          "whole model on its GPU)")
    device = run.model.device
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        rank_device_spec(device)
        if not torch.cuda.is_available():
            raise ConfigError("--gpus needs CUDA GPUs; add --device cpu to run the ranks on the CPU (gloo)")
        if torch.cuda.device_count() < gpus:
            raise ConfigError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if not run.dense:
        from .pipelines.family import check_precision_runs

        check_precision_runs(run.xattn.precision, torch.device("cpu" if on_cpu else "cuda"))
    return validate_parallel(run.model, run.generation, gpus)


def launch(nproc: int, python_args: Sequence[str]) -> int:
    """Run ``python <python_args>`` as ``nproc`` ranks on this machine; returns an exit code.

    ``xvid generate --gpus N ...`` runs ``python -m xattn_video.cli generate --gpus N ...``. The ranks import
    this same copy of the package (its folder is put first on PYTHONPATH).

    The first rank to fail stops the others (no hang); its own message is on stderr, and this prints one line
    naming the rank. Exit code: the failed rank's if it was 2 (bad input), else 1.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    package_root = str(Path(__file__).resolve().parents[1])
    env = {**NO_MULTICAST_ENV, "PYTHONUNBUFFERED": "1", LAUNCHED_ENV: "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    # The agent's own failure report is a multi-line table; ours below is the one line.
    # Its modules set their own levels (torch's elastic get_logger), so the parent logger's level is not enough:
    # "Received 15 death signal, shutting down workers" would precede our line.
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    options = dict(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"xvid-{uuid.uuid4().hex[:8]}",
                   rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                   start_method="spawn", shutdown_timeout=10)
    if "shutdown_timeout" not in inspect.signature(LaunchConfig).parameters:  # torch < 2.12
        options.pop("shutdown_timeout")
    config = LaunchConfig(**options)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the ranks inherit this process's environment
    try:
        elastic_launch(config, sys.executable)(*python_args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        what = f"exit code {code}" if code >= 0 else f"signal {-code}"
        # Failure times have one-second resolution: a rank that fails because another one did (its collective
        # broke) often ties with it, and then the first failure is just the lowest rank. Name every tied rank.
        tied = sorted(r for r, f in exc.failures.items() if f.timestamp == failure.timestamp)
        who = f"rank {rank}" if len(tied) <= 1 else f"ranks {', '.join(map(str, tied))} (failed together)"
        print(f"xvid: {who} of {nproc} failed ({what}); each rank's own error is above; all ranks were stopped",
              file=sys.stderr)
        return 2 if code == 2 else 1
    except SignalException as exc:
        # The agent turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into this after stopping the ranks (they clean up their
        # temporary files: signals.py); the CLI prints one line and exits 128 + the signal.
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise Terminated(exc.sigval) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 0


def init_process_group(device: torch.device) -> tuple[int, int]:
    """The default process group for this rank; (rank, world size)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=dist_timeout())
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def merge_rank_summaries(summaries: list[dict | None]) -> dict | None:
    """One XAttention summary from every rank's (each rank saw heads/N of every layer).

    Ranks hold equal head counts, so the mean of the ranks' densities is the density over all heads.
    """
    if not summaries or summaries[0] is None:
        return None
    merged = dict(summaries[0])
    means = [s["mean_density_sparse_calls"] for s in summaries]
    merged["mean_density_sparse_calls"] = None if any(m is None for m in means) else sum(means) / len(means)
    table: dict[str, dict[str, float]] = {}
    for step, layers in summaries[0]["density_per_step_layer"].items():
        table[step] = {layer: sum(s["density_per_step_layer"][step][layer] for s in summaries) / len(summaries)
                       for layer in layers}
    merged["density_per_step_layer"] = table
    merged["per_rank"] = [{"rank": r, "mean_density_sparse_calls": s["mean_density_sparse_calls"],
                           "sparse_calls": s["sparse_calls"], "calls": s["calls"],
                           "density_per_step_layer": s["density_per_step_layer"]} for r, s in enumerate(summaries)]
    merged.pop("time_per_step_layer_ms", None)
    return merged


def generate_on_ranks(run: RunConfig, out: Any, degree: int,
                      report: Callable[[RunConfig, Any], None] | None = None) -> Any:
    """This rank's part of one generation across ``degree`` ranks; rank 0 writes ``out`` and calls ``report``.

    Returns rank 0's ``GenerationResult`` (other ranks: their result, without frames or files).
    """
    import torch.distributed as dist

    from .generate import check_inputs, run_pipeline, run_record, write_outputs
    from .pipelines.loading import load_pipeline
    from .pipelines.parallel import enable_context_parallel, validate_parallel

    model = run.model
    device = torch.device(rank_device_spec(model.device))
    rank, world = init_process_group(device)
    if world != degree:
        raise ConfigError(f"--gpus {degree} but this run has {world} ranks (torchrun --nproc_per_node must match)")
    if rank != 0:
        _quiet_rank()
    try:
        layout_record = validate_parallel(model, run.generation, degree)  # torchrun users skip the parent check
        image = check_inputs(run)  # size limits and the I2V image, before the weights load
        rank_model = dataclasses.replace(model, device=str(device))
        pipe = load_pipeline(rank_model)
        layout = enable_context_parallel(pipe, degree)
        # Only rank 0 decodes: the others' latents are identical (the transformer output is gathered).
        result = run_pipeline(pipe, run, show_progress=rank == 0, image=image, decode=rank == 0)
        summaries: list = [None] * world
        dist.all_gather_object(summaries, result.xattn)
        if rank == 0:
            result.xattn = merge_rank_summaries(summaries)
            result.meta = run_record(result, run, pipe)
            result.meta["parallel"] = {**layout.record(), **layout_record,
                                       "devices": [f"{device.type}:{r}" if device.type == "cuda" else "cpu"
                                                   for r in range(world)]}
            if out is not None:
                write_outputs(result, run, out)
            if report is not None:
                report(run, result)
        # Every rank leaves together: a rank that tears gloo down while another still talks to it can abort
        # ("terminate called without an active exception"), seen on the CPU.
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _quiet_rank() -> None:
    """Ranks other than 0 print only errors."""
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")
