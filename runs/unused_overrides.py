"""No knob silently does nothing: a ``train.py`` override that the composed config does not use is refused
at start-up, naming the key, its value, the chosen option and the options of its group that do use it.

Without this, ``python train.py loss=ce loss.gamma=2`` trains plain cross-entropy in a run whose overrides
say gamma 2, and ``python train.py -m loss=ce,focal loss.gamma=0,1,2`` runs three identical ``ce`` jobs.

**Used.** A key of the composed config is used when it lies in a node that :mod:`runs.build` instantiates
(:data:`INSTANTIATED`) or that the code reads as a plain value (:data:`READ`), or when an interpolation in a
used value refers to it or to a node above it: ``${loss.gamma}``, the relative ``${.class_weights}``,
``${oc.select:trainer.num_nodes,1}``; ``${loss.weights}`` uses ``loss.weights.dice``. References are followed
from those roots until nothing new is used, so ``loss.gamma`` is used with ``loss=focal`` (the focal term and
the gamma schedule refer to it) and not with ``loss=ce`` (nothing refers to it), and ``loss.schedule.*`` is
used only while ``callbacks.gamma_schedule`` refers to ``${loss.schedule}``. The scan reads the unresolved
config: an interpolation that is never resolved still counts as a use (it cannot tell a value from a
default of ``oc.select`` that is never taken).

**Checked.** The overrides typed on the command line (``hydra.overrides.task``) that set a key, ``+key=`` and
``++key=`` included; not group selections (``loss=ce``), deletions (``~logger``) or ``hydra.*``. In a sweep
also the keys of ``hydra.sweeper.params`` (Optuna). :class:`UnusedOverrideGuard`, a Hydra callback
(``conf/hydra/default.yaml``), checks

- a single run in ``on_run_start``, before Hydra writes anything and before data or model are built;
- a sweep in ``on_multirun_start``, before any job runs: it composes the sweep's first job and, for every
  further value of every swept group (``loss=ce,focal``), that job with this value (1 + those values
  compositions, about 0.1-0.3 s each); combinations of values of two swept groups are not composed, so
  each job also checks its own overrides (:func:`check_job_overrides`, from :func:`runs.training.run`) and
  fails as a job of the sweep.

:func:`runs.training.run` called from Python with a config of ``hydra.compose`` checks nothing: there is no
command line, the caller chose every override.

**Cost.** The check walks the config once (milliseconds). Only a refusal composes the options of the group
(each option's group alone, about 0.1 s each, cached) to name those that use the key.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runs.errors import refuse_cleanly
from runs.ranks import is_ddp_child

__all__ = [
    "INSTANTIATED",
    "READ",
    "UnusedOverride",
    "UnusedOverrideGuard",
    "check_job_overrides",
    "check_overrides",
    "check_sweep",
    "unused_overrides",
    "used_keys",
]

#: The nodes that :mod:`runs.build` instantiates (``name.*``: every entry of ``name``); all keys inside
#: them are the objects' arguments.
INSTANTIATED = (
    "datamodule", "model", "class_weights", "loss.module", "optimizer", "scheduler", "inference", "module",
    "evaluation", "trainer", "callbacks.*", "logger.*",
)  # fmt: skip
#: The plain keys the code reads (``paths``: the run's directories and the data root, for interpolations;
#: ``hydra``: Hydra's own node, whose interpolations may refer to the task's keys).
READ = ("seed", "train", "test", "ckpt_path", "optimized_metric", "paths", "hydra")

# ${a.b}, ${.b}, ${..b}: a node interpolation (no resolver: no ':'); ${oc.select:a.b,default}: its key.
_NODE_REF = re.compile(r"\$\{\s*(\.*[^${}:,\s]+)\s*\}")
_SELECT_REF = re.compile(r"\$\{\s*oc\.select\s*:\s*(\.*[^${},\s]+)")
_HYDRA_MISSING_KEY = re.compile(r"Could not override '([^']+)'")


class UnusedOverride(ValueError):
    """An override sets a key that nothing in the composed config uses."""


# ---- which keys are used ----------------------------------------------------------------------------------


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, value)`` of every node below ``node`` (list items by index: ``a.b.0``)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield _join(path, key), value
            yield from _walk(value, _join(path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield _join(path, i), value
            yield from _walk(value, _join(path, i))


def _get(tree: Any, path: str) -> Any:
    node = tree
    for part in path.split(".") if path else []:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _exists(tree: Any, path: str) -> bool:
    parent, _, name = path.rpartition(".")
    node = _get(tree, parent) if parent else tree
    if isinstance(node, Mapping):
        return name in node
    return isinstance(node, list) and name.isdigit() and int(name) < len(node)


def _references(path: str, value: str) -> list[str]:
    """The absolute keys that the interpolations in ``value`` (the value at ``path``) refer to."""
    container = path.split(".")[:-1]
    found = []
    for ref in [*_NODE_REF.findall(value), *_SELECT_REF.findall(value)]:
        dots = len(ref) - len(ref.lstrip("."))
        if dots:  # relative to the node holding the value; each further dot one level up
            base = container[: len(container) - (dots - 1)] if dots - 1 <= len(container) else []
            ref = ".".join([*base, ref[dots:]])
        found.append(re.sub(r"\[(\w+)\]", r".\1", ref))
    return found


def _covered(key: str, used: Iterable[str]) -> bool:
    """``key`` lies in a used node, or a used key lies below it (an override of the whole node)."""
    return any(key == u or key.startswith(u + ".") or u.startswith(key + ".") for u in used)


def used_keys(tree: Mapping[str, Any]) -> set[str]:
    """The used nodes of the unresolved config ``tree`` (a plain container): the roots of
    :data:`INSTANTIATED` and :data:`READ` and what interpolations in used values refer to, followed until
    nothing new is used. A key is used when it lies in one of them."""
    used = set()
    for root in (*INSTANTIATED, *READ):
        if root.endswith(".*"):
            entries = _get(tree, root[:-2])
            used.update(_join(root[:-2], k) for k in (entries if isinstance(entries, Mapping) else ()))
        else:
            used.add(root)
    refs = [(p, r) for p, v in _walk(tree) if isinstance(v, str) and "${" in v for r in _references(p, v)]
    grown = True
    while grown:
        grown = False
        for path, ref in refs:
            if ref not in used and any(path == u or path.startswith(u + ".") for u in used):
                used.add(ref)
                grown = True
    return used


# ---- the overrides ----------------------------------------------------------------------------------------


def _key(override: Override) -> str:
    return re.sub(r"\[(\w+)\]", r".\1", override.key_or_group)


def _group_names(choices: Mapping[str, Any]) -> set[str]:
    return {name.split("@", 1)[0] for name in choices}


def _sets_a_key(override: Override, groups: set[str]) -> bool:
    """A key override: not a group selection, deletion or ``hydra.*``."""
    key = override.key_or_group
    if override.is_delete() or key == "hydra" or key.startswith("hydra."):
        return False
    return not (key in groups or "/" in key or override.package is not None)


@dataclass(frozen=True)
class _Group:
    """The config group whose option holds a key: ``loss`` (package ``loss``), option ``ce``."""

    name: str
    package: str
    option: str | None


def _group_of(key: str, choices: Mapping[str, Any]) -> _Group | None:
    best: _Group | None = None
    for choice, option in choices.items():
        name, _, package = choice.partition("@")
        if name == "hydra" or name.startswith("hydra/"):
            continue
        package = package or name.replace("/", ".")
        inside = key == package or key.startswith(package + ".")
        if inside and (best is None or len(package) > len(best.package)):
            best = _Group(name, package, None if option is None else str(option))
    return best


_option_trees: dict[tuple[str, str, str], Any] = {}


def _option_tree(group: _Group, option: str) -> Any:
    """The unresolved node that ``option`` of ``group`` puts at the group's package (composed alone)."""
    cache_key = (group.name, group.package, option)
    if cache_key not in _option_trees:
        cfg = compose(config_name=None, overrides=[f"+{group.name}@{group.package}={option}"])
        node = OmegaConf.select(cfg, group.package, default=None)
        _option_trees[cache_key] = OmegaConf.to_container(node, resolve=False) if node is not None else None
    return _option_trees[cache_key]


