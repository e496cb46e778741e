"""Train a demo detector ('fast' or 'accurate') on the generated COCO dataset, on CPU."""
import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import detector
import evaluate
from detection_loss import detection_loss
from export_onnx import export, training_meta


def load_split(split, imgsz):
    """Whole split in memory, letterboxed to a stride-aligned rectangle (cheaper than a square).

    Returns images uint8 (B, 3, H, W) RGB, boxes (B, M, 4) xyxy, classes (B, M), mask (B, M), names.
    """
    split = Path(split)
    coco = json.load(open(split / "instances.json"))
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    per_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)
    m = max(1, max(len(v) for v in per_image.values()))
    im0 = coco["images"][0]
    r = min(imgsz / im0["height"], imgsz / im0["width"])
    nh, nw = round(im0["height"] * r), round(im0["width"] * r)
    th, tw = math.ceil(nh / 32) * 32, math.ceil(nw / 32) * 32
    top, left = (th - nh) // 2, (tw - nw) // 2
    n = len(coco["images"])
    images = np.full((n, th, tw, 3), 114, np.uint8)
    boxes, classes, mask = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int64), np.zeros((n, m), bool)
    for i, im in enumerate(coco["images"]):
        img = cv2.imread(str(split / "images" / im["file_name"]))
        images[i, top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh))[:, :, ::-1]
        for j, a in enumerate(per_image[im["id"]]):
            x, y, w, h = a["bbox"]
            boxes[i, j] = [x * r + left, y * r + top, (x + w) * r + left, (y + h) * r + top]
            classes[i, j], mask[i, j] = a["category_id"] - 1, True
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(boxes), torch.from_numpy(classes), torch.from_numpy(mask), names


def hflip(x, boxes, mask):
    """Mirror a batch horizontally (the shapes have no preferred left/right)."""
    w = x.shape[-1]
    flipped = torch.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1)
    return x.flip(-1), torch.where(mask[..., None], flipped, boxes)


class EMA:
    """Exponential moving average of weights; the averaged model is what gets evaluated."""

    def __init__(self, model, decay=0.999, tau=500):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))  # ramp up: early weights are poor
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


@torch.no_grad()
def validate(model, split, batch=16):
    """mAP50-95 and mAP50 on a split, through the same letterbox/decode/NMS as evaluate.py."""
    model.eval()
    model.export = True
    split = Path(split)
    coco = json.load(open(split / "instances.json"))
    results = []
    for i in range(0, len(coco["images"]), batch):
        ims = coco["images"][i:i + batch]
        inputs = [evaluate.to_input(cv2.imread(str(split / "images" / im["file_name"])), model.imgsz)
                  for im in ims]
        out = model(torch.from_numpy(np.concatenate([t[0] for t in inputs]))).numpy()
        for im, o, (_, r, off) in zip(ims, out, inputs):
            results += evaluate.to_coco(im["id"], *evaluate.postprocess(o), r, off)
    model.export = False
    return evaluate.coco_map(split / "instances.json", results)


def log(**fields):
    """One line per event, key=value, so logs grep and parse easily."""
    def fmt(v):
        return f"{v:.4f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)
    print(" ".join(f"{k}={fmt(v)}" for k, v in fields.items()), flush=True)


