"""Train, validate and test a segmentation model from the Hydra config in ``conf/``.

    python train.py                                   # synthetic data, U-Net, focal + Dice
    python train.py loss=ce model=fpn trainer=gpu     # pick options of the config groups
    python train.py -m loss=focal,focal_dice loss.gamma=0,1,2
    python train.py ckpt_path=RUN/checkpoints/last.ckpt hydra.run.dir=RUN   # resume a run in place
    python train.py train=false ckpt_path=RUN/checkpoints/best-epoch007.ckpt   # test a checkpoint

Resuming restores epoch, optimizer, scheduler and callback states; pass the run's own overrides again
(RUN/.hydra/overrides.yaml) so that schedules that read ``trainer.max_epochs`` stay the same. Without
``hydra.run.dir=RUN`` the resumed run writes into a new directory.

Each run writes into its own directory (``paths.output_dir``): the composed config (``.hydra/``),
``checkpoints/`` (best by ``optimized_metric`` and ``last.ckpt``), TensorBoard and CSV logs,
``class_weights.json``, ``predictions/`` (PNG grids) and ``metrics.json``.

The run itself is :func:`runs.training.run` (importable, e.g. with a config from ``hydra.compose``); this
script adds the command line, job status and sweep failure handling (``runs.jobs``) and torchrun/srun
arguments (``runs.ddp``). Exit status: non-zero when a single run fails; in a ``-m`` sweep every job runs,
and the sweep exits 1 after its summary when any job failed (``runs.summary.SweepSummary``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from runs.errors import one_line_errors
from runs.jobs import run_job
from runs.ranks import prepare_argv


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    # Imported here, after Hydra's start-up checks (runs.unused_overrides, runs.run_dir): a refused run
    # ends within a second or two instead of after importing torch and Lightning (about 10 s on 2 cores).
    from runs.console import quiet_third_party
    from runs.training import run

    quiet_third_party()  # Lightning's tips, deprecation notes of its dependencies (runs.console)
    # Timed, recorded in job_status.json; in a -m sweep a failing job returns None and the sweep goes on.
    return run_job(run, cfg)


if __name__ == "__main__":
    prepare_argv()  # torchrun/srun: one run directory for all processes, quiet non-zero ranks
    main()
