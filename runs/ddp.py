"""DDP under Hydra: one run directory per run and per sweep job, whoever starts the processes.

Lightning's ``strategy=ddp`` starts the extra processes of a node by running the script again. Its own
re-launch passes the parent's command line, which in a ``-m`` sweep makes every child start the sweep
again. :class:`HydraDDPStrategy` (``trainer=ddp``, ``trainer=ddp_cpu``) re-launches instead the *job*:

    python <script> --config-path <conf> --config-name <name> <the job's own overrides>
        hydra.run.dir="<the job's output dir>" hydra.output_subdir=null
        hydra/job_logging=disabled hydra/hydra_logging=disabled

with ``IMBALANCED_SEG_DDP_CHILD=1`` in its environment (:func:`runs.ranks.is_ddp_child`). The children run
the job in Hydra's RUN mode inside the job directory of the parent (single run or sweep job), write no
``.hydra/`` and no log file, and leave all other files to global rank 0 (:func:`runs.ranks.is_global_zero`).

:func:`ddp_job` wraps the job function (``runs.training.run``); its children re-run the script that called
it (``train.py``). When the job ends, the parent waits for its children (or ends them if the job failed),
destroys the process group and restores the environment, so the next job of a sweep starts its own
processes on a fresh port.

Processes started by torchrun or srun (``creates_processes_externally``) are not re-launched. Each of them
runs Hydra itself, and ``${now:}`` in the default run directory would differ between them:
:func:`prepare_argv` (called before ``hydra.main``) requires ``hydra.run.dir=`` (``hydra.sweep.dir=`` with
``-m``) on the command line then, and quiets the Hydra output of the non-zero ranks.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import torch

from runs.lightning_compat import LauncherDDPStrategy, ScriptLauncher
from runs.ranks import (
    CHILD_ENV,
    CHILD_OVERRIDES,
    external_world_size,
    is_ddp_child,
    is_global_zero,
    override_key,
    prepare_argv,
)
from seglosses.distributed import process_group_initialized

log = logging.getLogger(__name__)

__all__ = [
    "CHILD_ENV",
    "HydraDDPStrategy",
    "child_command",
    "ddp_job",
    "external_world_size",
    "is_ddp_child",
    "is_global_zero",
    "prepare_argv",
]

# Environment variables the launcher sets in the parent; restored when the job ends.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# Hydra overrides that belong to the sweep or to the parent's output, not to the job the children run.
_PARENT_ONLY = (
    "hydra.mode", "hydra.sweep", "hydra.run.dir", "hydra.output_subdir", "hydra.job.name",
    "hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper",
    "hydra/job_logging", "hydra.job_logging", "hydra/hydra_logging", "hydra.hydra_logging",
)
# Seconds a parent waits for its children after a successful job, and for a failed child's job to end.
CHILD_EXIT_TIMEOUT_S = 120.0
FAILED_CHILD_GRACE_S = 10.0

F = TypeVar("F", bound=Callable[..., Any])


# ---- the child command ------------------------------------------------------------------------------------


def _belongs_to_parent(override: str) -> bool:
    key = override_key(override)
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in _PARENT_ONLY)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def child_command(
    script: str | Path,
    config_name: str,
    config_path: str | Path | None,
    task_overrides: Sequence[str],
    hydra_overrides: Sequence[str],
    output_dir: str | Path,
    config_dirs: Sequence[str | Path] = (),
) -> list[str]:
    """The command line that runs one Hydra job again, in RUN mode, inside ``output_dir``.

    Args:
        script: the Hydra app (``train.py``).
        config_name, config_path: its primary config (``--config-name``/``--config-path``).
        task_overrides: the job's own overrides (``hydra.overrides.task``: in a sweep, this job's values).
        hydra_overrides: ``hydra.overrides.hydra``; those of the sweep, the launcher, the sweeper and the
            parent's output (run/sweep dir, output subdir, job name, logging) are left out.
        output_dir: the job's directory (``hydra.runtime.output_dir``), passed as ``hydra.run.dir``.
        config_dirs: extra ``--config-dir`` search paths of the parent.
    """
    command = [sys.executable, str(Path(script).resolve()), f"--config-name={config_name}"]
    if config_path is not None:
        command.append(f"--config-path={config_path}")
    command += [f"--config-dir={d}" for d in config_dirs]
    command += list(task_overrides)
    command += [o for o in hydra_overrides if not _belongs_to_parent(o)]
    command += [f"hydra.run.dir={_quoted(str(output_dir))}", *CHILD_OVERRIDES]
    return command


_SCRIPT: dict[str, Path] = {}  # the script that called the running ddp_job function: what the children run


def _hydra_child_command() -> tuple[list[str], str]:
    """:func:`child_command` of the running Hydra job, and the directory to start it in."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or "script" not in _SCRIPT:
        raise RuntimeError(
            "HydraDDPStrategy re-launches the running Hydra job for every extra process: start the run with "
            "`python train.py trainer=ddp_cpu ...` (or torchrun/srun, which start the processes themselves), "
            "not from a composed config in this process"
        )
    hc = HydraConfig.get()
    config_path = None
    config_dirs = []
    for source in hc.runtime.config_sources:
        if source.schema == "file" and source.provider == "main":
            config_path = source.path
        elif source.schema == "file" and source.provider == "command-line":
            config_dirs.append(source.path)
    command = child_command(
        _SCRIPT["script"],
        hc.job.config_name,
        config_path,
        list(hc.overrides.task),
        list(hc.overrides.hydra),
        hc.runtime.output_dir,
        config_dirs,
    )
    return command, hc.runtime.cwd


