"""The detector's batched SimOTA assignment and loss against a per-window, per-label reference written
from YOLOX's description (one window at a time, a loop over labels): same positives, same matched labels,
same IoUs and the same loss, on random predictions with 0-5 labels per window, crowded windows (cells
claimed by several labels) and a label that reaches no cell centre."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastvid.events.detect.loss import cxcywh_to_xyxy, detection_loss, giou_loss, pairwise_iou, simota_assign
from fastvid.events.detect.model import decode_boxes


def reference_assign(boxes, cls_logits, obj_logits, centers, strides, gt_boxes, gt_cls, num_classes, radius=2.5, topk_iou=10):
    """One window: candidates, dynamic k from the top IoUs, each label's k cheapest, conflicts to the cheapest label."""
    N, G = boxes.shape[0], gt_boxes.shape[0]
    d = (centers[None] - gt_boxes[:, None, :2]).abs()
    in_box = (d < gt_boxes[:, None, 2:] / 2).all(-1)
    in_ctr = (d < radius * strides[None, :, None]).all(-1)
    cand = (in_box | in_ctr).any(0)
    if not cand.any():
        cand = torch.zeros(N, dtype=torch.bool)
        cand[d.sum(-1).argmin(1)] = True
    idx = cand.nonzero().squeeze(1)
    iou = pairwise_iou(cxcywh_to_xyxy(gt_boxes), cxcywh_to_xyxy(boxes[idx]))
    p = (torch.sigmoid(cls_logits[idx]) * torch.sigmoid(obj_logits[idx])).sqrt()
    onehot = F.one_hot(gt_cls, num_classes).float()
    cls_cost = torch.stack([F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), onehot[g].expand_as(p), reduction="none").sum(-1)
                            for g in range(G)])
    cost = cls_cost - 3.0 * torch.log(iou + 1e-8) + 1e5 * (~(in_box & in_ctr)[:, idx]).float()
    match = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(G):
        k = max(1, int(torch.topk(iou[g], min(topk_iou, len(idx))).values.sum()))
        match[g, torch.topk(cost[g], min(k, len(idx)), largest=False).indices] = True
    for c in (match.sum(0) > 1).nonzero().squeeze(1).tolist():
        match[:, c] = False
        match[int(cost[:, c].argmin()), c] = True
    fg = torch.zeros(N, dtype=torch.bool)
    matched = torch.full((N,), -1)
    ious = torch.zeros(N)
    for c in match.any(0).nonzero().squeeze(1).tolist():
        g = int(match[:, c].nonzero()[0])
        fg[idx[c]], matched[idx[c]], ious[idx[c]] = True, g, iou[g, c]
    return fg, matched, ious


def reference_loss(out, targets, cells, strides, num_classes):
    boxes = decode_boxes(out, cells, strides)
    centers = (cells + 0.5) * strides[:, None]
    obj_t = torch.zeros(out.shape[:2])
    iou_sum = cls_sum = 0.0
    num_fg = 0
    for w, t in enumerate(targets):
        if len(t) == 0:
            continue
        fg, matched, ious = reference_assign(boxes[w], out[w, :, 5:], out[w, :, 4:5], centers, strides, t[:, 1:5], t[:, 0].long(),
                                             num_classes)
        obj_t[w, fg] = 1.0
        iou_sum = iou_sum + giou_loss(cxcywh_to_xyxy(boxes[w, fg]), cxcywh_to_xyxy(t[matched[fg], 1:5])).sum()
        cls_t = F.one_hot(t[matched[fg], 0].long(), num_classes).float() * ious[fg][:, None]
        cls_sum = cls_sum + F.binary_cross_entropy_with_logits(out[w, fg, 5:], cls_t, reduction="sum")
        num_fg += int(fg.sum())
    n = max(num_fg, 1)
    return 5 * iou_sum / n + F.binary_cross_entropy_with_logits(out[..., 4], obj_t, reduction="sum") / n + cls_sum / n, num_fg


