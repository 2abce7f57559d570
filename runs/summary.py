"""The end of a sweep: :class:`SweepSummary`, the Hydra callback registered in ``conf/hydra/default.yaml``,
so every ``python train.py -m ...`` ends with the summary of its sweep directory (:mod:`evaluation.sweeps`)
and exits with status 1 when a job failed; and the same summary of an existing sweep directory, outside
Hydra::

    python -m runs.summary multirun/2024-05-01/12-00-00-000000

No torch: this module, :mod:`runs.jobs` and :mod:`evaluation.sweeps` load without it.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from evaluation.sweeps import (
    BY_CONFIG_CSV_NAME,
    BY_CONFIG_PLOT_NAME,
    CSV_NAME,
    PLOT_NAME,
    SEED_KEYS,
    STATUS_FILE,
    job_dirs,
    job_statuses,
    summarize_sweep,
    write_summary,
)
from runs.jobs import sweep_interrupt_status
from runs.ranks import is_ddp_child

log = logging.getLogger(__name__)

__all__ = ["SweepSummary", "main"]


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, :func:`write_summary` of ``hydra.sweep.dir``; then, when a
    job is not ok (failed, or killed/incomplete), a last line on stderr saying how many and where the
    summary is, and ``SystemExit(1)`` (130/143 when the sweep was interrupted by Ctrl+C/SIGTERM,
    :mod:`runs.stop_signals`): the sweep process exits non-zero (shells, CI, an ``sbatch`` script
    that runs the sweep). ``exit_on_failure=false`` (``hydra.callbacks.sweep_summary.exit_on_failure=false``)
    keeps exit status 0.

    The exit comes after every job ran and after the sweeper finished (Optuna has written
    ``optimization_results.yaml``); Hydra calls ``on_multirun_end`` of its callbacks in reverse order, and
    callbacks that would come after this one are skipped when it exits.

    Only in the process that ran the sweep: a DDP child process (``runs.ranks.is_ddp_child``) does
    nothing. An error while summarising is logged, not raised: the jobs' results are on disk and
    ``python -m runs.summary SWEEP_DIR`` rebuilds the summary (the exit status then follows the jobs'
    ``job_status.json``).
    """

    def __init__(self, enabled: bool = True, exit_on_failure: bool = True,
                 seed_keys: tuple[str, ...] | list[str] = SEED_KEYS) -> None:
        self.enabled = enabled
        self.exit_on_failure = exit_on_failure
        self.seed_keys = tuple(str(k) for k in seed_keys)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or is_ddp_child():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        where = str(sweep_dir / CSV_NAME)
        try:
            _, rows = summarize_sweep(sweep_dir, print_it=True, seed_keys=self.seed_keys)
            states = [str(r["status"]) for r in rows]
        except Exception:
            log.exception("could not summarise the sweep in %s (rebuild: python -m runs.summary %s)",
                          sweep_dir, sweep_dir)
            where = f"not complete, rebuild it with python -m runs.summary {sweep_dir}"
            try:
                states = job_statuses(sweep_dir)
            except Exception:
                log.exception("could not read the job statuses in %s", sweep_dir)
                states = []
        not_ok = [s for s in states if s != "ok"]
        interrupted = sweep_interrupt_status()  # Ctrl+C/SIGTERM: 130/143 even with exit_on_failure=false
        if interrupted is None and (not not_ok or not self.exit_on_failure):
            return
        counts = ", ".join(f"{n} {state}" for state, n in sorted(Counter(not_ok).items()))
        sys.stdout.flush()
        what = "sweep interrupted" if interrupted is not None else "sweep failed"
        print(f"{what}: {len(not_ok)} of {len(states)} jobs not ok ({counts}); summary: {where}",
              file=sys.stderr, flush=True)
        raise SystemExit(1 if interrupted is None else interrupted)


USAGE = f"""usage: python -m runs.summary SWEEP_DIR [--seed-key KEY ...]
Writes into SWEEP_DIR and prints as tables:
  {CSV_NAME}, {PLOT_NAME}  one row per job
  {BY_CONFIG_CSV_NAME}, {BY_CONFIG_PLOT_NAME}  one row per configuration (the jobs that differ only
      in the seed keys): mean ± sample std (ddof=1) and n over its finished jobs; failed jobs excluded
The last line printed is the path of {CSV_NAME}.
  --seed-key KEY  an override that repeats a configuration rather than changing it
                  (default: {' '.join(SEED_KEYS)}); once per key,
                  e.g. --seed-key seed --seed-key datamodule.seed"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    seed_keys: list[str] = []
    positional: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--seed-key" and args:
            seed_keys.append(args.pop(0))
        elif arg.startswith("--seed-key="):
            seed_keys.append(arg.partition("=")[2])
        elif arg.startswith("-"):
            positional = []
            break
        else:
            positional.append(arg)
    if len(positional) != 1:
        print(USAGE)
        return 2
    sweep_dir = Path(positional[0])
    if not sweep_dir.is_dir():
        print(f"error: sweep directory {sweep_dir} does not exist", file=sys.stderr)
        return 2
    if not job_dirs(sweep_dir):
        print(f"error: {sweep_dir} holds no job directory (none with .hydra/overrides.yaml or {STATUS_FILE})",
              file=sys.stderr)
        return 1
    csv_path = write_summary(sweep_dir, seed_keys=tuple(seed_keys) or SEED_KEYS)
    print(f"per configuration (mean ± std over seeds): {sweep_dir / BY_CONFIG_CSV_NAME}")
    print(csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
