"""YOLOX-style detection loss with SimOTA assignment (written here from the YOLOX paper's description).

Per labelled window (all windows assigned together, as padded tensors): candidate cells lie inside a
label box or within 2.5 strides of its centre; each label takes its k cheapest candidates (cost = class
BCE + 3 x -log IoU, cells both inside the box and near its centre strongly preferred), k = the summed
top-10 IoUs (at least 1); a cell claimed by several labels goes to the cheapest. Losses: 1 - GIoU on
positives (x5), objectness BCE on every cell, class BCE on positives against IoU-weighted one-hot
targets; normalized by the number of positives.
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


# Windows assigned together are capped so the (windows x labels x cells) tables stay small on large sensors.
_ASSIGN_ELEMENTS = 1 << 22


@torch.no_grad()
def simota_assign(boxes, cls_logits, obj_logits, centers, strides, gt_boxes, gt_cls, gt_valid, num_classes: int,
                  radius: float = 2.5, topk_iou: int = 10):
    """SimOTA for W windows at once, with no per-window or per-label loop (and no host sync).
    boxes (W, N, 4) predicted cxcywh; cls_logits (W, N, C); obj_logits (W, N, 1); centers (N, 2); strides (N,);
    gt_boxes (W, G, 4) cxcywh, gt_cls (W, G) long, gt_valid (W, G) bool (labels padded to G per window).
    Returns fg (W, N) bool, the matched label of every cell (W, N) long (meaningful where fg) and its IoU (W, N)."""
    W, N = boxes.shape[:2]
    G = gt_boxes.shape[1]
    valid = gt_valid[..., None]                                             # (W, G, 1)
    d = (centers[None, None] - gt_boxes[:, :, None, :2]).abs()              # (W, G, N, 2)
    in_box = (d < gt_boxes[:, :, None, 2:] / 2).all(-1) & valid
    in_ctr = (d < radius * strides[None, None, :, None]).all(-1) & valid
    cand = (in_box | in_ctr).any(1)                                         # (W, N)
    # A window whose labels reach no cell centre: each label's nearest cells are its candidates.
    nearest = d.sum(-1).argmin(-1)                                          # (W, G)
    lonely = (~cand.any(1))[:, None] & gt_valid                             # (W, G)
    cand = cand | (F.one_hot(nearest, N).bool() & lonely[..., None]).any(1)  # (no boolean indexing: no host sync)
    iou = torch.where(cand[:, None], _iou_per_label(gt_boxes, boxes), 0.0)  # (W, G, N), 0 off the candidates
    p = (torch.sigmoid(cls_logits.float()) * torch.sigmoid(obj_logits.float())).sqrt().clamp(1e-6, 1 - 1e-6)
    # binary cross-entropy of p against each label's one-hot class, summed over the classes
    log_not = torch.log1p(-p)                                               # (W, N, C)
    gathered = gt_cls.clamp(0, num_classes - 1)[:, :, None].expand(-1, -1, N)  # (W, G, N)
    pick = lambda t: torch.gather(t.transpose(1, 2), 1, gathered)           # (W, N, C) -> (W, G, N)
    cls_cost = -log_not.sum(-1)[:, None] - pick(torch.log(p)) + pick(log_not)
    cost = cls_cost + 3.0 * -torch.log(iou + 1e-8) + 1e5 * (~(in_box & in_ctr)).float()
    cost = cost.masked_fill(~(cand[:, None] & valid), float("inf"))
    # dynamic k: the summed top-IoUs of each label, at least 1, at most the window's candidates
    k = torch.topk(iou, min(topk_iou, N), -1).values.sum(-1).int().clamp(min=1)
    k = torch.minimum(k, cand.sum(1, keepdim=True).int()) * gt_valid        # (W, G)
    order = cost.argsort(dim=-1, stable=True)
    match = torch.zeros(W, G, N, dtype=torch.bool, device=boxes.device)
    match.scatter_(-1, order, torch.arange(N, device=boxes.device) < k[..., None])
    # a cell claimed by several labels goes to the label with the lowest cost for it
    multi = match.sum(1) > 1                                                # (W, N)
    best = F.one_hot(cost.argmin(1), G).transpose(1, 2).bool()              # (W, G, N)
    match = torch.where(multi[:, None], best, match)
    fg = match.any(1)
    matched = match.float().argmax(1)                                       # (W, N)
    return fg, matched, torch.gather(iou, 1, matched[:, None]).squeeze(1)


def _iou_per_label(gt_boxes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every label (W, G, 4) with every predicted box (W, N, 4) of its window, cxcywh -> (W, G, N)."""
    a, b = cxcywh_to_xyxy(gt_boxes)[:, :, None], cxcywh_to_xyxy(boxes)[:, None]
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def pad_targets(targets: list, device) -> tuple[torch.Tensor, torch.Tensor]:
    """W tensors (G_w, 5) -> ((W, G, 5) padded with zeros, (W, G) bool valid), G = the largest G_w (at least 1)."""
    padded = torch.nn.utils.rnn.pad_sequence([t.float() for t in targets], batch_first=True).to(device)
    if padded.shape[1] == 0:
        padded = padded.new_zeros(len(targets), 1, 5)
    lengths = torch.tensor([t.shape[0] for t in targets], device=device)
    return padded, torch.arange(padded.shape[1], device=device) < lengths[:, None]


def detection_loss(out: torch.Tensor, targets: list, cells: torch.Tensor, strides: torch.Tensor, num_classes: int) -> LossParts:
    """out (W, N, 5 + C) raw predictions of W labelled windows; targets: W tensors (G, 5) of
    [class, cx, cy, w, h] in input pixels (G may be 0: every cell is background)."""
    out = out.float()
    W, N = out.shape[:2]
    boxes = decode_boxes(out, cells, strides)
    centers = (cells + 0.5) * strides[:, None]
    gt, gt_valid = pad_targets(targets, out.device)
    gt_cls, gt_boxes = gt[..., 0].long(), gt[..., 1:5]
    step = max(1, _ASSIGN_ELEMENTS // max(1, gt.shape[1] * N))
    parts = [simota_assign(boxes[a:a + step], out[a:a + step, :, 5:], out[a:a + step, :, 4:5], centers, strides,
                           gt_boxes[a:a + step], gt_cls[a:a + step], gt_valid[a:a + step], num_classes)
             for a in range(0, W, step)]
    fg, matched, ious = (torch.cat(t) for t in zip(*parts))
    w_idx = torch.arange(W, device=out.device)[:, None].expand(-1, N)[fg]
    label = matched[fg]
    num_fg = int(fg.sum())
    denom = max(num_fg, 1)
    l_iou = giou_loss(cxcywh_to_xyxy(boxes[fg]), cxcywh_to_xyxy(gt_boxes[w_idx, label])).sum() / denom
    cls_t = F.one_hot(gt_cls[w_idx, label], num_classes).float() * ious[fg][:, None]
    l_cls = F.binary_cross_entropy_with_logits(out[..., 5:][fg], cls_t, reduction="sum") / denom
    l_obj = F.binary_cross_entropy_with_logits(out[..., 4], fg.float(), reduction="sum") / denom
    total = 5.0 * l_iou + l_obj + l_cls
    return LossParts(total, float(l_iou.detach()), float(l_obj.detach()), float(l_cls.detach()), num_fg)