# ---- launching and cleaning up ----------------------------------------------------------------------------


class _Children:
    """The processes this process launched for the running job, watched by a thread: a child that fails
    while the job still runs leaves the parent blocked in a collective (NCCL) or failing (gloo); after
    ``FAILED_CHILD_GRACE_S`` without the job ending, all processes are killed, as Lightning does."""

    def __init__(self, procs: list[subprocess.Popen], saved_env: dict[str, str | None], threads: int) -> None:
        self.procs = procs
        self.saved_env = saved_env
        self.threads = threads
        self.done = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="ddp-child-watcher", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        failed_at: float | None = None
        while not self.done.wait(1.0):
            codes = [p.poll() for p in self.procs]
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
                log.error("a DDP child process exited with status %s", [c for c in codes if c])
            if failed_at is not None and time.monotonic() - failed_at > FAILED_CHILD_GRACE_S:
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
                os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, failed: bool) -> None:
        """Stop watching; wait for the children (end them if the job ``failed`` or they do not exit)."""
        self.done.set()
        self.watcher.join()
        if failed:
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()
        deadline = time.monotonic() + (10.0 if failed else CHILD_EXIT_TIMEOUT_S)
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("DDP child process %d did not exit; killing it", p.pid)
                p.kill()
                p.wait()
        if process_group_initialized():
            torch.distributed.destroy_process_group()
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(self.threads)


_ACTIVE: list[_Children] = []


class _HydraJobLauncher(ScriptLauncher):
    """Lightning's script launcher, re-launching the running Hydra job (:func:`child_command`)."""

    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            saved = {name: os.environ.get(name) for name in _LAUNCH_ENV}
            threads = torch.get_num_threads()
            self.call_children_scripts()
            _ACTIVE.append(_Children(self.procs, saved, threads))
        _share_cores(self.num_processes)
        return function(*args, **kwargs)

    def call_children_scripts(self) -> None:
        self.check_can_spawn_children()
        command, cwd = _hydra_child_command()
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        self.procs = []
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), CHILD_ENV: "1"}
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))


def _share_cores(num_processes: int) -> None:
    """Without OMP_NUM_THREADS, split the CPU cores among the processes of a node (as Lightning does)."""
    if num_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // num_processes)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


class HydraDDPStrategy(LauncherDDPStrategy):
    """``DDPStrategy`` (any of its arguments) whose re-launch runs the current Hydra job, not the command
    line: correct for single runs and for every job of a ``-m`` sweep (see the module docstring).
    Processes started by torchrun/srun are used as they are."""

    def choose_launcher(self, launcher: Any) -> Any:
        if ScriptLauncher.is_lightning_default(launcher):
            return _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
        return launcher


def _calling_app(frame: FrameType | None) -> Path:
    """The file of the innermost function on the stack from ``frame`` outwards that is not part of this
    package: the Hydra task function (``train.py``'s ``main``) that ran the job through :mod:`runs.jobs`.
    The code's file, not ``sys.argv``/``__main__``: a launcher (submitit) runs the task function in a process
    of its own."""
    package = Path(__file__).resolve().parent
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.resolve().parent != package:
            return path
        frame = frame.f_back
    raise RuntimeError("ddp_job: no caller outside runs/ on the stack")


def ddp_job(function: F) -> F:
    """Decorate the job function (``runs.training.run``): its DDP children re-run the script that called it
    (the Hydra app, :func:`_calling_app`), and when it returns or raises, the processes it launched are
    waited for (ended, if it raised), the process group is destroyed and the launch environment restored,
    ready for the next sweep job."""

    @functools.wraps(function)
    def job(*args: Any, **kwargs: Any) -> Any:
        _SCRIPT["script"] = _calling_app(sys._getframe(1))
        started = len(_ACTIVE)
        failed = True
        try:
            result = function(*args, **kwargs)
            failed = False
            return result
        finally:
            while len(_ACTIVE) > started:
                _ACTIVE.pop().finish(failed)

    return job  # type: ignore[return-value]


# ---- external launchers -----------------------------------------------------------------------------------
