"""Soft-label KL and top-k counting against hand-written references."""

import math

import pytest
import torch
from torch.testing import assert_close

from srel_ray.core.losses import soft_label_kl, topk_correct


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _reference_kl(student, teacher, t):
    """sum_j p_t log(p_t / p_s), averaged over the batch, times T^2 (plain Python floats)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        ps, pt = _softmax(s_row, t), _softmax(t_row, t)
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return total / len(student) * t * t


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_soft_label_kl_matches_reference(temperature):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    got = soft_label_kl(student, teacher, temperature)
    expected = _reference_kl(student, teacher, temperature)
    assert got.shape == ()
    assert_close(got.item(), expected, rtol=1e-5, atol=1e-7)
    assert expected > 0


def test_soft_label_kl_small_hand_example():
    # One row, T=2: student logits [0, 0] -> p_s = [0.5, 0.5]; teacher [2 ln 3, 0] -> p_t = [0.75, 0.25].
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * 4
    assert_close(soft_label_kl(student, teacher, 2.0).item(), expected, rtol=1e-5, atol=1e-7)


def test_soft_label_kl_accepts_half_teacher_logits():
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(4, 5, generator=gen)
    teacher = torch.randn(4, 5, generator=gen).half()
    expected = _reference_kl(student.double(), teacher.double(), 4.0)
    assert_close(soft_label_kl(student, teacher, 4.0).item(), expected, rtol=1e-4, atol=1e-6)


def test_soft_label_kl_zero_when_student_equals_teacher():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    assert_close(soft_label_kl(logits, logits.clone(), 4.0), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_soft_label_kl_gradient_pushes_student_toward_teacher():
    teacher = torch.tensor([[3.0, 0.0, -1.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    soft_label_kl(student, teacher, 1.0).backward()
    # d/ds (T^2 KL) = T (p_s - p_t) / batch; here T = 1 and batch = 1.
    p_t = torch.softmax(teacher, 1)
    assert_close(student.grad, torch.full((1, 3), 1 / 3) - p_t)


def test_topk_correct_hand_example():
    logits = torch.tensor([
        [0.1, 0.9, 0.0],  # order: 1, 0, 2
        [0.8, 0.1, 0.3],  # order: 0, 2, 1
        [0.2, 0.3, 0.5],  # order: 2, 1, 0
        [0.6, 0.5, 0.4],  # order: 0, 1, 2
    ])
    labels = torch.tensor([1, 2, 0, 1])
    # top1: row 0 only. top2: rows 0, 1, 3. top3 (= all classes): every row.
    assert topk_correct(logits, labels, (1, 2, 3)) == [1, 3, 4]
    # k larger than the class count is capped: top-5 of 3 classes is every row.
    assert topk_correct(logits, labels, (1, 5)) == [1, 4]
    assert topk_correct(logits, labels, (10,)) == [4]


def test_topk_correct_none_right():
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    labels = torch.tensor([3, 3])
    # Ties among zeros make top-2/3 membership ambiguous; top-1 is unambiguous.
    assert topk_correct(logits, labels, (1,)) == [0]
