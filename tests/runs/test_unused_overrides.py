"""No knob silently does nothing (runs.unused_overrides): an override that nothing in the composed config
uses is refused at start-up, naming the key, the value, the chosen option and the options that use it; a
sweep over such a key fails before its first job; every top-level key of every loss option is either used
(setting it changes the loss) or refused (setting it would change nothing); the Tversky weights have their
own names; the overrides of the tests and the command lines of the docs are not refused."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runs.unused_overrides import (
    UnusedOverride,
    check_job_overrides,
    check_overrides,
    check_sweep,
    unused_overrides,
    used_keys,
)
from seglosses.tversky import TverskyLoss
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_ODD, SYNTHETIC_TINY

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
FOCAL = ["focal", "focal_dice"]


@pytest.fixture(autouse=True)
def _hydra():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(*overrides: str) -> DictConfig:
    return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def _unused(*overrides: str) -> list[str]:
    cfg = _compose(*overrides)
    return unused_overrides(cfg, overrides, cfg.hydra.runtime.choices)


def _refusal(*overrides: str) -> str:
    cfg = _compose(*overrides)
    with pytest.raises(UnusedOverride) as err:
        check_overrides(cfg, overrides, cfg.hydra.runtime.choices)
    return str(err.value)


def _sweep_config(*overrides: str) -> DictConfig:
    """The config Hydra's ``-m`` composes (sweep overrides unexpanded), as the sweep callbacks get it."""
    return GlobalHydra.instance().hydra.compose_config("train", list(overrides), run_mode=RunMode.MULTIRUN)


# ---- single runs ------------------------------------------------------------------------------------------


def test_gamma_with_ce_is_refused_naming_the_options_that_use_it():
    message = _refusal("loss=ce", "loss.gamma=2")
    assert message.startswith("loss.gamma=2 does nothing with loss=ce")
    users = re.search(r"the options of loss that use it: ([\w, ]+) \(", message).group(1).split(", ")
    assert users == FOCAL


def test_alpha_with_dice_is_refused():
    message = _refusal("loss=dice", "loss.alpha=0.25")
    assert "loss.alpha=0.25 does nothing with loss=dice" in message and "focal, focal_dice" in message


@pytest.mark.parametrize("option", FOCAL)
def test_gamma_and_alpha_with_a_focal_option_are_used(option):
    assert _unused(f"loss={option}", "loss.gamma=2", "loss.alpha=0.25") == []


def test_every_unused_override_is_named_once():
    message = _refusal("loss=ce", "loss.gamma=2", "loss.sync_ddp=true", "seed=3")
    lines = message.splitlines()
    assert len(lines) == 2 and lines[0].startswith("loss.gamma=2")
    assert lines[1].startswith("loss.sync_ddp=true")
    assert "dice" in lines[1] and "seed" not in message


def test_a_new_key_nothing_reads_is_refused():
    message = _refusal("+seeed=1")
    assert message == "+seeed=1 does nothing: nothing in the composed config reads seeed (did you mean seed?)"
    message = _refusal("loss=focal", "+loss.gama=3")
    assert "did you mean loss.gamma?" in message and "no option of loss uses it" in message


def test_a_typo_in_an_existing_group_is_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match=r"datamodule\.batchsize"):
        _compose("datamodule.batchsize=4")


def test_the_schedule_is_used_only_while_the_callback_refers_to_it():
    assert _unused("loss=focal", "loss.schedule.kind=linear") == []
    message = _refusal("loss=focal", "callbacks.gamma_schedule=null", "loss.schedule.kind=linear")
    assert message.startswith("loss.schedule.kind=linear does nothing with loss=focal")


def test_relative_and_select_interpolations_use_their_targets():
    tree = {
        "module": {"_target_": "m", "a": "${x.b}", "c": "${oc.select:y.d,1}"},
        "x": {"b": "${.e}", "e": 1, "f": 2},
        "y": {"d": 3},
        "z": {"w": "${x.f}"},  # z is not used: its reference does not count
    }
    used = used_keys(tree)
    assert {"module", "x.b", "x.e", "y.d"} <= used and "x.f" not in used and "z" not in used


def test_data_keys_and_group_selections_are_not_checked():
    overrides = ["seed=1", "train=true", "test=false", "ckpt_path=null", "optimized_metric=val/mDice",
                 "paths.data_dir=/data", "+paths.camvid=/data/camvid", "loss=ce", "class_weights=inverse",
                 "~logger", "hydra.job.chdir=false", "datamodule/transforms/train@datamodule.train_transform="
                 "normalize"]
    assert _unused(*overrides) == []


