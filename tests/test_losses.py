"""distill.losses against hand computations on tiny tensors (issues 7 and 12)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.config import make_config, parse_config
from distill.data import Batch
from distill.losses import attention_loss, dkd_loss, hint_loss, kd_loss, log_soft_targets, soft_targets
from distill.pipeline import open_session, retrain
from distill.trainer import Distiller
from pruning.errors import UserError
from pruning.model import build_resnet50


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


S = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
T1 = [[2.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
T2 = [[0.0, 3.0, -1.0], [1.0, 2.0, 0.0]]
Y = [1, 2]


def test_kd_loss_is_the_seeds_formula():
    temp, alpha = 2.0, 0.25
    parts = kd_loss(torch.tensor(S), torch.tensor(T1), torch.tensor(Y), temp, alpha)
    ce = sum(-math.log(softmax(s)[y]) for s, y in zip(S, Y)) / 2
    kd = sum(kl(softmax(t, temp), softmax(s, temp)) for s, t in zip(S, T1)) / 2 * temp ** 2
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)


def test_weighted_teachers_average_their_softened_outputs():
    temp, alpha, w = 3.0, 1.0, (3.0, 1.0)
    parts = kd_loss(torch.tensor(S), [torch.tensor(T1), torch.tensor(T2)], torch.tensor(Y), temp, alpha, w)
    kd = 0.0
    for s, t1, t2 in zip(S, T1, T2):
        p = [0.75 * a + 0.25 * b for a, b in zip(softmax(t1, temp), softmax(t2, temp))]
        kd += kl(p, softmax(s, temp)) / 2 * temp ** 2
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(kd, rel=1e-5)  # alpha 1: no CE


@pytest.mark.parametrize("weights", [None, (1.0,), (5.0,)])
def test_one_teacher_in_a_list_equals_the_single_teacher(weights):
    s, t, y = torch.tensor(S), torch.tensor(T1), torch.tensor(Y)
    single = kd_loss(s, t, y, 4.0, 0.7)
    listed = kd_loss(s, [t], y, 4.0, 0.7, weights)
    assert all(torch.equal(single[k], listed[k]) for k in single)


@pytest.mark.parametrize("weights", [(1.0,), (1.0, -1.0, 1.0), (0.0, 0.0)])
def test_bad_teacher_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        soft_targets([torch.tensor(T1), torch.tensor(T2)], 2.0, weights)


def test_no_teacher_or_alpha_zero_is_cross_entropy():
    s, y = torch.tensor(S), torch.tensor(Y)
    ce = nn.functional.cross_entropy(s, y)
    for parts in (kd_loss(s, None, y, 4.0, 0.7), kd_loss(s, torch.tensor(T1), y, 4.0, 0.0)):
        assert torch.equal(parts["loss"], ce) and parts["kd"].item() == 0


def dkd_by_hand(s_row: list[float], t_row: list[float], y: int, temp: float) -> tuple[float, float]:
    """TCKD and NCKD of one sample from their definitions (Zhao et al. 2022, Eqs. 1-4), T^2 included."""
    ps, pt = softmax(s_row, temp), softmax(t_row, temp)
    tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    rest = [i for i in range(len(s_row)) if i != y]
    nckd = kl([pt[i] / (1 - pt[y]) for i in rest], [ps[i] / (1 - ps[y]) for i in rest])
    return tckd * temp ** 2, nckd * temp ** 2


def test_dkd_loss_is_the_papers_formula():
    temp, alpha, a, b = 2.0, 0.4, 1.5, 8.0
    parts = dkd_loss(torch.tensor(S), torch.tensor(T1), torch.tensor(Y), temp, alpha, a, b)
    terms = [dkd_by_hand(s, t, y, temp) for s, t, y in zip(S, T1, Y)]
    tckd, nckd = (sum(col) / len(S) for col in zip(*terms))
    ce = sum(-math.log(softmax(s)[y]) for s, y in zip(S, Y)) / 2
    assert parts["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(a * tckd + b * nckd, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(alpha * (a * tckd + b * nckd) + (1 - alpha) * ce, rel=1e-5)


@pytest.mark.parametrize("row", [0, 1])
def test_kd_is_tckd_plus_weighted_nckd(row):
    """The paper's Eq. 5: KD = TCKD + (1 - p_target^teacher) * NCKD, per sample."""
    s, t, y = torch.tensor(S[row:row + 1]), torch.tensor(T2[row:row + 1]), torch.tensor(Y[row:row + 1])
    parts = dkd_loss(s, t, y, 3.0, 1.0, 1.0, 1.0)
    p_target = softmax(T2[row], 3.0)[Y[row]]
    kd = kd_loss(s, t, y, 3.0, 1.0)["kd"]
    assert kd.item() == pytest.approx((parts["tckd"] + (1 - p_target) * parts["nckd"]).item(), rel=1e-5)


