#!/usr/bin/env python3
"""NF4 fixtures that only a GPU can make, for tests/quant [bnb-cuda] and tests/runtime [nf4-diffusers-gpu].

Run on the GPU machine (it has accelerate; carry diffusers, importlib_metadata and a trimmed bitsandbytes
wheel in .whl/, see shared/gpu-machine.md), then commit what it writes:
  <out>/bnb_cuda.safetensors                       bitsandbytes' CUDA quantize/dequantize on the cases of
                                                   scripts/make_nf4_fixtures.py (it runs that script)
  <out>/diffusers-gpu/nf4/transformer/             what diffusers itself writes for the tiny FLUX.1-dev transformer
  <out>/diffusers-gpu/nf4-dq/transformer/          loaded with BitsAndBytesConfig(load_in_4bit=True,
                                                   bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=bfloat16
                                                   [, bnb_4bit_use_double_quant=True]) on CUDA, then save_pretrained
Usage: PYTHONPATH=/tmp/site python3 scripts/make_nf4_gpu_fixtures.py --models models --out tests/data/nf4
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def save_diffusers_nf4(models: Path, out: Path, double_quant: bool) -> None:
    import bitsandbytes
    import diffusers
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                bnb_4bit_use_double_quant=double_quant)
    model = FluxTransformer2DModel.from_pretrained(models / "tiny-flux-dev" / "transformer", quantization_config=config,
                                                   torch_dtype=torch.bfloat16, device_map={"": "cuda"})
    target = out / "diffusers-gpu" / ("nf4-dq" if double_quant else "nf4") / "transformer"
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    (target.parent / "VERSIONS.json").write_text(json.dumps(
        {"diffusers": diffusers.__version__, "bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
         "device": torch.cuda.get_device_name(0), "source": "models/tiny-flux-dev/transformer"}, indent=1) + "\n")
    print("wrote", target, sorted(p.name for p in target.iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("tests/data/nf4"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("make_nf4_gpu_fixtures.py: needs a CUDA GPU")
    here = Path(__file__).resolve().parent
    subprocess.run([sys.executable, str(here / "make_nf4_fixtures.py"), "--device", "cuda", "--out", str(args.out)],
                   check=True)
    for double_quant in (False, True):
        save_diffusers_nf4(args.models, args.out, double_quant)


if __name__ == "__main__":
    main()
