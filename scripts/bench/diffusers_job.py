#!/usr/bin/env python3
"""diffusers' FluxPipeline rendering a whole job, for an images-per-hour comparison with fluxbatch in the same
call: the same prompts, seeds, size and steps as scripts/bench/job_bench.sh gives fluxbatch, PNGs written as
a user's script would, timed from process start (imports and loading included) to the last PNG.

  python3 scripts/bench/diffusers_job.py --model /tmp/flux-dev-random-nf4 --count 16 --batch 4 --out /tmp/d \
      --json /tmp/d.json
A folder whose transformer is bitsandbytes NF4 (config.json with a quantization_config, as diffusers'
save_pretrained writes it) loads as diffusers + bitsandbytes NF4; the text encoders stay bf16.
"""
import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402

SUBJECTS = ["a red fox", "a lighthouse", "a bowl of ramen", "an old tram", "a snowy owl", "a glass teapot",
            "a desert canyon", "a violin", "a paper boat", "a city at night", "a sunflower field", "a robot"]


def prompts(count):
    """The job's prompts and seeds (job_bench.sh writes the same ones for fluxbatch)."""
    return [(f"{SUBJECTS[i % len(SUBJECTS)]}, photo {i}", 1000 + i) for i in range(count)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16).to("cuda")
    torch.cuda.synchronize()
    loaded = time.perf_counter() - START
    jobs = prompts(args.count)
    torch.cuda.reset_peak_memory_stats()
    first_image = None
    with torch.inference_mode():
        for i in range(0, len(jobs), args.batch):
            chunk = jobs[i:i + args.batch]
            images = pipe([p for p, _ in chunk], height=args.size, width=args.size, num_inference_steps=args.steps,
                          guidance_scale=3.5, max_sequence_length=512,
                          generator=[torch.Generator().manual_seed(s) for _, s in chunk]).images
            for k, image in enumerate(images):
                image.save(args.out / f"{i + k:02}.png")
            if first_image is None:
                first_image = time.perf_counter() - START
    wall = time.perf_counter() - START
    steady = (wall - first_image) / max(1, args.count - args.batch) if args.count > args.batch else float("nan")
    figures = {"count": args.count, "batch": args.batch, "wall_s": wall, "load_s": loaded,
               "img_per_h": args.count * 3600 / wall, "steady_s_per_image": steady,
               "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(f"diffusers job: {args.count} images {args.size}^2 {args.steps} steps, batch {args.batch}: "
          f"{wall:.1f} s whole process (load {loaded:.1f} s), {figures['img_per_h']:.0f} images/hour, "
          f"steady {steady:.2f} s/image, peak allocated {figures['peak_allocated_gib']:.2f} GiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
