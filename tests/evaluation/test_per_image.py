"""Per-image pixel counts and scores (evaluation.per_image: per_image_counts, PerImageCounts), the
worst-images table, and SegmentationModule's test-stage per-image rows and confusion matrices, against
numpy brute force."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from evaluation.confusion import MultilabelSegmentationMetrics, SegmentationMetrics
from evaluation.per_image import PerImageCounts, per_image_counts
from evaluation.tables import worst_images, worst_images_table

IGNORE = 255


def numpy_counts(preds: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None,
                 multilabel: bool = False) -> np.ndarray:
    """(B, C, 4) [TP, FP, FN, TN] with boolean masks, image by image and class by class."""
    out = np.zeros((len(preds), num_classes, 4), dtype=np.int64)
    for b in range(len(preds)):
        for c in range(num_classes):
            if multilabel:
                p, t = preds[b, c], target[b, c]
                valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
                pc, tc = p == 1, t == 1
            else:
                p, t = preds[b], target[b]
                valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
                pc, tc = p == c, t == c
            out[b, c] = [np.sum(pc & tc & valid), np.sum(pc & ~tc & valid), np.sum(~pc & tc & valid),
                         np.sum(~pc & ~tc & valid)]
    return out


def numpy_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    tp, fp, fn = (counts[..., i].astype(np.float64) for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN row
        means = {"mIoU": np.nanmean(iou, axis=-1), "mDice": np.nanmean(dice, axis=-1)}
    return {"iou": iou, "dice": dice, **means}


def _random(seed: int, shape: tuple[int, ...], high: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ignore_index", [IGNORE, None, 0])
@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_counts_match_numpy(seed, ignore_index):
    preds, target = _random(seed, (3, 5, 7), 4), _random(seed + 10, (3, 5, 7), 4)
    if ignore_index == IGNORE:
        target[target == 3] = IGNORE  # class 3 left only in predictions
        target[0, :2] = IGNORE
    counts = per_image_counts(preds, target, 4, ignore_index)
    assert counts.dtype == torch.int64 and counts.shape == (3, 4, 4)
    expected = numpy_counts(preds.numpy(), target.numpy(), 4, ignore_index)
    np.testing.assert_array_equal(counts.numpy(), expected)


def test_binary_counts_match_numpy():
    preds, target = _random(2, (4, 6, 6), 2), _random(3, (4, 6, 6), 2)
    target[1] = IGNORE  # an image with every pixel ignored: counts 0, scores NaN
    counts = per_image_counts(preds, target, 2, IGNORE)
    np.testing.assert_array_equal(counts.numpy(), numpy_counts(preds.numpy(), target.numpy(), 2, IGNORE))
    assert counts[1].sum() == 0
    scores = PerImageCounts(tuple("abcd"), counts).scores()
    assert torch.isnan(scores["iou"][1]).all() and torch.isnan(scores["mIoU"][1])


def test_multilabel_counts_match_numpy():
    preds, target = _random(4, (3, 3, 5, 5), 2), _random(5, (3, 3, 5, 5), 2)
    target[:, :, 0, :2] = IGNORE  # ignored in every channel
    target[0, 1, 4, 4] = IGNORE  # and one element of one label only
    counts = per_image_counts(preds, target, 3, IGNORE, multilabel=True)
    np.testing.assert_array_equal(
        counts.numpy(), numpy_counts(preds.numpy(), target.numpy(), 3, IGNORE, multilabel=True)
    )


def test_counts_summed_over_images_are_the_dataset_confusion_matrix():
    preds, target = _random(6, (4, 8, 8), 3), _random(7, (4, 8, 8), 3)
    target[:, 0] = IGNORE
    metric = SegmentationMetrics(3, IGNORE)
    metric.update(preds, target)
    cm = metric.compute_matrix()
    tp, fp, fn, tn = per_image_counts(preds, target, 3, IGNORE).sum(0).unbind(-1)
    torch.testing.assert_close(tp, cm.diagonal())
    torch.testing.assert_close(fp, cm.sum(0) - cm.diagonal())
    torch.testing.assert_close(fn, cm.sum(1) - cm.diagonal())
    assert int((tp + fp + fn + tn)[0]) == int(cm.sum()) == int((target != IGNORE).sum())

    preds, target = _random(8, (2, 3, 4, 4), 2), _random(9, (2, 3, 4, 4), 2)
    target[0, :, 0] = IGNORE
    metric = MultilabelSegmentationMetrics(3, IGNORE)
    metric.update(preds, target)
    tp, fp, fn, tn = per_image_counts(preds, target, 3, IGNORE, multilabel=True).sum(0).unbind(-1)
    cm = metric.compute_matrix()  # (C, 2, 2) [[TN, FP], [FN, TP]]
    torch.testing.assert_close(torch.stack([tn, fp, fn, tp], -1).reshape(3, 2, 2), cm)


def test_scores_match_numpy_and_are_nan_where_a_class_is_absent_from_both():
    # image 0: class 2 in neither mask nor prediction; image 1: class 2 predicted only (IoU 0)
    target = torch.tensor([[[0, 0, 1, 1]], [[0, 1, 1, IGNORE]]])
    preds = torch.tensor([[[0, 1, 1, 1]], [[2, 1, 1, 0]]])
    counts = per_image_counts(preds, target, 3, IGNORE)
    scores = PerImageCounts(("a", "b"), counts).scores()
    expected = numpy_scores(counts.numpy())
    for key in ("iou", "dice", "mIoU", "mDice"):
        np.testing.assert_allclose(scores[key].numpy(), expected[key], equal_nan=True)
    assert scores["iou"][0].tolist()[:2] == [1 / 2, 2 / 3] and np.isnan(scores["iou"][0, 2].item())
    assert scores["iou"][1].tolist() == [0.0, 1.0, 0.0]
    assert scores["mIoU"][0].item() == pytest.approx((1 / 2 + 2 / 3) / 2)  # nanmean: class 2 left out
    assert scores["mIoU"].dtype == torch.float64 and scores["mIoU"].shape == (2,)


def test_merge_sorts_by_name_and_keeps_rows_of_batches_of_any_size():
    c = torch.arange(3 * 2 * 4).reshape(3, 2, 4)
    merged = PerImageCounts.merge([(["img_2"], c[:1]), (["img_0", "img_1"], c[1:])], num_classes=2)
    assert merged.names == ("img_0", "img_1", "img_2")
    torch.testing.assert_close(merged.counts, c[[1, 2, 0]])
    torch.testing.assert_close(merged.target_pixels(), c[[1, 2, 0], :, 0] + c[[1, 2, 0], :, 2])
    torch.testing.assert_close(merged.pred_pixels(), c[[1, 2, 0], :, 0] + c[[1, 2, 0], :, 1])
    empty = PerImageCounts.merge([], num_classes=2)
    assert len(empty) == 0 and empty.counts.shape == (0, 2, 4)
    with pytest.raises(ValueError, match="names"):
        PerImageCounts(("a",), c)


def test_worst_images_lowest_first_without_nan():
    miou = torch.tensor([0.5, float("nan"), 0.1, 0.5, 0.9], dtype=torch.float64)
    names = ["e", "a", "b", "c", "d"]
    assert worst_images(names, miou, 3) == [2, 3, 0]  # tie at 0.5 by name: "c" before "e"
    assert worst_images(names, miou, 10) == [2, 3, 0, 4]
    assert worst_images(names, miou, 0) == []
    iou = torch.tensor([[0.5, 0.5], [float("nan")] * 2, [0.1, float("nan")], [0.4, 0.6], [0.9, 0.9]])
    table = worst_images_table(names, {"iou": iou, "mIoU": miou, "mDice": miou}, ["bg", "car"], 2, "worst")
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    assert "worst" in text and [[c.strip() for c in r] for r in rows] == [
        ["1", "b", "10.00", "10.00", "bg 10.00"], ["2", "c", "50.00", "50.00", "bg 40.00"]]


# ---- the module's test stage -------------------------------------------------------------------------------


class MixedSizes(Dataset):
    """Images of three sizes (multiples of 8 for the tiny U-Net), masks with ignored pixels."""

    SIZES = ((32, 32), (24, 40), (40, 24), (32, 32), (24, 24))

    def __init__(self, num_classes: int = 3, multilabel: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.samples = []
        for i, (h, w) in enumerate(self.SIZES):
            if multilabel:
                mask = torch.randint(0, 2, (num_classes, h, w), generator=g)
                image = torch.randn(num_classes, h, w, generator=g) * 0.1 + mask.float()
                mask[:, 0, :3] = IGNORE
            else:
                mask = torch.randint(0, num_classes, (h, w), generator=g)
                image = torch.randn(3, h, w, generator=g) * 0.1
                image[0] += mask.float()
                mask[0, :3] = IGNORE
            self.samples.append({"image": image, "mask": mask, "name": f"img_{4 - i}"})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def _brute_force(module, dataset: MixedSizes, multilabel: bool) -> tuple[list[str], np.ndarray]:
    names, counts = [], []
    module.eval()
    with torch.no_grad():
        for sample in dataset:
            preds = module.predict_classes(module(sample["image"][None]))
            c = module.metric_classes
            counts.append(numpy_counts(preds.numpy(), sample["mask"][None].numpy(), c, IGNORE, multilabel)[0])
            names.append(sample["name"])
    order = np.argsort(names)
    return [names[i] for i in order], np.stack(counts)[order]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_test_stage_keeps_per_image_counts_of_mixed_size_batches(mode, make_module, trainer, capsys):
    multilabel = mode == "multilabel"
    num_classes = {"multiclass": 3, "binary": 1, "multilabel": 3}[mode]
    module = make_module(lambda logits, target: logits.mean(), num_classes=num_classes, mode=mode,
                         class_names=None, print_tables="best_and_test", worst_images=2)
    dataset = MixedSizes(num_classes=2 if mode == "binary" else 3, multilabel=multilabel)
    trainer().test(module, dataloaders=DataLoader(dataset, batch_size=1), verbose=False)

    per_image = module.per_image["test"]
    names, expected = _brute_force(module, dataset, multilabel)
    assert list(per_image.names) == names == [f"img_{i}" for i in range(5)]
    np.testing.assert_array_equal(per_image.counts.numpy(), expected)
    assert per_image.counts.dtype == torch.int64
    # the synced confusion matrix: the sum of the images' counts, every non-ignored pixel once
    confusion = module.confusion["test"]
    assert confusion.device.type == "cpu" and confusion.dtype == torch.int64
    tp, fp, fn, tn = per_image.counts.sum(0).unbind(-1)
    if multilabel:
        torch.testing.assert_close(confusion, torch.stack([tn, fp, fn, tp], -1).reshape(-1, 2, 2))
    else:
        torch.testing.assert_close(confusion.diagonal(), tp)
        assert int(confusion.sum()) == sum(int((s["mask"] != IGNORE).sum()) for s in dataset)
    out = capsys.readouterr().out
    assert "2 worst images by mIoU" in out
    worst = worst_images(per_image.names, per_image.scores()["mIoU"], 2)
    assert out.index(per_image.names[worst[0]]) < out.index(per_image.names[worst[1]])


def test_worst_images_zero_prints_no_table_and_is_checked(make_module, trainer, capsys):
    module = make_module(nn.CrossEntropyLoss(ignore_index=IGNORE), print_tables="best_and_test",
                         worst_images=0)
    trainer().test(module, dataloaders=DataLoader(MixedSizes(), batch_size=1), verbose=False)
    out = capsys.readouterr().out
    assert "test" in out and "worst images" not in out
    assert len(module.per_image["test"]) == 5  # still counted
    with pytest.raises(ValueError, match="worst_images must be an int >= 0"):
        make_module(nn.CrossEntropyLoss(), worst_images=-1)


def test_validation_keeps_the_confusion_matrix_but_no_per_image_rows(make_module, trainer, loader):
    module = make_module(nn.CrossEntropyLoss(ignore_index=IGNORE))
    trainer().validate(module, dataloaders=loader(), verbose=False)
    assert set(module.confusion) == {"val"} and "val" not in module.per_image
    assert int(module.confusion["val"].sum()) == 8 * (32 * 32 - 4)
