#!/usr/bin/env python3
"""Checks that diffusers + bitsandbytes load a `fluxbatch quantize` folder and render what fluxbatch renders.

1. FluxPipeline.from_pretrained(MODEL, torch_dtype=float32): diffusers reads transformer/config.json's
   quantization_config and loads every "<p>.weight" + quant state into a bitsandbytes Linear4bit. Every
   nn.Linear of the transformer must come back as a Linear4bit whose QuantState is NF4, blocksize 64, bf16,
   of the Linear's shape (and nested exactly when the config says double quant).
2. Renders one image and compares it with fluxbatch's PNG of the same case: max |difference| of the 8-bit
   pixels must be <= --tolerance (default 1: both run in fp32 on the CPU, only summation order differs).

On a machine without CUDA two things are emulated, as scripts/make_nf4_models.py does:
  - diffusers' bnb quantizer refuses to load without a GPU (validate_environment / update_device_map): they
    are patched to load onto the CPU;
  - bnb 0.49.2's native CPU dequantize indexes blocks within rows and mis-scales weights whose in_features is
    not a multiple of 64 (the tiny model's are 32), so each Linear4bit computes
    F.linear(x, dequantize_4bit(W).to(x.dtype), bias): bnb MatMul4Bit's formula, with the flat-block
    dequantization of the CUDA kernel.
Usage: check_nf4_diffusers.py MODEL --png FILE --prompt TEXT [--seed 0 --width 64 --height 64 --steps 4
       --guidance 3.5 --max-sequence-length 512 --tolerance 1]
"""
import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402
from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer  # noqa: E402
from PIL import Image  # noqa: E402


def allow_cpu_loading():
    original = BnB4BitDiffusersQuantizer.validate_environment

    def validate(self, *args, **kwargs):
        kwargs.pop("device_map", None)
        real = torch.cuda.is_available
        torch.cuda.is_available = lambda: True
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.cuda.is_available = real

    BnB4BitDiffusersQuantizer.validate_environment = validate
    BnB4BitDiffusersQuantizer.update_device_map = lambda self, device_map: device_map or {"": "cpu"}


def dequantize(weight):
    qs = weight.quant_state
    absmax = qs.absmax
    if qs.nested:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2)
        absmax += qs.offset
        absmax = absmax.float()
    flat = torch.ops.bitsandbytes.dequantize_4bit.default(weight.data, absmax, qs.blocksize, qs.quant_type,
                                                          [qs.shape.numel()], qs.dtype)
    return flat.reshape(qs.shape)


def check_layers(transformer, double_quant):
    """Every Linear is a Linear4bit with the expected quant state; returns how many."""
    count = 0
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if not isinstance(module, bitsandbytes.nn.Linear4bit):
            raise SystemExit(f"{name}: loaded as {type(module).__name__}, not bitsandbytes Linear4bit")
        qs = module.weight.quant_state
        want = (module.out_features, module.in_features)
        if (qs.quant_type, qs.blocksize, qs.dtype, tuple(qs.shape), bool(qs.nested)) != \
                ("nf4", 64, torch.bfloat16, want, double_quant):
            raise SystemExit(f"{name}: unexpected quant state {qs.quant_type} {qs.blocksize} {qs.dtype} "
                             f"{tuple(qs.shape)} nested={qs.nested}")
        count += 1
    return count


def emulate_cuda_matmul(transformer):
    for module in transformer.modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            weight = dequantize(module.weight)

            def forward(x, weight=weight, bias=module.bias):
                return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

            module.forward = forward


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--png", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--max-sequence-length", type=int, default=512)
    ap.add_argument("--tolerance", type=int, default=1)
    args = ap.parse_args()

    config = json.loads((Path(args.model) / "transformer" / "config.json").read_text())
    double_quant = bool(config["quantization_config"]["bnb_4bit_use_double_quant"])
    if not torch.cuda.is_available():
        allow_cpu_loading()
    pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.to("cpu")
    layers = check_layers(pipe.transformer, double_quant)
    emulate_cuda_matmul(pipe.transformer)
    with torch.no_grad():
        image = pipe(prompt=args.prompt, width=args.width, height=args.height, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, max_sequence_length=args.max_sequence_length,
                     generator=torch.Generator().manual_seed(args.seed), output_type="np").images[0]
    diffusers_u8 = (image * 255).round().astype(np.int16)  # diffusers' numpy_to_pil
    fluxbatch_u8 = np.asarray(Image.open(args.png).convert("RGB")).astype(np.int16)
    if diffusers_u8.shape != fluxbatch_u8.shape:
        raise SystemExit(f"shape {fluxbatch_u8.shape} (fluxbatch) != {diffusers_u8.shape} (diffusers)")
    diff = int(np.abs(diffusers_u8 - fluxbatch_u8).max())
    ok = diff <= args.tolerance
    print(f"diffusers loaded {layers} bitsandbytes Linear4bit (nf4{', double quant' if double_quant else ''}); "
          f"max |pixel difference| = {diff} (tolerance {args.tolerance}): {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