def _with_node(tree: Mapping[str, Any], path: str, node: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``node`` at ``path`` (the nodes on the way copied, the rest shared)."""
    out = dict(tree)
    head, _, rest = path.partition(".")
    if rest:
        below = out.get(head)
        out[head] = _with_node(below if isinstance(below, Mapping) else {}, rest, node)
    else:
        out[head] = copy.deepcopy(node)
    return out


def _options_using(key: str, group: _Group, tree: Mapping[str, Any]) -> list[str] | None:
    """The options of ``group`` with which ``key`` is used (the rest of ``tree`` as it is); None when the
    options cannot be composed here (no Hydra)."""
    if not GlobalHydra.instance().is_initialized():
        return None
    try:
        options = GlobalHydra.instance().config_loader().get_group_options(group.name)
        using = []
        for option in options:
            if option == group.option:
                continue
            variant = _with_node(tree, group.package, _option_tree(group, option))
            if _exists(variant, key) and _covered(key, used_keys(variant)):  # the option has the key, used
                using.append(option)
        return using
    except Exception:  # a broken option elsewhere must not hide the refusal itself
        return None


def _similar_used(key: str, tree: Mapping[str, Any], used: set[str]) -> list[str]:
    """Used keys next to ``key`` with a similar name (``loss.tversky_alpha`` for ``loss.alpha``)."""
    parent, _, name = key.rpartition(".")
    siblings = _get(tree, parent) if parent else tree
    if not isinstance(siblings, Mapping):
        return []
    names = [str(k) for k in siblings if str(k) != name and _covered(_join(parent, k), used)]
    close = set(difflib.get_close_matches(name, names, n=3, cutoff=0.8))
    return [_join(parent, n) for n in names if n in close or (len(name) > 2 and name in n)]


def _describe(override: Override, key: str, tree: Mapping[str, Any], used: set[str],
              choices: Mapping[str, Any]) -> str:
    typed = override.input_line or f"{override.get_key_element()}=..."
    group = _group_of(key, choices)
    text = f"{typed} does nothing"
    if group is not None and group.option is not None:
        text += f" with {group.name}={group.option}"
    text += f": nothing in the composed config reads {key}"
    similar = _similar_used(key, tree, used)
    if similar:
        text += f" (did you mean {' or '.join(similar)}?)"
    if group is not None:
        using = _options_using(key, group, tree)
        if using:
            text += (f"; the options of {group.name} that use it: {', '.join(using)} (choose one of them, "
                     f"or leave {key} out)")
        elif using is not None:
            text += f"; no option of {group.name} uses it"
    return text


def _tree(cfg: DictConfig, hydra_node: Any = None) -> dict[str, Any]:
    tree = OmegaConf.to_container(cfg, resolve=False)
    if hydra_node is not None and "hydra" not in tree:
        tree["hydra"] = OmegaConf.to_container(hydra_node, resolve=False)
    return tree


def unused_overrides(cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, Any],
                     hydra_node: Any = None) -> list[str]:
    """One message per override of ``overrides`` that sets a key of ``cfg`` (the config they composed)
    that nothing uses; ``choices`` are Hydra's ``runtime.choices`` of ``cfg`` (group -> option);
    ``hydra_node``: Hydra's node when ``cfg`` lacks it (a job's config)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = _group_names(choices)
    tree = _tree(cfg, hydra_node)
    used = used_keys(tree)
    return [_describe(o, _key(o), tree, used, choices)
            for o in parsed if _sets_a_key(o, groups) and not _covered(_key(o), used)]


