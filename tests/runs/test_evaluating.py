"""evaluate.py (runs.evaluating): masks and probabilities written by predict.py from a tiny checkpoint, scored
against hand-made ground truths, give the brute-force numpy metrics and the per-image rows of the evaluation
functions; labels from a checkpoint or a datamodule config (one of them); unpaired files, sizes, values and
ignored overrides named; the command's exit status."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from datamodules.io import write_index_mask
from evaluation.per_image import PerImageCounts, per_image_counts
from runs.evaluating import evaluate_masks
from runs.predicting import predict
from tests.runs.inference_helpers import make_checkpoint, write_image

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"a": (40, 48), "b": (24, 20), "nested/c": (33, 41)}  # name -> (H, W)
IGNORE = 255
NAMES = ["background", "disc", "square", "bar", "cross"]
NO_SPATIAL = ("evaluation.objects.enabled=false", "evaluation.boundary.enabled=false")  # seconds less


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def evaluate_cfg(pred: Path, gt: Path, output: Path, *overrides: str):
    return compose_cfg("evaluate", f"pred={pred}", f"gt={gt}", f"output={output}", "progress=false",
                       *overrides)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> dict[str, Path]:
    """predict.py's output (masks and uint8 probabilities) for three images of mixed sizes, hand-made
    ground truths (random classes, a band of ignore_index) and the checkpoint."""
    root = tmp_path_factory.mktemp("eval")
    ckpt = make_checkpoint(root)[0]
    rng = np.random.default_rng(0)
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        write_image(root / "images" / f"{name}.png", h, w, seed=i)
        truth = rng.integers(0, 5, (h, w)).astype(np.uint8)
        truth[:, :3] = IGNORE
        (root / "gt" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(truth, mode="L").save(root / "gt" / f"{name}.png")
    cfg = compose_cfg("predict", f"ckpt_path={ckpt}", f"input={root / 'images'}", f"output={root / 'out'}",
                      "progress=false", "save.probabilities=uint8")
    assert predict(cfg).done == len(SIZES)
    return {"ckpt": ckpt, "out": root / "out", "gt": root / "gt"}


def hand_made(tmp_path: Path, sizes: dict[str, tuple[int, int]] = SIZES, gt_sizes=None) -> tuple[Path, Path]:
    """Folders of random 5-class predictions and ground truths (``gt_sizes``: other ground-truth sizes)."""
    rng = np.random.default_rng(2)
    for folder, shapes in (("pred", sizes), ("gt", gt_sizes or sizes)):
        for name, shape in shapes.items():
            write_index_mask(tmp_path / folder / f"{name}.png", rng.integers(0, 5, shape), [[0, 0, 0]] * 5)
    return tmp_path / "pred", tmp_path / "gt"


def load(pred_dir: Path, gt_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: (np.asarray(Image.open(pred_dir / f"{name}.png")),
                   np.asarray(Image.open(gt_dir / f"{name}.png"))) for name in SIZES}


def brute_iou(pairs: dict[str, tuple[np.ndarray, np.ndarray]], classes: int) -> list[float]:
    pred = np.concatenate([p.ravel() for p, _ in pairs.values()])
    truth = np.concatenate([t.ravel() for _, t in pairs.values()])
    keep = truth != IGNORE
    pred, truth = pred[keep], truth[keep]
    out = []
    for c in range(classes):
        tp = np.sum((pred == c) & (truth == c))
        union = np.sum((pred == c) | (truth == c))
        out.append(tp / union if union else math.nan)
    return out


def brute_ece(probs: np.ndarray, truth: np.ndarray, c: int, bins: int = 15) -> float:
    """Class-wise ECE of class ``c``: probabilities (P, K) float32 in [0, 1], truth (P,) class ids; the bin
    edges are torch.linspace's float32 ones (docs/evaluation.md): uint8 probabilities k / 255 fall on them
    (255 = 15 * 17), so their bins depend on the edges' last bit."""
    p = probs[:, c]
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float32).numpy()
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    correct = (truth == c).astype(np.float64)
    gap = sum(abs(correct[which == b].sum() - p[which == b].astype(np.float64).sum()) for b in range(bins))
    return gap / p.size


