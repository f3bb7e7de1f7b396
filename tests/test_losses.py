import pytest
import torch
import torch.nn.functional as F

from mar import MAROutput
from mar.losses import classification_loss, mar_loss, reconstruction_loss


def test_soft_targets_equal_hard_targets_when_one_hot():
    logits = torch.randn(4, 6)
    labels = torch.tensor([0, 5, 2, 2])
    soft = F.one_hot(labels, 6).float()
    assert torch.allclose(classification_loss(logits, soft), F.cross_entropy(logits, labels))
    smooth = soft * 0.9 + 0.1 / 6
    assert torch.allclose(classification_loss(logits, smooth),
                          classification_loss(logits, labels, label_smoothing=0.1))


def test_total_is_weighted_reconstruction_plus_classification():
    logits = torch.randn(2, 3)
    labels = torch.tensor([1, 2])
    pred, target = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    terms = mar_loss(MAROutput(logits, pred, target), labels, rec_weight=0.25)
    assert torch.allclose(terms.rec, ((pred - target) ** 2).mean())
    assert torch.allclose(terms.cls, F.cross_entropy(logits, labels))
    assert torch.allclose(terms.total, terms.cls + 0.25 * terms.rec)
    # logits alone (no decoder): reconstruction term is zero
    alone = mar_loss(logits, labels, rec_weight=0.25)
    assert alone.rec == 0 and torch.allclose(alone.total, terms.cls)


def test_nothing_masked_means_zero_reconstruction_loss():
    pred = torch.zeros(2, 0, 12, requires_grad=True)
    loss = reconstruction_loss(pred, torch.zeros(2, 0, 12))
    assert loss == 0 and not torch.isnan(loss)
    loss.backward()


def test_shape_mismatches_are_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="soft targets"):
        classification_loss(torch.zeros(2, 3), torch.zeros(2, 4))