def check_overrides(cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, Any],
                    hydra_node: Any = None) -> None:
    """Raise :class:`UnusedOverride` listing the overrides of :func:`unused_overrides`."""
    messages = unused_overrides(cfg, overrides, choices, hydra_node)
    if messages:
        raise UnusedOverride("\n".join(messages))


def check_job_overrides(cfg: DictConfig) -> None:
    """In a job of a ``-m`` sweep: :func:`check_overrides` with the job's own overrides (the sweep's
    start checked the values of each swept group, not every combination). Nothing outside a sweep: a
    single run was checked by :class:`UnusedOverrideGuard`, a config composed in Python has no command
    line."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    hydra_cfg = HydraConfig.get()
    check_overrides(cfg, list(hydra_cfg.overrides.task), hydra_cfg.runtime.choices, hydra_cfg)


# ---- sweeps -----------------------------------------------------------------------------------------------


def _values(override: Override) -> list[str]:
    """The override strings of each value of a (sweep) override: ``loss=ce,focal`` -> ``loss=ce``,
    ``loss=focal``; an interval (Optuna) gives its start."""
    if not override.is_sweep_override():
        return [override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}"]
    value = override.value()
    if isinstance(value, IntervalSweep):
        return [f"{override.get_key_element()}={value.start}"]
    if isinstance(value, Glob):
        options = GlobalHydra.instance().config_loader().get_group_options(override.key_or_group)
        return [f"{override.get_key_element()}={v}" for v in value.filter(options)]
    return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]


def sweep_jobs(overrides: Sequence[str], groups: set[str]) -> list[list[str]]:
    """The jobs that stand for a sweep: its first job, then for every further value of every swept group
    that job with this value."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values = [_values(o) for o in parsed]
    first = [v[0] for v in values if v]
    jobs = [first]
    for i, (override, options) in enumerate(zip(parsed, values, strict=True)):
        if not _sets_a_key(override, groups) and not override.is_delete():
            jobs += [[*first[:i], option, *first[i + 1 :]] for option in options[1:]]
    return jobs


