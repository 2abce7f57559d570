"""The sweep summary per configuration (evaluation.sweeps; its CLI runs.summary): the jobs of a sweep that
differ only in ``seed`` aggregated as mean ± sample std (ddof=1) and n, in ``summary_by_config.csv``,
``summary_by_config.png``, the printed table and the CLI. Every sweep here is a hand-made directory
with known scores: no training, seconds."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from evaluation import sweeps
from runs import summary

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["background", "disc", "square", "bar", "cross"]
COUNTS = (900, 50, 30, 15, 5)  # training pixels: cross, bar, square are the rarest


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_job(root: Path, num: int, overrides: list[str], status: str | None, miou: float | None = None,
             class_iou: dict[str, float | None] | None = None, wall_time_s: float = 10.0) -> Path:
    """A job directory as train.py leaves it: .hydra/overrides.yaml, class_weights.json, job_status.json
    (``status`` None: none, a job run without runs.jobs) and, with ``miou``, metrics.json: val mIoU
    ``miou``, val mDice ``miou + 0.1``, test mIoU ``miou - 0.05``, test mDice ``miou + 0.05``, per-class
    test IoU ``class_iou`` (default: ``miou / (i + 1)`` for class i)."""
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    classes = {n: {"weight": None, "pixel_count": c, "image_pixel_count": c, "pixel_share": c / sum(COUNTS)}
               for n, c in zip(NAMES, COUNTS, strict=True)}
    (job / "class_weights.json").write_text(json.dumps({"method": None, "classes": classes}))
    if status is not None:
        record = {"status": status, "wall_time_s": wall_time_s}
        if status == "failed":
            record["error"] = "ValueError: gamma must be >= 0, got -1"
        (job / "job_status.json").write_text(json.dumps(record))
    if miou is not None:
        ious = class_iou if class_iou is not None else {n: miou / (i + 1) for i, n in enumerate(NAMES)}

        def split(m: float, dice: float) -> dict:
            return {"epoch": 3, "mIoU": m, "mDice": dice, "pixel_acc": 0.9,
                    "per_class": {n: {"iou": ious.get(n), "dice": None} for n in NAMES}}

        metrics = {"best_epoch": 3, "val": split(miou, miou + 0.1), "test": split(miou - 0.05, miou + 0.05)}
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def study(root: Path) -> Path:
    """loss x class_weights x seed=0,1,2 (12 jobs) with known scores. ce/none: val mIoU 0.5, 0.6, 0.7;
    ce/median_frequency: job 4 (seed 1) failed; focal_dice/none: only seed 0 (one finished job);
    focal_dice/median_frequency: seed 2 killed (job_status running), class cross absent from seed 1's test
    split."""
    num = 0
    for loss in ("ce", "focal_dice"):
        for weights in ("none", "median_frequency"):
            for seed in (0, 1, 2):
                overrides = [f"loss={loss}", f"class_weights={weights}", f"seed={seed}"]
                if (loss, weights) == ("focal_dice", "none") and seed > 0:
                    num += 1
                    continue  # this configuration ran one seed only
                status, miou, ious = "ok", 0.5 + 0.1 * seed, None
                if (loss, weights) == ("ce", "median_frequency"):
                    miou = 0.4 + 0.2 * seed
                    status, miou = ("failed", None) if seed == 1 else ("ok", miou)
                if (loss, weights) == ("focal_dice", "median_frequency"):
                    miou = 0.8 - 0.05 * seed
                    ious = {n: miou / (i + 1) for i, n in enumerate(NAMES)}
                    if seed == 1:
                        ious["cross"] = None
                    if seed == 2:
                        status, miou = "running", None
                fake_job(root, num, overrides, status, miou, ious, wall_time_s=100.0 + 10 * seed)
                num += 1
    return root


def by_overrides(configs: list[dict]) -> dict[str, dict]:
    return {c["overrides"]: c for c in configs}


def test_mean_and_sample_std_per_configuration(tmp_path):
    configs = sweeps.collect_by_config(study(tmp_path / "sweep"))
    assert [c["overrides"] for c in configs] == [
        "loss=ce class_weights=none", "loss=ce class_weights=median_frequency",
        "loss=focal_dice class_weights=none", "loss=focal_dice class_weights=median_frequency"]
    assert all("seed" not in c for c in configs)  # the seed is what is aggregated over, not a key
    first = configs[0]
    assert (first["loss"], first["class_weights"]) == ("ce", "none")
    assert (first["n"], first["n_not_ok"], first["seeds"], first["jobs"], first["not_ok_jobs"]) == (
        3, 0, "0 1 2", "0 1 2", "")
    # val mIoU 0.5, 0.6, 0.7: mean 0.6, sample std 0.1 (the population std would be 0.0816)
    assert first["val_mIoU_mean"] == pytest.approx(0.6)
    assert first["val_mIoU_std"] == pytest.approx(0.1)
    assert first["val_mIoU_std"] != pytest.approx(statistics.pstdev([0.5, 0.6, 0.7]))
    assert first["val_mIoU_n"] == 3
    assert first["val_mDice_mean"] == pytest.approx(0.7) and first["val_mDice_std"] == pytest.approx(0.1)
    assert first["test_mIoU_mean"] == pytest.approx(0.55) and first["test_mIoU_std"] == pytest.approx(0.1)
    assert first["test_mDice_mean"] == pytest.approx(0.65) and first["test_mDice_std"] == pytest.approx(0.1)
    # every class, not only the rare ones: class i has IoU miou / (i + 1), with miou = 0.5, 0.6, 0.7
    for i, name in enumerate(NAMES):
        assert first[f"test_IoU/{name}_mean"] == pytest.approx(0.6 / (i + 1))
        assert first[f"test_IoU/{name}_std"] == pytest.approx(0.1 / (i + 1))
        assert first[f"test_IoU/{name}_n"] == 3
    # rare_mIoU: per job the mean of cross, bar, square
    rare = [(m / 5 + m / 4 + m / 3) / 3 for m in (0.5, 0.6, 0.7)]
    assert first["rare_mIoU_mean"] == pytest.approx(statistics.fmean(rare))
    assert first["rare_mIoU_std"] == pytest.approx(statistics.stdev(rare))
    assert first["wall_time_s_mean"] == pytest.approx(110.0)
    assert first["wall_time_s_std"] == pytest.approx(10.0)


def test_failed_and_killed_jobs_are_excluded_and_counted(tmp_path):
    configs = by_overrides(sweeps.collect_by_config(study(tmp_path / "sweep")))
    failed = configs["loss=ce class_weights=median_frequency"]
    assert (failed["n"], failed["n_not_ok"], failed["seeds"], failed["jobs"], failed["not_ok_jobs"]) == (
        2, 1, "0 2", "3 5", "4:failed")
    assert failed["val_mIoU_mean"] == pytest.approx(0.6)  # 0.4 and 0.8; the failed job counts nowhere
    assert failed["val_mIoU_std"] == pytest.approx(statistics.stdev([0.4, 0.8]))
    assert failed["val_mIoU_n"] == 2

    killed = configs["loss=focal_dice class_weights=median_frequency"]
    assert (killed["n"], killed["n_not_ok"], killed["not_ok_jobs"]) == (2, 1, "11:incomplete")
    assert killed["test_mIoU_mean"] == pytest.approx(statistics.fmean([0.75, 0.70]))
    # cross is absent from seed 1's test split: its statistics come from the one job that scored it
    assert killed["test_IoU/cross_n"] == 1 and killed["test_IoU/cross_std"] is None
    assert killed["test_IoU/cross_mean"] == pytest.approx(0.8 / 5)
    assert killed["test_IoU/bar_n"] == 2


def test_a_single_seed_has_n_1_and_no_std(tmp_path):
    root = study(tmp_path / "sweep")
    single = by_overrides(sweeps.collect_by_config(root))["loss=focal_dice class_weights=none"]
    assert (single["n"], single["n_not_ok"], single["seeds"]) == (1, 0, "0")
    assert single["val_mIoU_mean"] == pytest.approx(0.5) and single["val_mIoU_n"] == 1
    assert single["val_mIoU_std"] is None and single["test_IoU/cross_std"] is None

    sweeps.write_summary(root, print_it=False)
    row = by_overrides(read_csv(root / sweeps.BY_CONFIG_CSV_NAME))["loss=focal_dice class_weights=none"]
    assert row["n"] == "1" and row["val_mIoU_std"] == "" and float(row["val_mIoU_mean"]) == pytest.approx(0.5)


def test_a_configuration_without_a_finished_job(tmp_path):
    root = tmp_path / "sweep"
    fake_job(root, 0, ["loss.gamma=-1", "seed=0"], "failed")
    fake_job(root, 1, ["loss.gamma=-1", "seed=1"], "failed")
    fake_job(root, 2, ["loss.gamma=2", "seed=0"], "ok", miou=0.5)
    fake_job(root, 3, ["loss.gamma=2", "seed=1"], "ok", miou=0.7)
    bad, good = sweeps.collect_by_config(root)
    assert (bad["loss.gamma"], bad["n"], bad["n_not_ok"]) == ("-1", 0, 2)
    assert bad["not_ok_jobs"] == "0:failed 1:failed"
    assert bad["val_mIoU_mean"] is None and bad["val_mIoU_std"] is None and bad["val_mIoU_n"] == 0
    assert good["val_mIoU_mean"] == pytest.approx(0.6)
    assert good["val_mIoU_std"] == pytest.approx(math.sqrt(0.02))  # (0.1² + 0.1²) / (2 - 1)
    sweeps.write_summary(root, print_it=False)  # a numeric key with an empty configuration still plots
    assert is_png(root / sweeps.BY_CONFIG_PLOT_NAME)


def test_write_summary_writes_both_csvs_and_plots(tmp_path):
    root = study(tmp_path / "sweep")
    csv_path = sweeps.write_summary(root, print_it=False)
    assert csv_path == root / "summary.csv"
    jobs = read_csv(csv_path)  # per job, as before: one row per job, seed a column
    assert [r["job"] for r in jobs] == ["0", "1", "2", "3", "4", "5", "6", "9", "10", "11"]
    assert [r["seed"] for r in jobs][:3] == ["0", "1", "2"] and jobs[4]["status"] == "failed"

    rows = read_csv(root / "summary_by_config.csv")
    assert len(rows) == 4
    columns = list(rows[0])
    assert columns[:8] == ["loss", "class_weights", "overrides", "n", "n_not_ok", "seeds", "jobs",
                           "not_ok_jobs"]
    scores = [*sweeps.AGGREGATED, *(f"test_IoU/{n}" for n in NAMES), "wall_time_s"]
    assert columns[8:] == [f"{s}_{stat}" for s in scores for stat in ("mean", "std", "n")]
    assert float(rows[0]["val_mIoU_std"]) == pytest.approx(0.1)
    assert rows[1]["n"] == "2" and rows[1]["n_not_ok"] == "1" and rows[1]["not_ok_jobs"] == "4:failed"
    assert is_png(root / "summary.png") and is_png(root / "summary_by_config.png")


def test_printed_table_shows_mean_std_n_and_the_excluded_jobs(tmp_path, capsys):
    root = study(tmp_path / "sweep")
    sweeps.write_summary(root)
    out = capsys.readouterr().out
    assert "10 jobs, 2 not ok" in out  # the per-job table is still printed, first
    by_config = out[out.index("4 configurations"):]
    assert "8 finished jobs, 2 not ok (excluded)" in by_config
    assert "60.00 ± 10.00" in by_config  # ce/none val mIoU in percent
    assert "50.00 ± -" in by_config  # the single-seed configuration
    assert "4 failed" in by_config and "11 incomplete" in by_config
    assert "ddof=1" in by_config and "n = finished jobs" in by_config


def test_only_seeds_swept_is_one_configuration(tmp_path):
    root = tmp_path / "sweep"
    for seed in range(3):
        fake_job(root, seed, ["loss=focal", f"seed={seed}"], "ok", miou=0.5 + 0.1 * seed)
    (config,) = sweeps.collect_by_config(root)
    assert config["overrides"] == "" and config["n"] == 3 and config["seeds"] == "0 1 2"
    assert config["val_mIoU_std"] == pytest.approx(0.1)


def test_a_sweep_without_seeds_has_one_configuration_per_job(tmp_path, capsys):
    root = tmp_path / "sweep"
    for i, gamma in enumerate(("0", "2", "5")):
        fake_job(root, i, [f"loss.gamma={gamma}"], "ok", miou=0.1 * (i + 1))
    configs = sweeps.collect_by_config(root)
    assert [(c["loss.gamma"], c["n"], c["seeds"], c["val_mIoU_std"]) for c in configs] == [
        ("0", 1, "-", None), ("2", 1, "-", None), ("5", 1, "-", None)]
    sweeps.write_summary(root)
    out = capsys.readouterr().out
    assert "3 jobs" in out and "configurations" not in out  # nothing to aggregate: no second table
    assert (root / "summary_by_config.csv").is_file() and is_png(root / "summary_by_config.png")


def test_seed_declared_in_multirun_yaml_and_other_seed_keys(tmp_path):
    root = tmp_path / "sweep"
    fake_job(root, 0, ["loss=ce", "seed=0", "datamodule.seed=0"], "ok", miou=0.5)
    fake_job(root, 1, ["loss=ce", "seed=1", "datamodule.seed=1"], "ok", miou=0.7)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - loss=ce\n    - seed=0,1\n    - datamodule.seed=0,1\n")
    configs = sweeps.collect_by_config(root)  # datamodule.seed is a configuration key by default
    assert [c["overrides"] for c in configs] == ["datamodule.seed=0", "datamodule.seed=1"]
    (both,) = sweeps.collect_by_config(root, seed_keys=("seed", "datamodule.seed"))
    assert both["n"] == 2 and both["seeds"] == "0/0 1/1" and both["val_mIoU_mean"] == pytest.approx(0.6)


def test_callback_writes_the_aggregate_and_still_exits_1_on_a_failed_job(tmp_path, capsys):
    root = study(tmp_path / "sweep")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}})
    with pytest.raises(SystemExit) as exit_info:
        summary.SweepSummary().on_multirun_end(config)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "4 configurations" in captured.out and "60.00 ± 10.00" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("sweep failed: 2 of 10 jobs not ok")
    assert (root / "summary_by_config.csv").is_file() and is_png(root / "summary_by_config.png")

    summary.SweepSummary(exit_on_failure=False, seed_keys=["seed", "class_weights"]).on_multirun_end(config)
    rows = read_csv(root / "summary_by_config.csv")
    assert [(r["loss"], r["n"], r["n_not_ok"]) for r in rows] == [("ce", "5", "1"), ("focal_dice", "3", "1")]


def test_callback_seed_keys_from_the_command_line():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["+hydra.callbacks.sweep_summary.seed_keys=[seed,datamodule.seed]"])
    callback = instantiate(cfg.hydra.callbacks.sweep_summary)
    assert isinstance(callback, summary.SweepSummary) and callback.seed_keys == ("seed", "datamodule.seed")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    assert instantiate(cfg.hydra.callbacks.sweep_summary).seed_keys == ("seed",)


def test_cli_on_a_finished_sweep(tmp_path):
    root = study(tmp_path / "sweep")
    proc = subprocess.run([sys.executable, "-m", "runs.summary", str(root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(root / "summary.csv")  # scripts read the last line
    assert lines[-2] == f"per configuration (mean ± std over seeds): {root / 'summary_by_config.csv'}"
    assert "60.00 ± 10.00" in proc.stdout and "4 failed" in proc.stdout
    assert len(read_csv(root / "summary_by_config.csv")) == 4 and is_png(root / "summary_by_config.png")

    proc = subprocess.run([sys.executable, "-m", "runs.summary", str(root), "--seed-key", "seed",
                           "--seed-key=class_weights"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [r["loss"] for r in read_csv(root / "summary_by_config.csv")] == ["ce", "focal_dice"]


def test_cli_usage(capsys):
    assert summary.main(["--help"]) == 0 and "summary_by_config.csv" in capsys.readouterr().out
    assert summary.main(["a", "b"]) == 2 and "usage" in capsys.readouterr().out
    assert summary.main(["--seed-key"]) == 2 and "usage" in capsys.readouterr().out


def test_aggregating_loads_no_torch_and_leaves_the_plot_backend_alone(tmp_path):
    # no torch for `python -m runs.summary`; no pyplot and no matplotlib.use("Agg"): a notebook that calls
    # write_summary keeps its inline backend (its later plt.show() still shows figures)
    root = study(tmp_path / "sweep")
    code = ("import sys, matplotlib; matplotlib.use('svg'); from evaluation import sweeps; "
            "sweeps.collect_by_config(sys.argv[1]); sweeps.write_summary(sys.argv[1], print_it=False); "
            "print(sorted(m for m in ('torch', 'seglosses', 'pytorch_lightning', 'matplotlib.pyplot') "
            "if m in sys.modules), matplotlib.get_backend())")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] svg"
    assert is_png(root / "summary.png") and is_png(root / "summary_by_config.png")
