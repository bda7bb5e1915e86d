#!/usr/bin/env python3
"""fp8 single files of the tiny FLUX.1-dev model as ComfyUI / Kijai users have them, for tests [fp8file].

Two layouts exist in the wild for FLUX.1 in float8_e4m3fn:
  plain   Kijai's flux1-dev-fp8-e4m3fn.safetensors and ComfyUI's --fp8_e4m3fn-unet saves: BFL keys, every
          Linear weight cast to e4m3 (torch's round-to-nearest cast, no scale); biases and norm scales as they
          were. fp8 T5 files of this kind (t5xxl_fp8_e4m3fn.safetensors) are the same cast.
  scaled  ComfyUI's "scaled fp8" (flux1-dev-fp8-scaled, t5xxl_fp8_e4m3fn_scaled.safetensors): a `scaled_fp8`
          marker tensor, every Linear weight stored as round(w / s) in e4m3 with its per-tensor scale s in
          "<p>.scale_weight" (fp32 scalar; here s = max|w| / 448, so each tensor uses e4m3's whole range), and
          for some layers a "<p>.scale_input" (a static activation scale that fp8 matmuls use; dequantizing
          loaders ignore it).
The weights a loader must arrive at are w8.float() * s (plain: s = 1), computed in float32.

Writes (only adds; an earlier output of this script is replaced), from <models>/tiny-flux-dev-bfl:
  <models>/tiny-flux-dev-fp8/      flux1-dev-fp8-e4m3fn.safetensors (plain transformer), t5xxl_fp8_e4m3fn.safetensors
                                   (plain T5), ae.safetensors, clip_l.safetensors, tokenizer/, tokenizer_2/
  <models>/tiny-flux-dev-fp8-scaled/  flux1-dev-fp8-scaled.safetensors (scaled transformer, scale_input on the
                                   double blocks' qkv), t5xxl_fp8_e4m3fn_scaled.safetensors (scaled T5), the rest as above
  and in each, reference/: a diffusers folder (tiny-flux-dev's configs, scheduler, tokenizers, VAE, CLIP) whose
  transformer and T5 hold exactly w8.float() * s in float32, which the fp8 folder must render bit for bit.

Usage: .venv/bin/python3 scripts/make_fp8_fixtures.py [--models models]
"""
import argparse
import logging
import shutil
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_models import diffusers_flux_converter  # noqa: E402

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def is_linear_weight(name, t):
    # 2-D ".weight" tensors are the Linears (embedding tables are "shared.weight" / "*embedding*": kept).
    return name.endswith(".weight") and t.dim() == 2 and "shared" not in name and "embed" not in name \
        and "relative_attention_bias" not in name


def plain(sd):
    return {k: (v.to(E4M3) if is_linear_weight(k, v) else v) for k, v in sd.items()}


def scaled(sd, input_scales=()):
    out = {"scaled_fp8": torch.empty(0, dtype=E4M3)}
    for k, v in sd.items():
        if not is_linear_weight(k, v):
            out[k] = v
            continue
        w = v.float()
        s = (w.abs().max() / E4M3_MAX).clamp_min(1e-12)
        out[k] = (w / s).to(E4M3)
        p = k[: -len(".weight")]
        out[p + ".scale_weight"] = s.reshape([]).float()
        if any(x in p for x in input_scales):
            out[p + ".scale_input"] = torch.tensor(1.0)
    return out


def dequantized(sd):
    """What the loader must compute: w8.float() * s in float32, every other tensor as stored."""
    out = {}
    for k, v in sd.items():
        if k == "scaled_fp8" or k.endswith(".scale_weight") or k.endswith(".scale_input"):
            continue
        if v.dtype == E4M3:
            s = sd.get(k[: -len(".weight")] + ".scale_weight")
            out[k] = v.float() * s.float() if s is not None else v.float()
        else:
            out[k] = v
    return out


def write_case(models: Path, name: str, flux_file: str, t5_file: str, convert):
    bfl_dir, dev_dir = models / "tiny-flux-dev-bfl", models / "tiny-flux-dev"
    dst = models / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    flux = convert(load_file(str(bfl_dir / "flux1-tiny-dev.safetensors")), "flux")
    t5 = convert(load_file(str(bfl_dir / "t5xxl.safetensors")), "t5")
    save_file(flux, str(dst / flux_file), metadata={"format": "pt"})
    save_file(t5, str(dst / t5_file), metadata={"format": "pt"})
    for f in ("ae.safetensors", "clip_l.safetensors"):
        shutil.copy(bfl_dir / f, dst / f)
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(bfl_dir / sub, dst / sub)

    ref = dst / "reference"
    shutil.copytree(dev_dir, ref, ignore=shutil.ignore_patterns("*.safetensors"))
    for sub in ("vae", "text_encoder"):
        for f in (dev_dir / sub).glob("*.safetensors"):
            shutil.copy(f, ref / sub / f.name)
    tr = diffusers_flux_converter()({k: v.clone() for k, v in dequantized(flux).items()})
    save_file({k: v.contiguous() for k, v in tr.items()}, str(ref / "transformer" / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    save_file(dequantized(t5), str(ref / "text_encoder_2" / "model.safetensors"), metadata={"format": "pt"})
    n = sum(1 for v in flux.values() if v.dtype == E4M3 and v.numel() > 0)
    print(f"{dst}: {n} fp8 transformer Linears; reference/ holds their float32 values")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    models = Path(ap.parse_args().models)
    write_case(models, "tiny-flux-dev-fp8", "flux1-dev-fp8-e4m3fn.safetensors", "t5xxl_fp8_e4m3fn.safetensors",
               lambda sd, what: plain(sd))
    write_case(models, "tiny-flux-dev-fp8-scaled", "flux1-dev-fp8-scaled.safetensors",
               "t5xxl_fp8_e4m3fn_scaled.safetensors",
               lambda sd, what: scaled(sd, input_scales=("img_attn.qkv", "txt_attn.qkv") if what == "flux" else ()))


if __name__ == "__main__":
    main()
