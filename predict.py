"""Predict masks for new images of any size with a trained checkpoint (docs/inference.md).

    python predict.py ckpt_path=RUN/checkpoints/best-epoch007.ckpt input=IMAGES_DIR output=OUT
    python predict.py ckpt_path=... input=tile.png output=OUT inference.mode=slide inference.overlap=0.5
    python predict.py ckpt_path=... input=list.txt output=OUT inference.tta=[hflip,vflip] save.overlays=true

Writes ``OUT/masks`` (palette PNGs), optionally ``OUT/probabilities`` and ``OUT/overlays``, and
``OUT/summary.json`` (:mod:`runs.predicting`). Exit status 1 when an image was skipped or the run failed.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from runs.console import quiet_third_party
from runs.errors import one_line_errors
from runs.predicting import predict


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_third_party()  # Lightning's tips, deprecation notes of its dependencies (runs.console)
    summary = predict(cfg)
    if summary.skipped:
        print(f"{len(summary.skipped)} of {summary.done + len(summary.skipped)} images were skipped",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
