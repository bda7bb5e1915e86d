#!/usr/bin/env python3
"""diffusers' own figures on a FLUX model folder, for comparison with fluxbatch in the same run.

1. One FluxTransformer2DModel forward at the given size on fixed random inputs: writes the inputs and the
   output to --dump (safetensors), so the C++ transformer can be checked against it on the same weights,
   and prints the median forward time.
   With --nf4-model (a bitsandbytes NF4 folder of the same weights, scripts/bench/make_random_flux_nf4.py),
   the NF4 transformer's output on the same inputs goes to --dump too ("output_nf4"), with its forward time.
2. A full FluxPipeline render (bf16, CPU generator seeded per image): wall time, per-step time, peak memory,
   and the image as PNG. --forward-only skips it (and loads only the transformer).

  python3 scripts/bench/diffusers_reference.py --model /tmp/flux-dev-random --dump /tmp/ref.safetensors \
      --png /tmp/diffusers.png --size 1024 --steps 28
"""
import argparse
import json
import statistics
import time

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors.torch import save_file


def cuda_time(fn, warmup=2, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dump", required=True, help="safetensors file for the forward's inputs and output")
    ap.add_argument("--png", default=None)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--prompt", default="a photo of a red fox in the snow, golden hour")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--nf4-model", default=None, help="bitsandbytes NF4 folder of the same weights")
    ap.add_argument("--forward-only", action="store_true", help="only the transformer forwards, no render")
    args = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    t0 = time.time()
    if args.forward_only:
        pipe = None
        tr = FluxTransformer2DModel.from_pretrained(args.model, subfolder="transformer", torch_dtype=dt).to(dev)
    else:
        pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=dt).to(dev)
        tr = pipe.transformer
    torch.cuda.synchronize()
    load_s = time.time() - t0
    figures = {"load_s": load_s}

    # 1. transformer forward on fixed inputs
    g = torch.Generator().manual_seed(1234)
    h = w = args.size // 16
    S, L = h * w, args.seq_len
    inputs = {
        "hidden_states": torch.randn(1, S, 64, generator=g).to(dt),
        "encoder_hidden_states": torch.randn(1, L, tr.config.joint_attention_dim, generator=g).to(dt),
        "pooled_projections": torch.randn(1, tr.config.pooled_projection_dim, generator=g).to(dt),
        "timestep": torch.tensor([0.75], dtype=dt),
        "guidance": torch.tensor([3.5], dtype=torch.float32),
        "txt_ids": torch.zeros(L, 3, dtype=dt),
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, h, w, "cpu", dt),
    }
    kw = {k: v.to(dev) for k, v in inputs.items()}
    if not tr.config.guidance_embeds:
        kw["guidance"] = None
    with torch.inference_mode():
        out = tr(**kw, return_dict=False)[0]
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_ms = cuda_time(lambda: tr(**kw, return_dict=False))
        figures["forward_ms"] = fwd_ms
        figures["forward_peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    dump = {**{k: v.contiguous() for k, v in inputs.items()}, "output": out.float().cpu().contiguous()}
    print(f"diffusers transformer forward {args.size}^2 batch 1: {fwd_ms:.1f} ms (median of 10)", flush=True)
    if args.nf4_model:
        del out
        if pipe is None:
            del tr
            tr = None
        torch.cuda.empty_cache()
        nf4 = FluxTransformer2DModel.from_pretrained(args.nf4_model, subfolder="transformer", torch_dtype=dt,
                                                     device_map={"": dev})
        with torch.inference_mode():
            dump["output_nf4"] = nf4(**kw, return_dict=False)[0].float().cpu().contiguous()
            figures["forward_nf4_ms"] = cuda_time(lambda: nf4(**kw, return_dict=False))
        print(f"diffusers + bitsandbytes NF4 transformer forward {args.size}^2 batch 1: "
              f"{figures['forward_nf4_ms']:.1f} ms (median of 10)", flush=True)
        del nf4
        torch.cuda.empty_cache()
    save_file(dump, args.dump)
    if pipe is None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
        return

    # 2. the full pipeline
    step_times = []
    last = [None]

    def on_step(p, i, t, kwargs):
        torch.cuda.synchronize()
        now = time.perf_counter()
        if last[0] is not None:
            step_times.append(now - last[0])
        last[0] = now
        return kwargs

    def render():
        last[0] = None
        step_times.clear()
        torch.cuda.synchronize()
        t = time.perf_counter()
        img = pipe(args.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
                   guidance_scale=3.5, max_sequence_length=args.seq_len,
                   generator=[torch.Generator().manual_seed(args.seed)], callback_on_step_end=on_step).images[0]
        torch.cuda.synchronize()
        return img, time.perf_counter() - t

    with torch.inference_mode():
        render()  # warm-up (cuDNN/cuBLAS handles, autotuning)
        torch.cuda.reset_peak_memory_stats()
        img, wall = render()
    figures.update(render_wall_s=wall, step_ms_median=1000 * statistics.median(step_times),
                   peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
    print(f"diffusers render {args.size}^2 {args.steps} steps: {wall:.2f} s wall, "
          f"{figures['step_ms_median']:.1f} ms/step (median), peak allocated {figures['peak_allocated_gib']:.2f} GiB, "
          f"reserved {figures['peak_reserved_gib']:.2f} GiB", flush=True)
    if args.png:
        img.save(args.png)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
