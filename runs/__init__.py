"""Run orchestration behind ``train.py``; import the modules themselves (this package imports nothing, so
that ``python -m runs.summary`` and DDP child processes load only what they need):

- ``runs.training``: ``run(cfg)``, what ``python train.py`` does: ``fit_and_test`` or ``evaluate``
- ``runs.build``: the config's objects (datamodule, loss, module, trainer)
- ``runs.config_checks``: the checks that fail a run before anything is trained (``check_config``, ...)
- ``runs.checkpoint_metadata``: what a run's checkpoints carry for ``inference.load_for_inference``
- ``runs.callbacks``, ``runs.loggers``: Lightning plumbing (``RunCheckpoint``, ``EMAWeights``,
  ``ResumableCSVLogger``); ``runs.tracking``: MLflow key rules, its SQLite database, figures and files
- ``runs.trained``: ``load_trained_module``, a trained model from a checkpoint for a config
- ``runs.jobs``: per-job status and failure handling in sweeps (``run_job``, ``job_status.json``)
- ``runs.summary``: the sweep summary's Hydra callback and ``python -m runs.summary`` (the summary itself:
  ``evaluation.sweeps``); no torch
- ``runs.ranks``: which process of a (DDP) run this is, from the environment; no torch
- ``runs.ddp``: DDP under Hydra (``HydraDDPStrategy``, ``ddp_job``, ``prepare_argv``)
"""