def scene(seed, windows=12, num_classes=3):
    """A 32x24 input's cells (strides 4/8/16), random raw predictions and 0-5 random labels per window;
    window 1 is crowded (6 overlapping labels), window 2 holds one tiny label off the sensor."""
    g = torch.Generator().manual_seed(seed)
    cells, strides = [], []
    for s in (4, 8, 16):
        ys, xs = torch.meshgrid(torch.arange(24 // s), torch.arange(32 // s), indexing="ij")
        cells.append(torch.stack([xs.flatten(), ys.flatten()], 1).float())
        strides.append(torch.full((xs.numel(),), float(s)))
    cells, strides = torch.cat(cells), torch.cat(strides)
    out = torch.randn(windows, len(cells), 5 + num_classes, generator=g)
    targets = []
    for w in range(windows):
        n = 6 if w == 1 else int(torch.randint(0, 6, (1,), generator=g))
        wh = torch.rand(n, 2, generator=g) * torch.tensor([14.0, 10.0]) + 2
        c = torch.rand(n, 2, generator=g) * torch.tensor([32.0, 24.0])
        if w == 1:
            c = torch.tensor([12.0, 10.0]) + torch.rand(n, 2, generator=g) * 2
        if w == 2:
            n, c, wh = 1, torch.tensor([[-40.0, 60.0]]), torch.tensor([[1.0, 1.0]])
        cls = torch.randint(0, num_classes, (n, 1), generator=g).float()
        targets.append(torch.cat([cls, c, wh], 1))
    return out, targets, cells, strides


@pytest.mark.parametrize("seed", range(6))
def test_batched_assignment_and_loss_equal_the_per_window_reference(seed):
    out, targets, cells, strides = scene(seed)
    boxes = decode_boxes(out, cells, strides)
    centers = (cells + 0.5) * strides[:, None]
    G = max(len(t) for t in targets)
    gt = torch.zeros(len(targets), G, 5)
    valid = torch.zeros(len(targets), G, dtype=torch.bool)
    for w, t in enumerate(targets):
        gt[w, :len(t)], valid[w, :len(t)] = t, True
    fg, matched, ious = simota_assign(boxes, out[..., 5:], out[..., 4:5], centers, strides, gt[..., 1:5], gt[..., 0].long(), valid, 3)
    claimed = 0
    for w, t in enumerate(targets):
        if len(t) == 0:
            assert not fg[w].any()
            continue
        ref_fg, ref_matched, ref_ious = reference_assign(boxes[w], out[w, :, 5:], out[w, :, 4:5], centers, strides, t[:, 1:5],
                                                         t[:, 0].long(), 3)
        assert torch.equal(fg[w], ref_fg), w
        assert torch.equal(matched[w][fg[w]], ref_matched[ref_fg]), w
        torch.testing.assert_close(ious[w][fg[w]], ref_ious[ref_fg])
        claimed += len(set(ref_matched[ref_fg].tolist()))
    # the off-sensor label got its nearest cell; the crowd's 6 labels (each takes >= 1 cell) share fewer cells
    assert fg[2].sum() >= 1 and 1 <= fg[1].sum() < 6
    assert claimed >= 10
    parts = detection_loss(out, targets, cells, strides, 3)
    ref_total, ref_fg = reference_loss(out, targets, cells, strides, 3)
    assert parts.num_fg == ref_fg
    torch.testing.assert_close(parts.total, ref_total)


def test_windows_without_labels_train_objectness_only():
    out, targets, cells, strides = scene(0, windows=3)
    out.requires_grad_()
    empty = [t[:0] for t in targets]
    parts = detection_loss(out, empty, cells, strides, 3)
    assert parts.num_fg == 0 and parts.iou == 0 and parts.cls == 0
    torch.testing.assert_close(parts.total, F.binary_cross_entropy_with_logits(out[..., 4], torch.zeros(out.shape[:2]), reduction="sum"))
    parts.total.backward()
    assert out.grad[..., 4].abs().sum() > 0 and out.grad[..., :4].abs().sum() == 0


def test_assignment_in_window_groups_equals_all_at_once(monkeypatch):
    import fastvid.events.detect.loss as loss

    out, targets, cells, strides = scene(3)
    whole = detection_loss(out, targets, cells, strides, 3)
    monkeypatch.setattr(loss, "_ASSIGN_ELEMENTS", 5 * len(cells) * 2)  # (large sensors) a few windows per group
    grouped = detection_loss(out, targets, cells, strides, 3)
    assert grouped.num_fg == whole.num_fg > 0
    torch.testing.assert_close(grouped.total, whole.total)