def test_dkd_of_several_teachers_uses_their_weighted_mean_and_stays_finite():
    w = (3.0, 1.0)
    log_p = log_soft_targets([torch.tensor(T1), torch.tensor(T2)], 2.0, w)
    assert torch.allclose(log_p.exp(), soft_targets([torch.tensor(T1), torch.tensor(T2)], 2.0, w), atol=1e-7)
    # A teacher sure of the target: p_target rounds to 1 in float32, yet NCKD (its non-target shape) is exact.
    sure = torch.tensor([[0.0, 200.0, 1.0]])
    s = torch.tensor(S[:1], requires_grad=True)
    parts = dkd_loss(s, sure, torch.tensor([1]), 1.0, 1.0, 1.0, 8.0)
    parts["loss"].backward()
    assert torch.isfinite(s.grad).all() and math.isfinite(parts["loss"].item())
    assert parts["nckd"].item() == pytest.approx(dkd_by_hand(S[0], [0.0, 0.0, 1.0], 1, 1.0)[1], rel=1e-5)


def test_dkd_without_teacher_or_alpha_is_cross_entropy():
    s, y = torch.tensor(S), torch.tensor(Y)
    for parts in (dkd_loss(s, None, y, 4.0, 0.7, 1.0, 8.0), dkd_loss(s, torch.tensor(T1), y, 4.0, 0.0, 1.0, 8.0)):
        assert torch.equal(parts["loss"], nn.functional.cross_entropy(s, y)) and parts["kd"].item() == 0


class _Cache:
    """Stands in for a TeacherCache: the logits it was given, whatever the index and view."""

    def __init__(self, logits: torch.Tensor):
        self.logits, self.calls = logits, 0

    def lookup(self, index, view):
        self.calls += 1
        return self.logits


class _NoForward(nn.Linear):
    def forward(self, x):
        raise AssertionError("the teacher ran although its cached logits serve dkd")


def test_distiller_dkd_reads_cached_teacher_logits():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    d = Distiller(student, _NoForward(1, 1), 2.0, 0.6, "dkd", dkd_alpha=0.5, dkd_beta=4.0)
    d.cache = _Cache(torch.tensor(T1))
    batch = Batch(torch.randn(2, 3, 2, 2), torch.tensor(Y), torch.arange(2), torch.zeros(2, dtype=torch.long))
    logits, parts = d(batch)
    assert d.cache.calls == 1
    expected = dkd_loss(logits, torch.tensor(T1), torch.tensor(Y), 2.0, 0.6, 0.5, 4.0)
    assert set(parts) == {"loss", "ce", "kd", "tckd", "nckd"}
    assert all(torch.equal(parts[k], expected[k]) for k in expected)


def test_retrain_with_dkd_uses_the_configs_weights_and_the_teacher_cache(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, kd="dkd", dkd_alpha=2.0, dkd_beta=3.0, teacher_cache=2, synthetic_train=16,
                              batch_size=16)
    sess = open_session(cfg)
    _, metrics = retrain(sess, cfg, build_resnet50(4, "none"), build_resnet50(4, "none"), 1, 1e-4, "step_001",
                         Path(cfg.out) / "partial.pt", 0)
    assert sess.teacher_cache is not None and metrics["train_tckd"] > 0 and metrics["train_nckd"] > 0
    # One batch: the epoch's means are that batch's parts.
    assert metrics["train_kd"] == pytest.approx(2.0 * metrics["train_tckd"] + 3.0 * metrics["train_nckd"], rel=1e-5)


