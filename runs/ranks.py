"""Which process of a run this is, without importing torch: ``runs.summary`` (``python -m runs.summary``,
the sweep callback), ``runs.jobs`` and ``train.py`` before Hydra starts (:func:`prepare_argv`) load this
module, not :mod:`runs.ddp`.

The rank comes from the launchers' environment variables (torchrun: ``RANK``; srun: ``SLURM_PROCID``;
Lightning's and :class:`runs.ddp.HydraDDPStrategy`'s re-launch: ``NODE_RANK``/``LOCAL_RANK`` and
:data:`CHILD_ENV`). Once a ``torch.distributed`` process group exists, its rank decides
(:func:`is_global_zero`, through :func:`seglosses.distributed.process_group_initialized`), looked up only
in a process that has imported torch already: without torch there is no process group. This is the one
deferred torch import of ``runs/``.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "CHILD_ENV",
    "CHILD_OVERRIDES",
    "env_rank",
    "external_world_size",
    "is_ddp_child",
    "is_global_zero",
    "override_key",
    "prepare_argv",
]

# Set to "1" in the environment of the processes that HydraDDPStrategy re-launches.
CHILD_ENV = "IMBALANCED_SEG_DDP_CHILD"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        return default


def env_rank() -> int:
    """Global rank from the launchers' variables (torchrun: RANK; srun: SLURM_PROCID; Lightning's
    re-launch: NODE_RANK and LOCAL_RANK), 0 when none is set."""
    if "RANK" in os.environ:
        return _int_env("RANK", 0)
    if _int_env("SLURM_NTASKS", 1) > 1 and "SLURM_PROCID" in os.environ:
        return _int_env("SLURM_PROCID", 0)
    return _int_env("NODE_RANK", 0) + _int_env("LOCAL_RANK", 0)


def is_ddp_child() -> bool:
    """True in a process that must not act for the run as a whole: one re-launched by
    :class:`runs.ddp.HydraDDPStrategy` (``IMBALANCED_SEG_DDP_CHILD=1``) or a non-zero rank started by
    torchrun/srun. Hydra callbacks (sweep summaries) and anything else that writes once per run check this."""
    return os.environ.get(CHILD_ENV) == "1" or env_rank() != 0


def is_global_zero() -> bool:
    """True in the process that writes the run's files: the process group's rank 0 when it exists, else
    the process that is neither a re-launched child nor a non-zero rank of torchrun/srun."""
    if "torch" in sys.modules:  # a process group needs torch: a process without it goes by the environment
        import torch.distributed as dist

        from seglosses.distributed import process_group_initialized

        if process_group_initialized():
            return dist.get_rank() == 0
    return not is_ddp_child()


def external_world_size() -> int | None:
    """The number of processes when torchrun (WORLD_SIZE with RANK/LOCAL_RANK) or srun (SLURM_NTASKS)
    started this one as part of a multi-process job, else None (also in HydraDDPStrategy's children)."""
    if os.environ.get(CHILD_ENV) == "1":
        return None
    world = _int_env("WORLD_SIZE", 1)
    if world > 1 and ("RANK" in os.environ or "LOCAL_RANK" in os.environ):
        return world
    tasks = _int_env("SLURM_NTASKS", 1)
    if tasks > 1 and "SLURM_PROCID" in os.environ:
        return tasks
    return None


# Hydra overrides of the processes that are not global rank 0: no .hydra/, no log files of their own.
CHILD_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


def override_key(override: str) -> str:
    """``loss.gamma`` of ``loss.gamma=2``, ``+a.b=1``, ``~a.b``, ``hydra/launcher=basic``."""
    return override.lstrip("~+").split("=", 1)[0].strip()


def prepare_argv(argv: list[str] | None = None) -> list[str]:
    """Adjust ``sys.argv`` (in place; also returned) before ``hydra.main`` when torchrun/srun started this
    process as one of several: the run (sweep) directory must be given, so that all processes use the same
    one, and non-zero ranks write no ``.hydra/`` and no log files. Exits with a message without it."""
    argv = sys.argv if argv is None else argv
    world = external_world_size()
    if world is None:
        return argv
    multirun = any(a in ("-m", "--multirun") for a in argv[1:])
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if not any(override_key(a) == key for a in argv[1:]):
        raise SystemExit(
            f"error: started by torchrun/srun as one of {world} processes: every process would make its own "
            f"timestamped directory; pass the same directory to all, e.g. {key}=outputs/ddp-$SLURM_JOB_ID "
            f"(or a name of your choice)"
        )
    if env_rank() != 0:
        present = {override_key(a) for a in argv[1:]}
        argv += [o for o in CHILD_OVERRIDES if override_key(o) not in present]
    return argv
