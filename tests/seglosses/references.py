"""What the float64 references of the loss tests share: the inputs as the formulas see them, and the cases.

Each reference is written from its loss's formula on :func:`dense_reference`'s tensors: the probabilities,
the one-hot (or dense) target and the mask of the counted elements, all (N, C, *) in float64, so that the
references never use the loss's own index tricks or ignore handling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Spatial shapes of the cases: images, volumes, and no spatial dim at all.
SPATIAL = {"2d": (3, 4), "3d": (2, 3, 2), "none": ()}

#: (mode, spatial, ignore) of the reference comparisons; ignore is "none", "class" (an ignore_index that is
#: a class id, multiclass only) or "255".
CASES = [
    (mode, dims, ignore)
    for mode in ("multiclass", "binary", "multilabel")
    for dims in SPATIAL
    for ignore in ("none", "class", "255")
    if not (ignore == "class" and mode != "multiclass")
]


def dense_reference(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: int | None = None,
    *,
    from_logits: bool = True,
    keep_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, p, g, v)``, each (N, C, *) float64 (binary (N, *) inputs get their channel dim):

    - ``x``: the input (logits, or probabilities with ``from_logits=False``);
    - ``p``: the probabilities: ``softmax(x, 1)`` in multiclass mode, ``sigmoid(x)`` otherwise, ``x`` itself
      with ``from_logits=False``;
    - ``g``: the target, class ids as one-hot rows; 0 at ignored pixels (elements);
    - ``v``: 1 at the counted pixels (elements), 0 at those whose target is ``ignore_index``.

    ``keep_graph`` keeps the input's graph, for gradient comparisons.
    """
    x = input.double() if keep_graph else input.detach().double()
    t = target.detach()
    if mode == "binary" and x.shape[1:2] != (1,):  # (N, *) -> (N, 1, *)
        x, t = x[:, None], t[:, None]
    if not from_logits:
        p = x
    else:
        p = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "multiclass" and not t.is_floating_point():  # class ids -> one-hot (N, C, *)
        keep = torch.ones_like(t) if ignore_index is None else (t != ignore_index).long()
        g = F.one_hot(t * keep, x.shape[1]).movedim(-1, 1).double() * keep[:, None]
        v = keep[:, None].double().expand_as(g)
    else:  # dense targets: an element equal to ignore_index is left out
        t = t.double()
        v = torch.ones_like(t) if ignore_index is None else (t != ignore_index).double()
        g = t * v
    return x, p, g, v