def train(args):
    """Train, validate, save the checkpoint and export ONNX; returns the checkpoint dict."""
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    t_start = time.time()
    images, boxes, classes, mask, names = load_split(data / "train", detector.SIZES[args.size]["imgsz"])
    model = detector.build(args.size, len(names))
    prior = {"train_wall_s": 0.0, "train_cpu_s": 0.0, "epochs": 0}
    if args.init:  # continue from earlier weights (a new schedule, e.g. more epochs at a lower lr)
        init = torch.load(args.init, map_location="cpu", weights_only=False)
        model.load_state_dict(init["state_dict"])
        prior = {k: init.get(k, 0) for k in prior}  # so the checkpoint's cost covers every stage
    params = sum(p.numel() for p in model.parameters())
    log(event="start", size=args.size, imgsz=model.imgsz, train_shape=list(images.shape[2:]),
        images=len(images), params=params, gflops=round(detector.count_gflops(model, model.imgsz), 3),
        load_s=round(time.time() - t_start, 1))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    ema = EMA(model)
    steps_per_epoch = len(images) // args.batch
    total = steps_per_epoch * args.epochs
    warmup = min(300, total // 10)
    gen = torch.Generator().manual_seed(args.seed)
    step, t0, c0, best = 0, time.time(), time.process_time(), (0.0, 0.0)
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(images), generator=gen)
        sums = np.zeros(3)
        for k in range(steps_per_epoch):
            idx = perm[k * args.batch:(k + 1) * args.batch]
            x, b, c, m = images[idx].float() / 255, boxes[idx], classes[idx], mask[idx]
            if torch.rand(1, generator=gen).item() < 0.5:
                x, b = hflip(x, b, m)
            # Linear warm-up, then cosine decay to 2 % of the peak.
            frac = step / max(1, total)
            lr = args.lr * (step / warmup if step < warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            pred_boxes, logits, points = model(x)
            loss, lbox, lcls = detection_loss(pred_boxes, logits, points, c, b, m)
            opt.zero_grad(set_to_none=True)
            (loss * args.batch).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            ema.update(model)
            step += 1
            sums += [loss.item(), lbox.item(), lcls.item()]
            if step % args.log_every == 0:
                log(event="step", size=args.size, step=f"{step}/{total}", loss=loss.item(),
                    elapsed_s=round(time.time() - t0, 1), cpu_s=round(time.process_time() - c0, 1))
        sums /= steps_per_epoch
        log(event="epoch", size=args.size, epoch=f"{epoch}/{args.epochs}", loss=sums[0], box=sums[1],
            cls=sums[2], lr=lr, elapsed_s=round(time.time() - t0, 1))
        if epoch % args.val_every == 0 or epoch == args.epochs:
            m5095, m50 = validate(ema.model, data / "val")
            log(event="val", size=args.size, epoch=epoch, mAP50=m50, mAP50_95=m5095,
                elapsed_s=round(time.time() - t0, 1))
            best = (m50, m5095)
        # Saved every epoch so an interrupted run still leaves a usable model.
        ckpt = dict(size=args.size, names=names, state_dict=ema.model.state_dict(), epochs=prior["epochs"] + epoch,
                    train_wall_s=round(prior["train_wall_s"] + time.time() - t0, 1),
                    train_cpu_s=round(prior["train_cpu_s"] + time.process_time() - c0, 1),
                    params=params, seed=args.seed, threads=args.threads, mAP50=best[0], mAP50_95=best[1])
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, Path(args.runs) / f"demo-{args.size}.pt")
    log(event="done", size=args.size, epochs=args.epochs, train_wall_s=ckpt["train_wall_s"],
        train_cpu_s=ckpt["train_cpu_s"], total_wall_s=round(time.time() - t_start, 1),
        threads=args.threads, mAP50=best[0], mAP50_95=best[1])
    if args.export:
        out = export(ema.model, names, args.size, args.export, extra_meta=training_meta(ckpt))
        log(event="export", size=args.size, path=out)
    return ckpt


def main(argv=None):
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=sorted(detector.SIZES), default="fast")
    ap.add_argument("--data", default="data/demo", help="dataset root with train/ and val/")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--log-every", type=int, default=25, help="log a step line every N steps")
    ap.add_argument("--val-every", type=int, default=5, help="validate every N epochs (and at the end)")
    ap.add_argument("--init", help="start from this checkpoint's weights instead of random")
    ap.add_argument("--runs", default="runs", help="folder for checkpoints")
    ap.add_argument("--export", help="also export ONNX here, e.g. models/demo-fast.onnx")
    return train(ap.parse_args(argv))


if __name__ == "__main__":
    main()
