"""ViTClassifier and its data preprocessor (mixup / cutmix / smoothing targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from g2sd.cls import ClsDataPreprocessor, DistilledVisionTransformer, ViTClassifier
from g2sd.cls.classifier import soft_target_cross_entropy
from g2sd.models import VisionTransformer

KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)


def test_label_smoothing_targets_literal() -> None:
    pre = ClsDataPreprocessor(num_classes=4, label_smoothing=0.1)
    out = pre(dict(inputs=torch.zeros(2, 3, 8, 8), data_samples=torch.tensor([1, 3])), True)
    expected = torch.tensor([[0.025, 0.925, 0.025, 0.025], [0.025, 0.025, 0.025, 0.925]])
    torch.testing.assert_close(out['data_samples'], expected)
    ev = pre(dict(inputs=torch.zeros(2, 3, 8, 8), data_samples=torch.tensor([1, 3])), False)
    assert ev['data_samples'].tolist() == [1, 3]  # eval keeps the labels


def test_mixup_targets_and_images() -> None:
    np.random.seed(0)
    pre = ClsDataPreprocessor(num_classes=4, mixup_alpha=0.8, label_smoothing=0.0)
    x = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    out = pre(dict(inputs=x.clone(), data_samples=torch.tensor([0, 1, 2, 3])), True)
    t = out['data_samples']
    lam = t[0, 0].item()  # batch mode: image i is lam * x_i + (1 - lam) * x_{B-1-i}
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(t[0], torch.tensor([lam, 0.0, 0.0, 1 - lam]))
    torch.testing.assert_close(out['inputs'][0], lam * x[0] + (1 - lam) * x[3])
    with pytest.raises(ValueError, match='even batch size'):
        pre(dict(inputs=torch.zeros(3, 3, 8, 8), data_samples=torch.tensor([0, 1, 2])), True)


def test_classifier_losses_and_predict() -> None:
    clf = ViTClassifier(backbone=DistilledVisionTransformer(**KW), loss_weight=0.5)
    with torch.no_grad():
        clf.backbone.head.weight.normal_(0, 1.0)
    x = torch.randn(2, 3, 32, 32)
    clf.train()
    cls_logits, _ = clf.backbone(x)
    labels = torch.tensor([0, 2])
    loss = clf(x, labels, mode='loss')['loss_cls']
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(cls_logits, labels))
    soft = F.one_hot(labels, 4).float() * 0.6 + 0.1
    loss = clf(x, soft, mode='loss')['loss_cls']
    torch.testing.assert_close(loss, 0.5 * soft_target_cross_entropy(cls_logits, soft))
    clf.eval()
    preds = clf(x, labels, mode='predict')
    torch.testing.assert_close(
        torch.stack([p['pred_score'] for p in preds]), clf.backbone(x).softmax(-1)
    )
    assert [p['gt_label'].item() for p in preds] == [0, 2]


def test_classifier_config_errors() -> None:
    with pytest.raises(ValueError, match='differs from the backbone'):
        ViTClassifier(
            backbone=VisionTransformer(**KW), data_preprocessor=ClsDataPreprocessor(num_classes=10)
        )
    with pytest.raises(ValueError, match='no classifier'):
        ViTClassifier(backbone=VisionTransformer(**{**KW, 'num_classes': 0}))


def test_pretrained_loads_strictly_in_init_weights(tmp_path) -> None:
    gd = VisionTransformer(**{**KW, 'num_classes': 0})
    path = tmp_path / 'gd.pth'
    torch.save(gd.state_dict(), path)
    clf = ViTClassifier(backbone=DistilledVisionTransformer(**KW), pretrained=str(path))
    clf.init_weights()
    torch.testing.assert_close(clf.backbone.blocks[0].attn.qkv.weight, gd.blocks[0].attn.qkv.weight)
    wrong = VisionTransformer(**{**KW, 'embed_dim': 16, 'num_classes': 0})
    torch.save(wrong.state_dict(), path)
    from g2sd.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):
        ViTClassifier(backbone=VisionTransformer(**KW), pretrained=str(path)).init_weights()
