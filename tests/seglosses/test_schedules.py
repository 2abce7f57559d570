import math
import pickle

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seglosses.schedules import GammaSchedule


def values(schedule, epochs):
    return [schedule(e) for e in epochs]


def test_constant_ignores_everything_else():
    s = GammaSchedule("constant", 2.0, gamma_end=5.0, epochs=0, milestones=[0, 0])
    assert values(s, [0, 1, 100]) == [2.0, 2.0, 2.0]


def test_linear_from_start_at_epoch_zero_to_end_at_last_epoch():
    # epochs = 5: t = e / 4 -> 0 + 2 t = 0, 0.5, 1, 1.5, 2; then stays at 2
    s = GammaSchedule("linear", 0.0, 2.0, epochs=5)
    assert values(s, [0, 1, 2, 3, 4, 5, 50]) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_linear_can_decrease():
    s = GammaSchedule("linear", 3.0, 1.0, epochs=3)
    assert values(s, [0, 1, 2]) == pytest.approx([3.0, 2.0, 1.0])


def test_cosine_by_hand():
    # epochs = 5, start 0, end 2: gamma = 2 + (0 - 2) (1 + cos(pi t)) / 2
    s = GammaSchedule("cosine", 0.0, 2.0, epochs=5)
    expected = [0.0, 2 - (1 + math.cos(math.pi / 4)), 1.0, 2 - (1 + math.cos(3 * math.pi / 4)), 2.0, 2.0]
    assert values(s, [0, 1, 2, 3, 4, 9]) == pytest.approx(expected)
    assert s(1) == pytest.approx(0.29289321881)


def test_step_moves_in_equal_steps_at_milestones():
    # 2 milestones: 1 -> 3 in steps of (3 - 1) / 2 = 1, at epochs 2 and 5
    s = GammaSchedule("step", 1.0, 3.0, milestones=[2, 5])
    assert values(s, [0, 1, 2, 3, 4, 5, 6, 99]) == [1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0]


def test_step_with_epochs_and_a_single_milestone():
    s = GammaSchedule("step", 0.0, 2.0, epochs=10, milestones=[9])
    assert values(s, [0, 8, 9]) == [0.0, 0.0, 2.0]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_one_epoch_gets_gamma_end(kind):
    s = GammaSchedule(kind, 0.0, 2.0, epochs=1)
    assert values(s, [0, 1]) == [2.0, 2.0]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_two_epochs_are_start_and_end(kind):
    s = GammaSchedule(kind, 0.5, 2.0, epochs=2)
    assert values(s, [0, 1]) == [0.5, 2.0]


def test_result_is_a_python_float():
    assert type(GammaSchedule("linear", 0, 2, epochs=3)(1)) is float
    assert type(GammaSchedule("constant", 2)(0)) is float


def test_picklable_and_plain_data():
    s = GammaSchedule("step", 0.0, 2.0, epochs=6, milestones=[1, 3])
    t = pickle.loads(pickle.dumps(s))
    assert t == s and values(t, range(6)) == values(s, range(6))
    with pytest.raises(AttributeError):
        s.gamma_start = 1.0  # frozen


def test_built_by_hydra_from_yaml():
    cfg = OmegaConf.create(
        "_target_: seglosses.schedules.GammaSchedule\nkind: step\ngamma_start: 0\ngamma_end: 2\n"
        "epochs: 4\nmilestones: [1, 2]\n"
    )
    s = instantiate(cfg)
    assert isinstance(s, GammaSchedule) and s.milestones == (1, 2)
    assert values(s, range(4)) == [0.0, 1.0, 2.0, 2.0]
    assert pickle.loads(pickle.dumps(s)) == s


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "exponential", "gamma_start": 1.0}, "kind must be one of"),
        ({"kind": "constant", "gamma_start": -1.0}, "gamma_start must be >= 0"),
        ({"kind": "constant", "gamma_start": float("nan")}, "gamma_start must be a finite number"),
        ({"kind": "constant", "gamma_start": "2"}, "gamma_start must be a finite number"),
        ({"kind": "linear", "gamma_start": 0.0, "gamma_end": -2.0, "epochs": 3}, "gamma_end must be >= 0"),
        ({"kind": "linear", "gamma_start": 0.0, "epochs": 3}, "needs gamma_end"),
        ({"kind": "cosine", "gamma_start": 0.0, "gamma_end": 2.0}, "needs epochs"),
        ({"kind": "linear", "gamma_start": 0.0, "gamma_end": 2.0, "epochs": 0}, "epochs must be an int >= 1"),
        ({"kind": "linear", "gamma_start": 0.0, "gamma_end": 2.0, "epochs": 2.5}, "epochs must be an int"),
        ({"kind": "step", "gamma_start": 0.0, "gamma_end": 2.0}, "non-empty list of milestones"),
        ({"kind": "step", "gamma_start": 0.0, "gamma_end": 2.0, "milestones": []}, "non-empty list"),
        ({"kind": "step", "gamma_start": 0.0, "gamma_end": 2.0, "milestones": [3, 3]}, "strictly increasing"),
        ({"kind": "step", "gamma_start": 0.0, "gamma_end": 2.0, "milestones": [0, 3]}, "ints >= 1"),
        ({"kind": "step", "gamma_start": 0.0, "gamma_end": 2.0, "milestones": [1.5]}, "ints >= 1"),
        ({"kind": "step", "gamma_start": 0, "gamma_end": 2, "epochs": 5, "milestones": [2, 5]}, "< epochs=5"),
        ({"kind": "step", "gamma_start": 0, "gamma_end": 2, "epochs": 0, "milestones": [2]}, "epochs must"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GammaSchedule(**kwargs)


@pytest.mark.parametrize("epoch", [-1, 1.5, None])
def test_invalid_epoch(epoch):
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        GammaSchedule("linear", 0.0, 2.0, epochs=3)(epoch)
