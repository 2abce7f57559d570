"""Export a trained checkpoint's network to ONNX or TorchScript (docs/inference.md, "Export").

    python export.py ckpt_path=RUN/checkpoints/best-epoch007.ckpt format=onnx output=DIR
    python export.py ckpt_path=... format=torchscript output=DIR

Writes ``DIR/model.onnx`` (or ``model.pt``) with dynamic batch/height/width and ``DIR/model.json``; the
export is checked against the PyTorch network and the command exits 1 when they differ
(:mod:`runs.exporting`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from runs.console import quiet_third_party
from runs.errors import one_line_errors
from runs.exporting import export


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_third_party()  # Lightning's tips, deprecation notes of its dependencies (runs.console)
    result = export(cfg)
    print(f"exported {result.model} (+ {result.sidecar.name}); check on {result.check_shape}: "
          f"max |diff| {result.max_abs_diff:.3g}")


if __name__ == "__main__":
    main()