def _group_choices(job: Sequence[str], groups: set[str]) -> str:
    parsed = OverridesParser.create().parse_overrides(list(job))
    return " ".join(o.input_line or "" for o in parsed if not _sets_a_key(o, groups) and not o.is_delete()
                    and not o.key_or_group.startswith("hydra"))


def _compose_job(config_name: str, job: list[str], where: str) -> DictConfig:
    """The config of a job of a sweep (``hydra`` node included); a job that does not compose raises
    :class:`UnusedOverride`, which names the options that use the key when the option lacks it."""
    try:
        return compose(config_name=config_name, overrides=job, return_hydra_config=True)
    except Exception as e:
        message = str(e).strip()
    missing = _HYDRA_MISSING_KEY.search(message)
    typed = [o for o in job if missing is not None and o.lstrip("+").split("=", 1)[0] == missing.group(1)]
    if typed:  # e.g. loss.weights.dice=2 with loss=dice: what would it be with the other options?
        try:
            base = compose(config_name=config_name, overrides=[o for o in job if o not in typed],
                           return_hydra_config=True)
            override = OverridesParser.create().parse_override(typed[0])
            tree = _tree(base)
            text = _describe(override, _key(override), tree, used_keys(tree), base.hydra.runtime.choices)
            raise UnusedOverride(f"in this sweep ({where}): {text}\nno job was run")
        except UnusedOverride:
            raise
        except Exception:
            pass
    raise UnusedOverride(f"a job of this sweep does not compose ({where}): {message}\nno job was run")


def check_sweep(config: DictConfig) -> None:
    """Raise :class:`UnusedOverride` when a job of the sweep of ``config`` (the multirun config, with its
    ``hydra`` node) would set a key that nothing uses, or would not compose: see :func:`sweep_jobs`."""
    task = [str(o) for o in config.hydra.overrides.task]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    overrides = [*task, *(f"{k}={v}" for k, v in params.items())]
    groups = _group_names(config.hydra.runtime.choices)
    for job in sweep_jobs(overrides, groups):
        where = _group_choices(job, groups)
        where = f"the job with {where}" if where else "its jobs"
        cfg = _compose_job(config.hydra.job.config_name, job, where)
        messages = unused_overrides(cfg, job, cfg.hydra.runtime.choices)
        if messages:
            raise UnusedOverride(f"in this sweep ({where}): " + "\n".join(messages)
                                 + "\nsweep such a key only over the options that use it; no job was run")


# ---- the Hydra callback -----------------------------------------------------------------------------------


class UnusedOverrideGuard(Callback):
    """Hydra callback: refuse a run or a sweep with an override that nothing uses, before Hydra writes
    anything (see the module's docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        overrides, choices = list(hydra.overrides.task), hydra.runtime.choices
        refuse_cleanly(UnusedOverride, check_overrides, config, overrides, choices)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_ddp_child():
            return
        refuse_cleanly(UnusedOverride, check_sweep, config)