def test_programmatic_configs_and_single_runs_are_not_checked_per_job():
    check_job_overrides(_compose("loss=ce", "loss.gamma=2"))  # no Hydra run: nothing to check


# ---- sweeps -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("losses", ["ce,focal", "focal,ce"])
def test_a_sweep_of_gamma_over_an_option_without_focal_term_is_refused(losses):
    with pytest.raises(UnusedOverride) as err:
        check_sweep(_sweep_config(f"loss={losses}", "loss.gamma=0,1"))
    message = str(err.value)
    assert "the job with loss=ce" in message and "loss.gamma=0 does nothing with loss=ce" in message
    assert "focal, focal_dice" in message and message.endswith("no job was run")


def test_a_sweep_of_a_term_weight_names_the_options_that_have_the_term():
    with pytest.raises(UnusedOverride) as err:
        check_sweep(_sweep_config("loss=focal,dice_ce", "loss.weights.dice=0.5,1"))
    assert "loss.weights.dice=0.5 does nothing with loss=focal" in str(err.value)
    assert "that use it: dice_ce, focal_dice (" in str(err.value)  # not lovasz_ce: no dice term


@pytest.mark.parametrize(
    "overrides",
    [
        ("loss=focal,focal_dice", "loss.gamma=0,1,2"),
        ("hparams_search=focal_optuna",),
        pytest.param(("loss=ce,focal,dice,focal_dice", "class_weights=none,median_frequency"),
                     marks=pytest.mark.slow),
        pytest.param(("experiment=camvid_study", "loss=ce,focal_dice", "class_weights=none,inverse",
                      "seed=0,1,2"), marks=pytest.mark.slow),
        pytest.param(("hparams_search=focal_optuna", "experiment=camvid"), marks=pytest.mark.slow),
        pytest.param(("trainer=ddp_cpu", "loss.gamma=0,2", "debug=fdr", "~logger"), marks=pytest.mark.slow),
    ],
)
def test_sweeps_of_the_docs_and_presets_pass(overrides):
    check_sweep(_sweep_config(*overrides))


def test_optuna_params_are_checked():
    with pytest.raises(UnusedOverride, match=r"loss\.weights\.dice"):
        check_sweep(_sweep_config("hparams_search=focal_optuna", "loss=ce"))


# ---- every key of every loss option: used (it changes the loss) or refused (it would not) -----------------

#: A value for each top-level key of the loss options, different from every option's default.
NEW_VALUES = {
    "name": "other",
    "gamma": 1.25,
    "alpha": 0.125,
    "tversky_alpha": 0.125,
    "tversky_beta": 0.875,
    "tversky_gamma": 1.5,
    "class_weights": [1.0, 2.0, 3.0, 4.0, 5.0],
    "sync_ddp": True,
}


def _effect(cfg: DictConfig) -> tuple:
    """What a run builds from the loss config: the loss module and the gamma schedule callback."""
    nodes = (cfg.loss.module, cfg.callbacks.gamma_schedule)
    return tuple(OmegaConf.to_container(node, resolve=True) for node in nodes)


@pytest.mark.parametrize("option", LOSSES)
def test_every_top_level_key_of_every_loss_option_is_used_or_refused(option):
    base = _compose(f"loss={option}")
    keys = [k for k in base.loss if k != "module"]
    assert set(keys) == {*NEW_VALUES, "weights", "schedule"}
    before = _effect(base)
    weights = dict(base.loss.weights)
    for key in keys:
        cfg = copy.deepcopy(base)
        if key == "weights":
            if not weights:  # nothing to change: `loss.weights.<term>=` fails in Hydra (no such term)
                with pytest.raises(ConfigCompositionException):
                    _compose(f"loss={option}", "loss.weights.dice=2")
                continue
            term = next(iter(weights))
            override, path, value = f"loss.weights.{term}=3", f"loss.weights.{term}", 3.0
        elif key == "schedule":  # read by the gamma schedule callback with every option
            value = None if base.loss.schedule is not None else {"_target_": "seglosses.GammaSchedule"}
            override = "loss.schedule=null" if value is None else "loss.schedule={kind:constant}"
            path = "loss.schedule"
        else:
            value = NEW_VALUES[key]
            override, path = f"loss.{key}={value}", f"loss.{key}"
        OmegaConf.update(cfg, path, value, merge=False)  # what Hydra does with the override
        unused = unused_overrides(cfg, [override], base.hydra.runtime.choices)
        changed = _effect(cfg) != before
        assert changed == (not unused), f"loss={option} {override}: changes the loss: {changed}, {unused}"