def test_attention_loss_by_hand():
    # N=1, C=2, 1x2 spatial. Student: channel-mean of squares [(1+9)/2, (4+0)/2] = [5, 2] -> /sqrt(29).
    student = {"layer1": torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])}
    teacher = {"layer1": torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]]])}  # 3 channels: [1, 0]
    q = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    expected = ((q[0] - 1) ** 2 + q[1] ** 2) / 2
    parts = attention_loss(student, teacher)
    assert parts["layer1"].item() == pytest.approx(expected, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_attention_loss_sums_stages_and_ignores_scale():
    g = torch.Generator().manual_seed(0)
    s = {n: torch.randn(2, 3, 4, 4, generator=g) for n in ("a", "b")}
    t = {n: torch.randn(2, 5, 4, 4, generator=g) for n in ("a", "b")}
    parts = attention_loss(s, t)
    assert parts["loss"].item() == pytest.approx(parts["a"].item() + parts["b"].item(), rel=1e-6)
    scaled = attention_loss({n: 7 * v for n, v in s.items()}, t)  # normalised maps: scale-free
    assert scaled["loss"].item() == pytest.approx(parts["loss"].item(), rel=1e-5)


def test_hint_loss_by_hand_with_and_without_adapter():
    s = {"layer1": torch.tensor([[[[1.0, 2.0]]]])}   # N=1, C=1, 1x2
    t = {"layer1": torch.tensor([[[[4.0, 0.0]], [[1.0, 1.0]]]])}  # C=2
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
    # adapter(s) = [[2, 4], [-1, -2]]; squared errors (2-4)^2 + 4^2 + (-2)^2 + (-3)^2 = 33 over 4 values
    parts = hint_loss(s, t, {"layer1": conv})
    assert parts["layer1"].item() == pytest.approx(33 / 4)
    assert parts["loss"].item() == pytest.approx(33 / 4)
    plain = hint_loss({"layer1": t["layer1"] + 1}, t)
    assert plain["loss"].item() == pytest.approx(1.0)


def test_feature_losses_are_zero_when_student_is_teacher():
    g = torch.Generator().manual_seed(1)
    feats = {n: torch.randn(2, 4, 3, 3, generator=g).relu() for n in ("layer1", "layer2")}
    assert attention_loss(feats, feats)["loss"].item() == 0
    assert hint_loss(feats, feats)["loss"].item() == 0
    identity = {n: nn.Identity() for n in feats}
    assert hint_loss(feats, feats, identity)["loss"].item() == 0
    logits = torch.tensor(S)
    assert kd_loss(logits, logits, torch.tensor(Y), 4.0, 0.5)["kd"].item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("loss", [attention_loss, hint_loss])
def test_mismatched_or_missing_stages_are_refused(loss):
    t = {"layer1": torch.zeros(1, 2, 4, 4)}
    with pytest.raises(ValueError, match="does not match"):
        loss({"layer1": torch.zeros(1, 2, 2, 2)}, t)
    with pytest.raises(ValueError, match="no captured output"):
        loss({"layer2": torch.zeros(1, 2, 4, 4)}, t)


def test_teachers_and_weights_parse_and_validate(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.touch(), b.touch()
    cfg = parse_config(["--teachers", str(a), str(b), "--teacher-weights", "2", "1", "1"])
    assert cfg.teachers == (str(a), str(b)) and cfg.teacher_weights == (2.0, 1.0, 1.0)
    assert make_config(overrides={"teachers": [str(a)], "teacher_weights": [1, 3]}).teacher_weights == (1, 3)
    assert make_config(overrides={"teachers": ["previous"], "teacher_weights": [1, 0]}).teachers == ("previous",)
    dkd = parse_config(["--kd", "dkd", "--dkd-alpha", "0.5", "--dkd-beta", "2"])
    assert (dkd.kd, dkd.dkd_alpha, dkd.dkd_beta) == ("dkd", 0.5, 2.0)


@pytest.mark.parametrize("overrides, match", [
    ({"teachers": ["missing.pt"]}, "--teachers missing.pt: no such file"),
    ({"teacher_weights": [1.0, 1.0]}, "2 given for 1 teacher"),
    ({"teacher_weights": [-1.0]}, "must be >= 0"),
    ({"teacher_weights": [0.0]}, "positive sum"),
    ({"teachers": ["previous"], "teacher_weights": [0.0, 1.0]}, "also without the weights of 'previous'"),
    ({"beta": -1.0}, "--beta"),
    ({"kd": "feature"}, "--kd 'feature'"),
    ({"dkd_alpha": -1.0}, "--dkd-alpha"),
    ({"dkd_beta": -0.5}, "--dkd-beta"),
])
def test_bad_kd_settings_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        make_config(overrides=overrides)
