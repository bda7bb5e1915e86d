#!/usr/bin/env python3
"""NF4 diffusers folders of the tiny FLUX.1-dev model, quantized by bitsandbytes itself, for tests/nn [nf4load].

What diffusers' save_pretrained writes for FluxTransformer2DModel.from_pretrained(...,
quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_compute_dtype=torch.bfloat16), torch_dtype=torch.bfloat16): every nn.Linear of the transformer
becomes a bnb Linear4bit, whose _save_to_state_dict writes "<p>.weight" (the packed uint8 codes) and, for
each item of QuantState.as_dict(packed=True), "<p>.weight.<item>"; everything else stays bf16; config.json
gains "quantization_config". diffusers needs `accelerate` (absent here) to quantize on load, so this script
does what replace_with_bnb_linear + Params4bit._quantize do, with the same calls: bitsandbytes.functional.
quantize_4bit(w_bf16, blocksize=64, quant_type="nf4", compress_statistics=double_quant) per Linear weight.
bitsandbytes runs on its CPU backend (same layout as CUDA; a few threshold ties round differently).

Writes, next to the existing tiny models (only adds folders):
  <models>/tiny-flux-dev-nf4/     bnb_4bit_use_double_quant=False (diffusers' default): float32 absmax
  <models>/tiny-flux-dev-nf4-dq/  bnb_4bit_use_double_quant=True: 8-bit absmax + nested statistics
each a full diffusers folder (non-transformer components copied from tiny-flux-dev) plus
  reference/nf4_reference.safetensors:
    "<p>.weight"  bitsandbytes' dequantize_4bit of every quantized Linear (bf16, shape [out, in]; see bnb_dequantize)
    "image_float" [B, 3, H, W] the VAE output of diffusers' FluxPipeline in fp32 on CPU where every Linear of
                  the transformer computes F.linear(x, dequantize_4bit(W, state).to(x.dtype), bias) (bnb
                  MatMul4Bit's formula with quant_state.dtype bf16, as on CUDA; bnb's CPU matmul_4bit would
                  dequantize straight to x.dtype instead) and every other transformer tensor is bf16-rounded,
                  as stored; metadata "case" = JSON prompts / seeds / width / height / steps / guidance / msl.

Usage: /work/main/.venv/bin/python3 scripts/make_nf4_models.py [--models models]
"""
import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from diffusers import BitsAndBytesConfig, FluxPipeline, FluxTransformer2DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

PINNED_BNB = "0.49.2"
SOURCE = "tiny-flux-dev"
CASE = {"prompts": ["a photo of a cat", "A painting of a red house at night, oil on canvas"], "seeds": [0, 1],
        "width": 64, "height": 64, "steps": 4, "guidance": 3.5, "max_sequence_length": 512}


def bnb_dequantize(packed, qs):
    """F.dequantize_4bit(packed, qs), step by step, over the flattened tensor. bnb's native CPU kernel indexes
    blocks within rows and mis-scales a [N, K] tensor whose K is not a multiple of 64 (the tiny model has K = 32);
    the CUDA kernel (and this flat call of the same CPU kernel) takes blocks of the flat row-major tensor."""
    absmax = qs.absmax
    if qs.nested:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2)
        absmax += qs.offset
        absmax = absmax.float()
    flat = torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, qs.blocksize, qs.quant_type,
                                                          [qs.shape.numel()], qs.dtype)
    return flat.reshape(qs.shape).contiguous()


def quantize_transformer(src: Path, double_quant: bool):
    """-> (state dict as save_pretrained writes it, {linear name: bnb dequantize_4bit(W)})."""
    model = FluxTransformer2DModel.from_pretrained(str(src / "transformer"), torch_dtype=torch.bfloat16)
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    state, dequantized = {}, {}
    for key, tensor in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in linears and leaf == "weight":
            packed, qs = F.quantize_4bit(tensor.contiguous(), blocksize=64, compress_statistics=double_quant,
                                         quant_type="nf4", quant_storage=torch.uint8)
            state[key] = packed
            for k, v in qs.as_dict(packed=True).items():
                state[f"{key}.{k}"] = v
            dequantized[key] = bnb_dequantize(packed, qs)
            assert dequantized[key].dtype == torch.bfloat16 and dequantized[key].shape == tensor.shape
        else:
            state[key] = tensor
    config = dict(model.config)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                             bnb_4bit_use_double_quant=double_quant)
    return model, state, dequantized, config, bnb.to_dict()


@torch.no_grad()
def render_reference(src: Path, dequantized, state):
    """diffusers' FluxPipeline (fp32, CPU) on the NF4 weights as bnb computes with them."""
    pipe = FluxPipeline.from_pretrained(str(src), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    params = dict(pipe.transformer.named_parameters())
    for key, param in params.items():
        if key in dequantized:
            continue
        param.copy_(state[key].to(torch.float32))  # the bf16 tensor the NF4 file stores
    for name, module in pipe.transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.copy_(dequantized[name + ".weight"].to(torch.float32))
    captured = {}
    orig_decode = pipe.vae.decode

    def decode(*a, **kw):
        r = orig_decode(*a, **kw)
        captured["image_float"] = (r[0] if isinstance(r, tuple) else r.sample).clone()
        return r

    pipe.vae.decode = decode
    pipe(prompt=CASE["prompts"], width=CASE["width"], height=CASE["height"], num_inference_steps=CASE["steps"],
         guidance_scale=CASE["guidance"], max_sequence_length=CASE["max_sequence_length"],
         generator=[torch.Generator().manual_seed(s) for s in CASE["seeds"]], output_type="pil")
    return captured["image_float"].contiguous()


def make_folder(models: Path, name: str, double_quant: bool):
    src, out = models / SOURCE, models / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("transformer"))
    (out / "transformer").mkdir()
    model, state, dequantized, config, bnb = quantize_transformer(src, double_quant)
    # dequantize_4bit for the reference is taken before any forward: bnb's CPU matmul_4bit rewrites
    # quant_state.dtype to the input's dtype, which would change what as_dict() writes.
    save_file({k: v.contiguous() for k, v in state.items()},
              str(out / "transformer" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    config["quantization_config"] = bnb
    (out / "transformer" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    # The reference uses the dequantized weights with the original model's dense layout.
    image = render_reference(src, dequantized, state)
    (out / "reference").mkdir()
    save_file({**dequantized, "image_float": image}, str(out / "reference" / "nf4_reference.safetensors"),
              metadata={"case": json.dumps(CASE), "bitsandbytes": bitsandbytes.__version__,
                        "torch": torch.__version__, "double_quant": str(double_quant).lower()})
    print(f"{out}: {len(dequantized)} NF4 Linears")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    args = ap.parse_args()
    if bitsandbytes.__version__ != PINNED_BNB:
        raise SystemExit(f"bitsandbytes {bitsandbytes.__version__} found, {PINNED_BNB} required")
    models = Path(args.models)
    make_folder(models, "tiny-flux-dev-nf4", double_quant=False)
    make_folder(models, "tiny-flux-dev-nf4-dq", double_quant=True)


if __name__ == "__main__":
    main()
