"""Scoring segmentations, a layer beside ``models`` and ``datamodules``: it scores tensors and writes what
it scored, and imports no network and no data set (only ``seglosses`` and ``safeio`` of ours). Import the
modules themselves (this package imports nothing, so that ``evaluation.sweeps`` loads without torch):

- ``evaluation.confusion``: per-class IoU, Dice, precision, recall from confusion matrices; the
  (DDP-synced) metrics the LightningModule updates; ``metric_logs``
- ``evaluation.per_image``: per-image pixel counts, :class:`PerImageCounts`, the recorder that gathers them
  over DDP processes
- ``evaluation.objects``, ``evaluation.boundaries``, ``evaluation.topology``: spatial metrics of one
  image's class masks (objects found, Boundary IoU/HD95/ASSD/NSD, clDice) as summable per-image records;
  ``evaluation.masks``: what they share
- ``evaluation.options``: which metric families an evaluation computes, on which splits (the ``evaluation``
  config group); ``evaluation.spatial``: the per-image records of objects, boundaries and clDice, gathered
  over DDP processes; ``evaluation.families``: one stage's families (records and calibration histogram),
  their ``metrics.json`` values, logged keys and per-image columns; ``evaluation.family_tables``: their
  console tables
- ``evaluation.stage``: what ``metrics.json`` holds of a split (``stage_summary``) and the same metrics fed
  image by image outside Lightning (``StageEvaluation``: ``evaluate.py``)
- ``evaluation.pixels``: logits and targets of every mode as one row per pixel; DDP sums and gathers
- ``evaluation.calibration``: class-wise and top-label ECE histograms, reliability diagrams, temperature
  scaling (``fit_temperature``, ``apply_temperature``, the ``LogitSample`` it is fitted on)
- ``evaluation.thresholds``: Dice-optimal per-label thresholds (grid histogram, exact search), the rule
  ``apply_threshold``
- ``evaluation.nonfinite``: the guard that fails an evaluation epoch with a NaN/inf loss
- ``evaluation.tables``: the per-class table, the worst images, the one-line epoch summary, ``summarize``
- ``evaluation.reporting``: what is printed when (``module.print_tables``)
- ``evaluation.files``: ``metrics.json``, ``test_per_image.csv``, ``confusion_<split>.csv``/``.png``
- ``evaluation.grids``: class colours, multilabel bit flags, the image | truth | prediction grid
- ``evaluation.callbacks``: :class:`PredictionGridCallback`
- ``evaluation.sweeps``: sweep summaries (no torch)
"""
