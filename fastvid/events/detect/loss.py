"""YOLOX-style detection loss with SimOTA assignment (written here from the YOLOX paper's description).

Per labelled window: candidate cells lie inside a label box or within 2.5 strides of its centre;
each label takes its k cheapest candidates (cost = class BCE + 3 x -log IoU, cells both inside the box
and near its centre strongly preferred), k = the summed top-10 IoUs (at least 1); a cell claimed by
several labels goes to the cheapest. Losses: 1 - GIoU on positives (x5), objectness BCE on every cell,
class BCE on positives against IoU-weighted one-hot targets; normalized by the number of positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastvid.events.detect.model import decode_boxes


@dataclass
class LossParts:
    total: torch.Tensor
    iou: float
    obj: float
    cls: float
    num_fg: int


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every xyxy box of a (M, 4) with every one of b (K, 4) -> (M, K)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of matched xyxy pairs (K, 4) -> (K,)."""
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(-1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(-1)
    union = (area_p + area_t - inter).clamp(min=1e-9)
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0).prod(-1)
    return 1 - (inter / union - (hull - union) / hull.clamp(min=1e-9))


@torch.no_grad()
def simota_assign(boxes, cls_logits, obj_logits, centers, strides, gt_boxes, gt_cls, num_classes: int,
                  radius: float = 2.5, topk_iou: int = 10):
    """SimOTA for one window. boxes (N, 4) predicted cxcywh; gt_boxes (G, 4) cxcywh; gt_cls (G,) long.
    Returns (fg (N,) bool, matched label index (F,), IoU with it (F,))."""
    N, G = boxes.shape[0], gt_boxes.shape[0]
    gxy, gwh = gt_boxes[:, None, :2], gt_boxes[:, None, 2:]
    d = (centers[None] - gxy).abs()  # (G, N, 2)
    in_box = (d < gwh / 2).all(-1)
    in_ctr = (d < radius * strides[None, :, None]).all(-1)
    cand = (in_box | in_ctr).any(0)
    if not bool(cand.any()):
        cand = torch.zeros(N, dtype=torch.bool, device=boxes.device)
        cand[d.sum(-1).argmin(1)] = True  # labels far from any cell centre: their nearest cells
    idx = cand.nonzero().squeeze(1)
    iou = pairwise_iou(cxcywh_to_xyxy(gt_boxes), cxcywh_to_xyxy(boxes[idx]))  # (G, C)
    p = (torch.sigmoid(cls_logits[idx].float()) * torch.sigmoid(obj_logits[idx].float())).sqrt()  # (C, K)
    onehot = F.one_hot(gt_cls, num_classes).float()
    cls_cost = F.binary_cross_entropy(p[None].expand(G, -1, -1).clamp(1e-6, 1 - 1e-6),
                                      onehot[:, None].expand(-1, len(idx), -1), reduction="none").sum(-1)
    cost = cls_cost + 3.0 * -torch.log(iou + 1e-8) + 1e5 * (~(in_box & in_ctr)[:, idx]).float()
    k = torch.topk(iou, min(topk_iou, len(idx)), 1).values.sum(1).int().clamp(min=1)
    match = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(G):
        match[g, torch.topk(cost[g], min(int(k[g]), len(idx)), largest=False).indices] = True
    multi = match.sum(0) > 1
    if bool(multi.any()):
        best = cost[:, multi].argmin(0)
        match[:, multi] = False
        match[best, multi.nonzero().squeeze(1)] = True
    pos = match.any(0)
    matched = match[:, pos].float().argmax(0)
    fg = torch.zeros(N, dtype=torch.bool, device=boxes.device)
    fg[idx[pos]] = True
    return fg, matched, iou[matched, pos.nonzero().squeeze(1)]


def detection_loss(out: torch.Tensor, targets: list, cells: torch.Tensor, strides: torch.Tensor, num_classes: int) -> LossParts:
    """out (W, N, 5 + C) raw predictions of W labelled windows; targets: W tensors (G, 5) of
    [class, cx, cy, w, h] in input pixels (G may be 0: every cell is background)."""
    out = out.float()
    boxes = decode_boxes(out, cells, strides)
    obj_t = torch.zeros(out.shape[:2], device=out.device)
    iou_terms, cls_terms, num_fg = [], [], 0
    centers = (cells + 0.5) * strides[:, None]
    for w, tgt in enumerate(targets):
        if tgt.shape[0] == 0:
            continue
        gt_cls, gt_boxes = tgt[:, 0].long(), tgt[:, 1:5].float()
        fg, matched, ious = simota_assign(boxes[w], out[w, :, 5:], out[w, :, 4:5], centers, strides, gt_boxes, gt_cls,
                                          num_classes)
        obj_t[w, fg] = 1.0
        iou_terms.append(giou_loss(cxcywh_to_xyxy(boxes[w, fg]), cxcywh_to_xyxy(gt_boxes[matched])).sum())
        cls_t = F.one_hot(gt_cls[matched], num_classes).float() * ious[:, None]
        cls_terms.append(F.binary_cross_entropy_with_logits(out[w, fg, 5:], cls_t, reduction="sum"))
        num_fg += int(fg.sum())
    denom = max(num_fg, 1)
    zero = out.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) when nothing is positive
    l_iou = (torch.stack(iou_terms).sum() if iou_terms else zero) / denom
    l_cls = (torch.stack(cls_terms).sum() if cls_terms else zero) / denom
    l_obj = F.binary_cross_entropy_with_logits(out[..., 4], obj_t, reduction="sum") / denom
    total = 5.0 * l_iou + l_obj + l_cls
    return LossParts(total, float(l_iou.detach()), float(l_obj.detach()), float(l_cls.detach()), num_fg)
