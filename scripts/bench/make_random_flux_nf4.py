#!/usr/bin/env python3
"""A bitsandbytes-NF4 copy of a random full-size FLUX.1 transformer, written by diffusers itself.

Loads <model>/transformer with BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_compute_dtype=bfloat16[, bnb_4bit_use_double_quant]) on the GPU and save_pretrained()s it to
<out>/transformer, so fluxbatch's NF4 load time and bytes are measured on the file users would have.
  python3 scripts/bench/make_random_flux_nf4.py --model /tmp/flux-dev-random --out /tmp/flux-dev-random-nf4
"""
import argparse
import time
from pathlib import Path

import torch
from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

parser = argparse.ArgumentParser()
parser.add_argument("--model", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--double-quant", action="store_true")
args = parser.parse_args()
t0 = time.time()
config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                            bnb_4bit_use_double_quant=args.double_quant)
model = FluxTransformer2DModel.from_pretrained(args.model / "transformer", quantization_config=config,
                                               torch_dtype=torch.bfloat16, device_map={"": "cuda"})
print(f"diffusers NF4 transformer: {torch.cuda.memory_allocated() / 1e9:.3f} GB on the GPU, "
      f"quantized in {time.time() - t0:.1f} s")
model.save_pretrained(args.out / "transformer")
print(f"saved {args.out / 'transformer'} in {time.time() - t0:.1f} s total")
