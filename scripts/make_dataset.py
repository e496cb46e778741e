"""Generate the demo shapes dataset in COCO format (train, val and calib splits)."""
import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

import demo_scenes


def make_split(out, name, count, seed, w, h):
    """Render one split into out/name/images and out/name/instances.json."""
    img_dir = out / name / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    # One generator per image: any image can be regenerated alone and splits never overlap.
    base = np.random.SeedSequence([seed, sum(map(ord, name))])
    coco = demo_scenes.coco_skeleton()
    for i, child in enumerate(base.spawn(count)):
        img, anns = demo_scenes.random_scene(np.random.default_rng(child), w, h)
        file_name = f"{i:06d}.jpg"
        cv2.imwrite(str(img_dir / file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        demo_scenes.add_image(coco, i + 1, file_name, w, h, anns)
    with open(out / name / "instances.json", "w") as f:
        json.dump(coco, f)
    return coco


def main(argv=None):
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=2500, help="number of training images")
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--calib", type=int, default=64, help="INT8 calibration images")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    args = ap.parse_args(argv)
    out = Path(args.out)
    for name, count in (("train", args.train), ("val", args.val), ("calib", args.calib)):
        t0 = time.time()
        coco = make_split(out, name, count, args.seed, args.width, args.height)
        print(f"split={name} images={count} objects={len(coco['annotations'])} "
              f"seconds={time.time() - t0:.1f} path={out / name}", flush=True)


if __name__ == "__main__":
    main()
