"""Task-aligned assignment (TAL, as in YOLOv8) and the detection loss, without DFL."""
import math

import torch
import torch.nn.functional as F

EPS = 1e-9


def pairwise_iou(a, b):
    """IoU between boxes a (..., M, 1, 4) and b (..., 1, N, 4), xyxy; broadcasts."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(-1)
    return inter / (area_a + area_b - inter + EPS)


def ciou(a, b):
    """Complete IoU of matched box pairs (K, 4) xyxy: IoU minus centre and aspect penalties."""
    iou = pairwise_iou(a, b)
    enclose = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    diag = enclose.pow(2).sum(-1) + EPS
    centre = ((a[:, :2] + a[:, 2:]) - (b[:, :2] + b[:, 2:])).pow(2).sum(-1) / 4
    wa, ha = (a[:, 2:] - a[:, :2]).unbind(-1)
    wb, hb = (b[:, 2:] - b[:, :2]).unbind(-1)
    v = (4 / math.pi ** 2) * (torch.atan(wb / (hb + EPS)) - torch.atan(wa / (ha + EPS))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + 1 + EPS)
    return iou - centre / diag - alpha * v


@torch.no_grad()
def assign(scores, boxes, points, gt_cls, gt_boxes, gt_mask, topk=10, alpha=0.5, beta=6.0):
    """Pick, for each ground-truth box, the top-k anchors by score^alpha * IoU^beta.

    scores (B, N, nc) sigmoid, boxes (B, N, 4), points (N, 2), gt_* padded to (B, M, ...).
    Returns target boxes (B, N, 4), soft class targets (B, N, nc) and a foreground mask (B, N).
    """
    b, n, nc = scores.shape
    if gt_cls.shape[1] == 0:
        return torch.zeros_like(boxes), torch.zeros_like(scores), torch.zeros(b, n, dtype=torch.bool)
    iou = pairwise_iou(gt_boxes[:, :, None], boxes[:, None]).clamp(min=0)  # (B, M, N)
    cls_score = scores.transpose(1, 2).gather(1, gt_cls[..., None].expand(-1, -1, n))
    p = points[None, None]
    inside = ((p - gt_boxes[:, :, None, :2]).amin(-1) > EPS) & \
             ((gt_boxes[:, :, None, 2:] - p).amin(-1) > EPS)
    valid = inside & gt_mask[..., None]
    metric = cls_score.pow(alpha) * iou.pow(beta) * valid
    top = metric.topk(min(topk, n), dim=-1).indices
    pos = torch.zeros_like(metric).scatter_(-1, top, 1.0).bool() & valid
    # An anchor claimed by several boxes goes to the one it overlaps most.
    multi = pos.sum(1, keepdim=True) > 1
    best = F.one_hot(iou.argmax(1), gt_cls.shape[1]).transpose(1, 2).bool()
    pos = torch.where(multi, best & valid, pos)
    fg = pos.any(1)
    idx = pos.float().argmax(1)  # (B, N)
    t_boxes = gt_boxes.gather(1, idx[..., None].expand(-1, -1, 4))
    t_cls = gt_cls.gather(1, idx)
    # Soft targets: alignment normalised per box so its best anchor aims at its best IoU.
    metric = metric * pos
    norm = metric * (iou * pos).amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + EPS)
    quality = norm.amax(1)  # (B, N)
    t_scores = F.one_hot(t_cls, nc).float() * (quality * fg)[..., None]
    return t_boxes, t_scores, fg


def detection_loss(boxes, logits, points, gt_cls, gt_boxes, gt_mask, box_gain=7.5, cls_gain=0.5):
    """Weighted CIoU box loss + BCE classification loss; returns (total, box, cls) per image."""
    t_boxes, t_scores, fg = assign(logits.detach().sigmoid(), boxes.detach(), points,
                                   gt_cls, gt_boxes, gt_mask)
    norm = t_scores.sum().clamp(min=1.0)
    loss_cls = F.binary_cross_entropy_with_logits(logits, t_scores, reduction="sum") / norm
    if fg.any():
        weight = t_scores.sum(-1)[fg]
        loss_box = ((1.0 - ciou(boxes[fg], t_boxes[fg])) * weight).sum() / norm
    else:
        loss_box = boxes.sum() * 0.0
    total = box_gain * loss_box + cls_gain * loss_cls
    return total, loss_box.detach(), loss_cls.detach()