def test_tversky_weights_reach_the_tversky_term():
    overrides = ["loss=tversky", "loss.tversky_alpha=0.2", "loss.tversky_beta=0.8", "loss.tversky_gamma=1.5"]
    assert _unused(*overrides) == []
    loss = instantiate(_compose(*overrides).loss.module)
    assert isinstance(loss, TverskyLoss) and (loss.alpha, loss.beta, loss.gamma) == (0.2, 0.8, 1.5)
    loss = instantiate(_compose("loss=focal_tversky", "loss.tversky_gamma=0.5").loss.module)
    assert (loss.alpha, loss.beta, loss.gamma) == (0.3, 0.7, 0.5)


def test_focal_names_on_a_tversky_option_point_to_the_tversky_names():
    message = _refusal("loss=focal_tversky", "loss.gamma=2")
    assert "did you mean loss.tversky_gamma?" in message and "focal, focal_dice" in message


# ---- no false alarms --------------------------------------------------------------------------------------


def test_the_overrides_of_the_tests_are_used(tmp_path):
    overrides = [
        *SYNTHETIC_TINY, *SYNTHETIC_ODD, *SMALL_UNET, *QUIET,
        f"paths.output_dir={tmp_path}", f"datamodule.stats_cache_dir={tmp_path}", "logger=csv",
        "debug=limit", "trainer.max_epochs=1", "+callbacks.sender._target_=builtins.dict",
        "+callbacks.sender.step=2", "callbacks.lr_monitor=null", "+trainer.enable_checkpointing=true",
        "model.prior_init=true", "model.prior=0.01", "inference.mode=slide", "inference.tta=[hflip]",
        "module.worst_images=0", "+trainer.profiler=null", "datamodule.sampling=rcs",
        "datamodule.crop_focus.p=0.33", "callbacks=[ema,early_stopping]", "callbacks.ema.decay=0.9",
        "evaluation.splits=[val,test]", "evaluation.objects.iou=0.3", "evaluation.topology.enabled=true",
    ]  # fmt: skip
    assert _unused(*overrides) == []


def _doc_commands() -> list[list[str]]:
    """The ``python train.py ...`` command lines of the docs and config comments that can run as written
    (no placeholders, shell variables or continued lines)."""
    commands = []
    for path in [*ROOT.glob("docs/*.md"), ROOT / "README.md", *CONF.rglob("*.yaml")]:
        for line in path.read_text().splitlines():
            match = re.search(r"python train\.py ([^`#]*)", line)
            if match is None or re.search(r"\.\.\.|<|\$|\\$|NAME|PATH|HOST", match.group(1)):
                continue
            words = shlex.split(match.group(1))
            if any("=" not in w and w != "-m" for w in words):
                continue
            if words not in commands:
                commands.append(words)
    return commands


@pytest.mark.slow
def test_the_command_lines_of_the_docs_are_not_refused():
    commands = _doc_commands()
    assert len(commands) > 10
    for words in commands:
        overrides = [w for w in words if w != "-m"]
        try:
            if "-m" in words:
                check_sweep(_sweep_config(*overrides))
            else:
                cfg = _compose(*overrides)
                check_overrides(cfg, overrides, cfg.hydra.runtime.choices)
        except UnusedOverride as e:
            pytest.fail(f"python train.py {' '.join(words)}: {e}")
        except Exception as e:  # a launcher plugin that is not installed, ...
            if "-m" not in words and "hydra/launcher" not in " ".join(words):
                pytest.fail(f"python train.py {' '.join(words)}: {type(e).__name__}: {e}")


# ---- the command line -------------------------------------------------------------------------------------


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_single_run_with_an_unused_override_stops_before_writing(tmp_path):
    proc = _train(tmp_path, "loss=ce", "loss.gamma=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("Error: loss.gamma=2 does nothing with loss=ce")
    assert "focal, focal_dice" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_sweep_of_gamma_over_ce_fails_before_any_job(tmp_path):
    proc = _train(tmp_path, "-m", "loss=focal,ce", "loss.gamma=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "loss.gamma=0 does nothing with loss=ce" in proc.stderr and "no job was run" in proc.stderr
    assert not (tmp_path / "sweep").exists() and "Traceback" not in proc.stderr
