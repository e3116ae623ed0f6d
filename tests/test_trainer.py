"""distill.trainer's learning-rate schedule within a stage (--lr-schedule) and its resumption."""
import math

import pytest
import torch
from torch import nn

from distill.data import Batch
from distill.trainer import Distiller, fit, lr_factor, make_runtime

LR = 1e-2


def test_cosine_decays_from_one_to_zero_over_the_stage_and_constant_stays_one():
    factors = [lr_factor("cosine", u, 8) for u in range(9)]
    assert factors[0] == 1.0 and factors[4] == pytest.approx(0.5) and factors[8] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert {lr_factor("constant", u, 8) for u in range(9)} == {1.0}
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        lr_factor("step", 0, 8)


class Batches(list):
    """A loader of fixed batches: fit only needs iteration, len and set_epoch."""

    def set_epoch(self, epoch: int) -> None:
        pass


def toy_fit(schedule: str, epochs: int, resume: dict | None = None) -> tuple[list[float], dict]:
    """Train a linear student for ``epochs`` epochs of 3 updates; the lr each update used and the last state."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    loader = Batches(Batch(torch.randn(5, 3, 2, 2), torch.randint(0, 4, (5,)), None, None) for _ in range(3))
    used, state = [], {}
    distiller = Distiller(student, None, 1.0, 0.0)
    original_step = torch.optim.Adam.step

    def step(optimizer, *args, **kwargs):  # the lr of every update, as the optimizer applies it
        used.append(optimizer.param_groups[0]["lr"])
        return original_step(optimizer, *args, **kwargs)

    def on_epoch(epoch: int, metrics: dict, optimizer) -> None:
        state.update(epoch=epoch, optimizer=optimizer.state_dict())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", step)
        fit(distiller, loader, epochs, LR, 0.0, make_runtime("cpu", amp=False, progress=False), resume=resume,
            schedule=schedule, on_epoch=on_epoch)
    return used, state


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_update_uses_the_schedules_lr_and_a_resumed_stage_continues_it(schedule):
    whole, _ = toy_fit(schedule, epochs=2)
    assert whole == pytest.approx([LR * lr_factor(schedule, u, 6) for u in range(6)])
    _, after_one = toy_fit(schedule, epochs=1)  # the same first epoch, then "killed"
    rest, _ = toy_fit(schedule, epochs=2, resume=after_one)
    assert rest == pytest.approx(whole[3:])
    if schedule == "cosine":  # the decay spans the whole stage, not each epoch or each run
        assert whole[3] == pytest.approx(LR * 0.5) and not math.isclose(rest[0], LR)
