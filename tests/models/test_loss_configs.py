"""The loss options of conf/loss: composed from common/ and terms/, each instantiates, none copies the
interface keys back."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runs.build import build_loss
from seglosses.combined import CombinedLoss
from seglosses.focal import CrossEntropyLoss, FocalLoss
from seglosses.mining import OhemCrossEntropyLoss, TopKCrossEntropyLoss
from seglosses.tversky import TverskyLoss

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

LOSS_CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
OPTIONS = sorted(p.stem for p in LOSS_CONF.glob("*.yaml"))
INTERFACE = [
    "name", "gamma", "alpha", "tversky_alpha", "tversky_beta", "tversky_gamma", "class_weights", "weights",
    "sync_ddp", "schedule",
]  # fmt: skip
# What an option file may set besides its defaults list: its name and the weights of its terms.
OPTION_KEYS = {"defaults", "name", "weights"}
WEIGHTS = [0.5, 1.0, 2.0, 3.0, 4.0]  # one per class of the default (synthetic, multiclass) datamodule


def compose_loss(option: str, *overrides: str):
    with initialize_config_dir(config_dir=str(LOSS_CONF.parent), version_base="1.3"):
        return compose(config_name="train", overrides=[f"loss={option}", *overrides])


def test_options():
    assert OPTIONS == [
        "ce", "dice", "dice_ce", "focal", "focal_dice", "focal_tversky", "generalized_dice", "lovasz",
        "lovasz_ce", "ohem_ce", "topk_ce", "tversky",
    ]  # fmt: skip


def term_names(option: str, loss) -> list[str]:
    """A combined option is named by its terms (``dice_ce``: dice + ce); a single-term option by its term."""
    return sorted(option.split("_")) if isinstance(loss, CombinedLoss) else [option]


@pytest.mark.parametrize("option", OPTIONS)
def test_option_composes_and_instantiates_with_class_weights(option):
    cfg = compose_loss(option)
    assert cfg.datamodule.mode == "multiclass" and cfg.datamodule.num_classes == len(WEIGHTS)
    assert list(cfg.loss) == [*INTERFACE, "module"]  # every option has the same knobs, in this order
    assert cfg.loss.name == option
    cfg.loss.class_weights = WEIGHTS  # what train.py does with the class_weights group's weights
    loss = instantiate(cfg.loss.module)
    terms = dict(loss.losses) if isinstance(loss, CombinedLoss) else {option: loss}
    assert sorted(terms) == term_names(option, loss)
    if isinstance(loss, CombinedLoss):
        assert loss.weights == {name: 1.0 for name in terms}
    for name, term in terms.items():
        assert term.mode == "multiclass" and term.ignore_index == cfg.datamodule.ignore_index
        if name == "ce":
            assert isinstance(term, CrossEntropyLoss)
            torch.testing.assert_close(term.weight, torch.tensor(WEIGHTS))
        if name == "focal":
            assert type(term) is FocalLoss and term.gamma == 2.0
            torch.testing.assert_close(term.alpha, torch.tensor(WEIGHTS))  # alpha defaults to the weights
        if name in ("ohem_ce", "topk_ce"):  # the cross-entropy weight is the class weights
            assert isinstance(term, (OhemCrossEntropyLoss, TopKCrossEntropyLoss))
            torch.testing.assert_close(term.weight, torch.tensor(WEIGHTS))
        if name == "focal_tversky":  # Abraham & Khan's settings on top of the Tversky term
            assert isinstance(term, TverskyLoss) and (term.alpha, term.beta, term.gamma) == (0.3, 0.7, 0.75)
    logits = torch.randn(2, len(WEIGHTS), 8, 8)
    target = torch.randint(0, len(WEIGHTS), (2, 8, 8))
    assert torch.isfinite(loss(logits, target))
    if "focal" in terms:
        assert instantiate(cfg.loss.schedule)(0) == 2.0
    else:
        assert cfg.loss.schedule is None and cfg.loss.gamma is None and cfg.loss.alpha is None


@pytest.mark.parametrize("option", ["focal", "focal_dice"])  # the others refuse them (test_unused_overrides)
def test_focal_options_take_the_sweep_overrides(option):
    cfg = compose_loss(option, "loss.gamma=0", "loss.alpha=0.25", "class_weights=median_frequency")
    resolved = OmegaConf.to_container(cfg.loss, resolve=True)
    assert resolved["gamma"] == 0 and resolved["alpha"] == 0.25
    focal = resolved["module"] if option == "focal" else resolved["module"]["losses"]["focal"]
    assert focal["gamma"] == 0 and focal["alpha"] == 0.25


@pytest.mark.parametrize("option", OPTIONS)
def test_option_files_compose_and_do_not_repeat_the_interface(option):
    raw = OmegaConf.load(LOSS_CONF / f"{option}.yaml")
    extra = sorted(set(raw) - OPTION_KEYS)
    assert not extra, f"{option}.yaml sets {extra}: shared keys belong in common/, term blocks in terms/"
    defaults = list(raw.defaults)
    assert defaults[0] == "common/interface@_here_" and defaults[-1] == "_self_"
    assert all(d.startswith(("common/", "terms/")) for d in defaults[1:-1])


def test_interface_and_term_files():
    interface = OmegaConf.load(LOSS_CONF / "common" / "interface.yaml")
    assert list(interface) == INTERFACE and OmegaConf.is_missing(interface, "name")
    for path in LOSS_CONF.glob("terms/*.yaml"):
        term = OmegaConf.load(path)  # a term names its class, or extends another term (focal_tversky)
        assert "_target_" in term or list(term.defaults) == [path.stem.split("_")[-1], "_self_"], path
    for path in [*LOSS_CONF.glob("common/*.yaml"), *LOSS_CONF.glob("terms/*.yaml")]:
        assert path.read_text().startswith("# Not a loss option"), path


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize(
    ("overrides", "weights"),
    [
        ((), torch.tensor(WEIGHTS)),  # multiclass with class weights, as train.py builds it
        (("datamodule.mode=binary", "datamodule.num_classes=1"), None),
        (("datamodule.mode=multilabel", "loss.alpha=0.25"), None),
    ],
)
def test_option_builds_probes_and_trains_a_step_in_every_mode(option, overrides, weights):
    """runs.build.build_loss (checks, instantiate, the start-up probe of every term), then a forward and
    backward pass on a batch of the mode."""
    cfg = compose_loss(option, *overrides)
    loss = build_loss(cfg, weights)
    mode, c = cfg.datamodule.mode, cfg.datamodule.num_classes
    logits = torch.randn(2, c, 8, 8, requires_grad=True)
    if mode == "multiclass":
        target = torch.randint(0, c, (2, 8, 8))
        target[0, 0] = cfg.datamodule.ignore_index
    else:
        target = (torch.rand(2, c, 8, 8) < 0.3).float()
    value = loss(logits, target)
    value.backward()
    assert value.shape == () and torch.isfinite(value) and torch.isfinite(logits.grad).all()
