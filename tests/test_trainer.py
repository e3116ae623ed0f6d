"""distill.trainer's learning-rate schedule within a stage (--lr-schedule) and its resumption."""
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


class Killed(Exception):
    pass


def toy_fit(schedule: str, resume: dict | None = None, kill_after: int | None = None) -> tuple[list[float], dict]:
    """A 2-epoch stage of 3 updates each on a linear student, killed after epoch ``kill_after`` or resumed from
    ``resume``; the lr of every update, as Adam applies it, and the last finished epoch's state."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    loader = Batches(Batch(torch.randn(5, 3, 2, 2), torch.randint(0, 4, (5,)), None, None) for _ in range(3))
    if resume is not None:
        student.load_state_dict(resume["model"])
    used, state = [], {}
    original_step = torch.optim.Adam.step

    def step(optimizer, *args, **kwargs):
        used.append(optimizer.param_groups[0]["lr"])
        return original_step(optimizer, *args, **kwargs)

    def on_epoch(epoch: int, metrics: dict, optimizer) -> None:  # what the pipeline's partial checkpoint keeps
        state.update(epoch=epoch, optimizer=optimizer.state_dict(), model=student.state_dict())
        if epoch == kill_after:
            raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", step)
        try:
            fit(Distiller(student, None, 1.0, 0.0), loader, 2, LR, 0.0, make_runtime("cpu", amp=False, progress=False),
                resume=resume, schedule=schedule, on_epoch=on_epoch)
        except Killed:
            pass
    return used, state


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_update_uses_the_schedules_lr_and_a_killed_stage_resumes_to_the_same_model(schedule):
    whole, end = toy_fit(schedule)
    assert whole == pytest.approx([LR * lr_factor(schedule, u, 6) for u in range(6)])
    first, killed = toy_fit(schedule, kill_after=1)
    rest, resumed = toy_fit(schedule, resume=killed)
    assert first + rest == pytest.approx(whole)  # the decay spans the stage, across the restart
    assert all(torch.equal(end["model"][k], v) for k, v in resumed["model"].items())
