#!/usr/bin/env python3
"""diffusers + bitsandbytes NF4 on a whole job, as a user's script would run it: load the pipeline once,
then one pipe() call per prompt with its own seeded CPU generator, each image saved as PNG. The model
folder is the one fluxbatch renders (a diffusers folder whose transformer was saved in bitsandbytes NF4,
e.g. by scripts/bench/make_random_flux_nf4.py; T5 stays bf16 as diffusers loads it). The wall time of the
whole process is measured by the caller; this prints load and render times and writes them as JSON.

  python3 scripts/bench/diffusers_job.py --model /tmp/flux-dev-random-nf4 --job job.json --out /tmp/dout \
      --json /tmp/diffusers_job.json
"""
import argparse
import json
import os
import time

t_start = time.time()
import torch  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--job", required=True, help="a fluxbatch job file: its items (prompt, seed) and defaults")
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to try the script")
    args = ap.parse_args()
    job = json.load(open(args.job))
    d = job.get("defaults", {})
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
    pipe.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    load_s = time.time() - t0
    t1 = time.time()
    with torch.inference_mode():
        for i, item in enumerate(job["items"]):
            prompt = item if isinstance(item, str) else item["prompt"]
            seed = d.get("seed", 0) if isinstance(item, str) else item.get("seed", d.get("seed", 0))
            image = pipe(prompt, height=d.get("height", 1024), width=d.get("width", 1024),
                         num_inference_steps=d.get("steps", 28), guidance_scale=d.get("guidance", 3.5),
                         max_sequence_length=d.get("max_sequence_length", 512),
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
            image.save(os.path.join(args.out, f"{i:03d}.png"))
    sync()
    render_s = time.time() - t1
    figures = {"images": len(job["items"]), "import_s": t0 - t_start, "load_s": load_s, "render_s": render_s,
               "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else 0.0}
    print(f"diffusers job: {len(job['items'])} images, import {figures['import_s']:.1f} s, load {load_s:.1f} s, "
          f"render {render_s:.1f} s ({render_s / len(job['items']):.2f} s/image)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