@pytest.mark.slow  # predict.py on a checkpoint: the full suite
def test_metrics_of_predicted_masks_are_the_brute_force_ones(predicted, tmp_path):
    out = tmp_path / "scores"
    record = evaluate_masks(evaluate_cfg(predicted["out"], predicted["gt"], out,
                                         f"ckpt_path={predicted['ckpt']}"))
    pairs = load(predicted["out"] / "masks", predicted["gt"])
    iou = brute_iou(pairs, 5)
    per_class = record["test"]["per_class"]
    assert list(per_class) == NAMES
    for name, expected in zip(NAMES, iou, strict=True):
        got = per_class[name]["iou"]
        assert (got is None and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
    assert record["test"]["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert record["images"] == 3 and record["labels"] == {"checkpoint": str(predicted["ckpt"])}
    assert record["probabilities"] == str(predicted["out"] / "probabilities")
    # calibration from the uint8 probabilities (read as x / 255), against numpy
    stored = [np.load(predicted["out"] / "probabilities" / f"{n}.npy").reshape(5, -1).T for n in SIZES]
    probs = np.concatenate(stored).astype(np.float32) / np.float32(255)
    truth = np.concatenate([t.ravel() for _, t in pairs.values()])
    keep = truth != IGNORE
    ece = record["test"]["calibration"]["per_class"]
    for c, name in enumerate(NAMES):
        assert ece[name]["ece"] == pytest.approx(brute_ece(probs[keep], truth[keep], c), abs=1e-9)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"]["mIoU"] == pytest.approx(record["test"]["mIoU"])
    assert set(on_disk["outputs"].values()) == {"test_per_image.csv", "confusion_test.csv",
                                                "confusion_test.png", "reliability_test.png"}
    assert all((out / name).is_file() for name in on_disk["outputs"].values())
    assert "objects" in on_disk["test"] and "boundary" in on_disk["test"]


@pytest.mark.slow  # predict.py on a checkpoint: the full suite
def test_per_image_rows_are_those_of_the_evaluation_functions(predicted, tmp_path):
    out = tmp_path / "scores"
    evaluate_masks(evaluate_cfg(predicted["out"], predicted["gt"], out, f"ckpt_path={predicted['ckpt']}"))
    pairs = load(predicted["out"] / "masks", predicted["gt"])
    parts = [([name], per_image_counts(torch.from_numpy(p.astype(np.int64))[None],
                                       torch.from_numpy(t.astype(np.int64))[None], 5, IGNORE))
             for name, (p, t) in pairs.items()]
    direct = PerImageCounts.merge(parts, 5)
    scores = direct.scores()
    with open(out / "test_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == list(direct.names) == sorted(SIZES)
    for i, row in enumerate(rows):
        for c, name in enumerate(NAMES):
            expected = float(scores["iou"][i, c])
            assert float(row[f"iou/{name}"]) == pytest.approx(expected, nan_ok=True)
            assert int(row[f"target_pixels/{name}"]) == int(direct.target_pixels()[i, c])
            assert int(row[f"pred_pixels/{name}"]) == int(direct.pred_pixels()[i, c])
        assert float(row["mIoU"]) == pytest.approx(float(scores["mIoU"][i]))
        assert f"objects_gt/{NAMES[1]}" in row and f"hd95/{NAMES[1]}" in row  # the families' columns


@pytest.mark.slow  # predict.py on a checkpoint: the full suite
def test_labels_from_a_datamodule_config_score_the_same(predicted, tmp_path):
    by_ckpt = evaluate_masks(evaluate_cfg(predicted["out"], predicted["gt"], tmp_path / "a",
                                          f"ckpt_path={predicted['ckpt']}", "evaluation=default"))
    by_config = evaluate_masks(evaluate_cfg(predicted["out"] / "masks", predicted["gt"], tmp_path / "b",
                                            "datamodule=synthetic"))
    assert by_config["labels"] == {"datamodule": "datamodules.SyntheticDataModule"}
    assert by_config["probabilities"] is None and "calibration" not in by_config["test"]  # no probs here
    assert by_config["test"]["per_class"] == by_ckpt["test"]["per_class"]


@pytest.mark.parametrize("overrides", [[], ["ckpt_path=model.ckpt", "datamodule=synthetic"]])
def test_exactly_one_source_of_labels(tmp_path, overrides):
    pred, gt = hand_made(tmp_path)
    with pytest.raises(ValueError, match="exactly one, got " + ("both" if overrides else "neither")):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", *overrides))


def test_unpaired_files_are_named_with_counts(tmp_path):
    pred, gt = hand_made(tmp_path, gt_sizes={"a": (40, 48), "extra1": (4, 4), "extra2": (4, 4)})
    with pytest.raises(ValueError) as error:
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic"))
    message = str(error.value)
    assert "2 predicted mask(s) without a ground truth" in message and "b.png, nested/c.png" in message
    assert "2 ground-truth mask(s) without a prediction" in message and "extra1.png, extra2.png" in message


def test_size_mismatch_names_both_files(tmp_path):
    pred, gt = hand_made(tmp_path, gt_sizes={**SIZES, "b": (24, 21)})
    with pytest.raises(ValueError, match=r"size mismatch: predicted mask .*pred/b.png is 20x24 .* ground "
                                         r"truth .*gt/b.png is 21x24"):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic"))


def test_float16_probabilities_of_another_shape_are_named(tmp_path):
    pred, gt = hand_made(tmp_path)
    for name, (h, w) in SIZES.items():
        (tmp_path / "p" / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "p" / f"{name}.npy", np.full((5, h, w - (name == "a")), 0.2, np.float16))
    probs = f"probs={tmp_path / 'p'}"
    with pytest.raises(ValueError, match=r"probabilities .*p/a.npy are \(5, 40, 47\) but the mask "
                                         r".*pred/a.png needs \(classes, H, W\) = \(5, 40, 48\)"):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic", probs))
    np.save(tmp_path / "p" / "a.npy", np.full((5, 40, 48), 0.2, np.float16))
    cfg = evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic", probs, *NO_SPATIAL)
    record = evaluate_masks(cfg)
    truth = np.concatenate([np.asarray(Image.open(gt / f"{n}.png")).ravel() for n in SIZES])
    for c, name in enumerate(NAMES):  # every probability 0.2 (float16 0.2002): |share of c - 0.2002|
        share = np.mean(truth == c)
        expected = abs(share - float(np.float32(np.float16(0.2))))
        assert record["test"]["calibration"]["per_class"][name]["ece"] == pytest.approx(expected, abs=1e-9)


def test_bad_values_and_unread_overrides_are_refused(tmp_path):
    pred, gt = hand_made(tmp_path)
    write_index_mask(pred / "a.png", np.full((40, 48), 7), [[0, 0, 0]] * 8)
    with pytest.raises(ValueError, match=r"predicted mask .*a.png holds values outside the multiclass labels "
                                         r"0..4 \(num_classes 5 of datamodule .*\): 7"):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic"))
    with pytest.raises(ValueError, match=r"datamodule.num_classes must be set for evaluate.py"):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=folder"))  # num_classes: ???
    with pytest.raises(ValueError, match=r"datamodule.batch_size=2: evaluate.py reads only"):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic"),
                       ["datamodule=synthetic", "datamodule.batch_size=2"])
    with pytest.raises(ValueError, match=r"probs=.*calibration only"):
        evaluate_masks(evaluate_cfg(pred, gt, tmp_path / "o", "datamodule=synthetic", f"probs={tmp_path}",
                                    "evaluation.calibration.enabled=false"))


def test_multilabel_bit_flags_and_value_map(tmp_path):
    """Predicted masks of bit flags (2 labels) against 0/2/255-coded truths mapped by value_map."""
    rng = np.random.default_rng(1)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    preds, truths = [], []
    for name in ("x", "y"):
        flags = rng.integers(0, 4, (16, 12)).astype(np.uint8)
        truth = rng.integers(0, 4, (16, 12)).astype(np.uint8)
        truth[0] = 9  # stored 9: ignored after value_map {9: 255}
        write_index_mask(pred_dir / f"{name}.png", flags, [[0, 0, 0]] * 4)
        gt_dir.mkdir(exist_ok=True)
        Image.fromarray(truth, mode="L").save(gt_dir / f"{name}_gt.png")
        preds.append(flags)
        truths.append(truth)
    record = evaluate_masks(evaluate_cfg(pred_dir, gt_dir, tmp_path / "o", "datamodule=synthetic",
                                         "datamodule.mode=multilabel", "datamodule.num_classes=2",
                                         "datamodule.class_names=[u,v]", "mask_suffix=_gt",
                                         "value_map={9: 255}", *NO_SPATIAL))
    pred, truth = np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in truths])
    keep = truth != 9
    for c, name in enumerate("uv"):
        p, t = (pred[keep] >> c) & 1, (truth[keep] >> c) & 1
        expected = np.sum(p & t) / np.sum(p | t)
        assert record["test"]["per_class"][name]["iou"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_command_exits_0_and_writes_metrics_then_1_with_one_line(predicted, tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "evaluate.py", f"pred={predicted['out']}", f"gt={predicted['gt']}",
            f"ckpt_path={predicted['ckpt']}", f"output={out}", "progress=false"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "metrics.json").read_text())["images"] == 3
    assert "test: objects found" in done.stdout and "metrics:" in done.stdout
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "Error: FileExistsError" in again.stderr and "overwrite=true" in again.stderr
