"""Raw detector output -> scored boxes: decode, score = objectness x class probability, class-aware NMS."""

from __future__ import annotations

import numpy as np
import torch

from fastvid.events.detect.loss import cxcywh_to_xyxy, pairwise_iou
from fastvid.events.detect.model import decode_boxes


def nms(xyxy: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    if xyxy.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=xyxy.device)
    order = torch.argsort(scores, descending=True)
    over = (pairwise_iou(xyxy[order], xyxy[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[torch.as_tensor(keep, device=order.device)]


@torch.no_grad()
def postprocess(out: torch.Tensor, cells, strides, score_threshold: float = 0.05, nms_iou: float = 0.5,
                max_candidates: int = 300, max_detections: int = 100) -> list[torch.Tensor]:
    """out (B, N, 5 + C) -> B tensors (K, 6) of [x, y, w, h, score, class] (x, y: top-left corner)."""
    out = out.float()
    boxes = decode_boxes(out, cells, strides)
    scores_all = torch.sigmoid(out[..., 4:5]) * torch.sigmoid(out[..., 5:])
    results = []
    for b in range(out.shape[0]):
        score, cls = scores_all[b].max(-1)
        keep = (score > score_threshold).nonzero().squeeze(1)
        if keep.numel() > max_candidates:
            keep = keep[torch.topk(score[keep], max_candidates).indices]
        xyxy = cxcywh_to_xyxy(boxes[b, keep])
        # Offsetting each class far apart makes one NMS call class-aware.
        kept = nms(xyxy + cls[keep, None].float() * 1e5, score[keep], nms_iou)[:max_detections]
        sel = keep[kept]
        bx = boxes[b, sel]
        results.append(torch.cat([bx[:, :2] - bx[:, 2:] / 2, bx[:, 2:], score[sel, None], cls[sel, None].float()], 1))
    return results
