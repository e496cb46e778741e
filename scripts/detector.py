"""A small anchor-free YOLO-style detector (YOLOv8-like, without DFL) in two sizes."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

STRIDES = (8, 16, 32)
# width = channels of the stem .. P5 stages; depth = bottleneck blocks per stage.
SIZES = {
    "fast": dict(imgsz=320, width=(16, 24, 48, 64, 96), depth=1),
    "accurate": dict(imgsz=416, width=(16, 32, 64, 96, 128), depth=1),
}


class Conv(nn.Module):
    """Conv + BatchNorm + SiLU."""

    def __init__(self, c_in, c_out, k=3, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class C2f(nn.Module):
    """CSP block as in YOLOv8: split, n residual bottlenecks, concatenate every stage."""

    def __init__(self, c_in, c_out, n=1):
        super().__init__()
        c = c_out // 2
        self.stem = Conv(c_in, 2 * c, 1)
        self.blocks = nn.ModuleList(nn.Sequential(Conv(c, c), Conv(c, c)) for _ in range(n))
        self.out = Conv((2 + n) * c, c_out, 1)

    def forward(self, x):
        ys = list(self.stem(x).chunk(2, 1))
        for block in self.blocks:
            ys.append(ys[-1] + block(ys[-1]))
        return self.out(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): widens the receptive field of P5 cheaply."""

    def __init__(self, c):
        super().__init__()
        self.reduce = Conv(c, c // 2, 1)
        self.out = Conv(c // 2 * 4, c, 1)

    def forward(self, x):
        ys = [self.reduce(x)]
        for _ in range(3):
            ys.append(F.max_pool2d(ys[-1], 5, 1, 2))
        return self.out(torch.cat(ys, 1))


class Head(nn.Module):
    """Decoupled per-level head: box distances (l, t, r, b) and class logits."""

    def __init__(self, c_in, nc, stride):
        super().__init__()
        self.box = nn.Sequential(Conv(c_in, c_in), nn.Conv2d(c_in, 4, 1))
        self.cls = nn.Sequential(Conv(c_in, c_in), nn.Conv2d(c_in, nc, 1))
        # Start near "nothing here" and "boxes a couple of strides wide" for stable early training.
        nn.init.constant_(self.cls[-1].bias, math.log(5 / nc / (640 / stride) ** 2))
        nn.init.constant_(self.box[-1].bias, 1.0)

    def forward(self, x):
        return self.box(x), self.cls(x)


class Detector(nn.Module):
    """Backbone (P3-P5) + top-down/bottom-up neck + three heads.

    forward() returns per-anchor boxes (xyxy, input pixels), class logits and anchor centres,
    or, with export=True, the YOLOv8 layout [B, 4 + nc, N]: cx, cy, w, h, sigmoid scores.
    """

    def __init__(self, nc, width, depth, imgsz):
        super().__init__()
        c0, c1, c2, c3, c4 = width
        self.nc, self.imgsz, self.export = nc, imgsz, False
        # No block at stride 4: at these input sizes it would cost more than all the rest.
        self.stem = nn.Sequential(Conv(3, c0, 3, 2), Conv(c0, c1, 3, 2))
        self.p3 = nn.Sequential(Conv(c1, c2, 3, 2), C2f(c2, c2, depth))
        self.p4 = nn.Sequential(Conv(c2, c3, 3, 2), C2f(c3, c3, depth))
        self.p5 = nn.Sequential(Conv(c3, c4, 3, 2), C2f(c4, c4, depth), SPPF(c4))
        self.td4 = C2f(c4 + c3, c3, depth)
        self.td3 = C2f(c3 + c2, c2, depth)
        self.down3 = Conv(c2, c2, 3, 2)
        self.bu4 = C2f(c2 + c3, c3, depth)
        self.down4 = Conv(c3, c3, 3, 2)
        self.bu5 = C2f(c3 + c4, c4, depth)
        self.heads = nn.ModuleList(Head(c, nc, s) for c, s in zip((c2, c3, c4), STRIDES))
        self._grid = {}

    def anchors(self, shapes, device):
        """Anchor centres (N, 2) in input pixels and their strides (N, 1), cached per shape."""
        key = tuple(shapes)
        if key not in self._grid:
            pts, strides = [], []
            for (h, w), s in zip(shapes, STRIDES):
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                pts.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * s)
                strides.append(torch.full((h * w, 1), float(s)))
            self._grid[key] = (torch.cat(pts), torch.cat(strides))
        pts, strides = self._grid[key]
        return pts.to(device), strides.to(device)

    def forward(self, x):
        x3 = self.p3(self.stem(x))
        x4 = self.p4(x3)
        x5 = self.p5(x4)
        t4 = self.td4(torch.cat([F.interpolate(x5, scale_factor=2.0, mode="nearest"), x4], 1))
        n3 = self.td3(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), x3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bu5(torch.cat([self.down4(n4), x5], 1))
        boxes, logits, shapes = [], [], []
        for head, feat in zip(self.heads, (n3, n4, n5)):
            b, c = head(feat)
            shapes.append(feat.shape[2:])
            boxes.append(b.flatten(2))
            logits.append(c.flatten(2))
        dist = F.softplus(torch.cat(boxes, 2)).transpose(1, 2)  # (B, N, 4) in strides
        logits = torch.cat(logits, 2)  # (B, nc, N)
        pts, strides = self.anchors(shapes, x.device)
        dist = dist * strides
        xy0, xy1 = pts - dist[..., :2], pts + dist[..., 2:]
        if self.export:
            cxcywh = torch.cat([(xy0 + xy1) / 2, xy1 - xy0], -1).transpose(1, 2)
            return torch.cat([cxcywh, logits.sigmoid()], 1)
        return torch.cat([xy0, xy1], -1), logits.transpose(1, 2), pts


def build(size, nc):
    """Detector for a named size ('fast' or 'accurate')."""
    cfg = SIZES[size]
    return Detector(nc, cfg["width"], cfg["depth"], cfg["imgsz"])


def count_gflops(model, imgsz):
    """Forward GFLOPs (2 x multiply-adds of convolutions) at a square input, via hooks."""
    total = [0]

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        total[0] += 2 * k * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, imgsz, imgsz))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total[0] / 1e9
