"""Score saved masks against ground-truth masks (docs/evaluation.md, "Scoring saved masks").

    python evaluate.py pred=OUT gt=GT_DIR ckpt_path=RUN/checkpoints/best-epoch007.ckpt
    python evaluate.py pred=OUT/masks gt=data/camvid/testannot datamodule=camvid probs=OUT/probabilities

``pred``: predicted masks (index or palette PNGs; ``predict.py``'s output folder), paired with ``gt`` by
name; the classes from a checkpoint or a datamodule config. Writes into ``output`` what a training run's
test writes: ``metrics.json``, ``test_per_image.csv``, ``confusion_test.csv``/``.png`` and, with
probabilities, ``reliability_test.png``; prints the same tables (:mod:`runs.evaluating`). Exit status 1 on
any error.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runs.errors import one_line_errors


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from runs.console import quiet_third_party
    from runs.evaluating import evaluate_masks

    quiet_third_party()
    evaluate_masks(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
