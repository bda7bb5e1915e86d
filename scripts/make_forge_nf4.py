#!/usr/bin/env python3
"""Forge-layout single files (flux1-dev-bnb-nf4 v1 / v2) of the tiny NF4 FLUX.1-dev model, for tests [forge].

lllyasviel/flux1-dev-bnb-nf4 is one safetensors file written by Forge from its BFL-layout model
(backend/nn/flux.py, every nn.Linear a ForgeLoader4Bit from backend/operations_bnb.py, whose
_save_to_state_dict writes "<p>.weight" and, for each item of bnb QuantState.as_dict(packed=True),
"<p>.weight.<item>"):
  model.diffusion_model.<BFL key>       transformer: NF4 Linears (fused img_attn.qkv, txt_attn.qkv,
                                        single_blocks.N.linear1 = [q; k; v; mlp], final_layer.adaLN_modulation.1
                                        in BFL (shift, scale) order), biases / norm scales bf16
      <p>.weight                          uint8 [(N*K+1)/2, 1]
      <p>.weight.absmax                   v1: uint8 codes (double quant), v2: float32 ("no second stage")
      <p>.weight.quant_map                float32 [16]
      <p>.weight.nested_absmax            float32, v1 only
      <p>.weight.nested_quant_map         float32 [256], v1 only
      <p>.weight.quant_state.bitsandbytes__nf4   uint8 JSON {quant_type, blocksize, dtype, shape[, nested_*]}
  vae.<LDM key>                         ae.safetensors naming
  text_encoders.clip_l.transformer.*    CLIP-L, fp16
  text_encoders.t5xxl.transformer.*     T5-XXL encoder, fp8 e4m3fn

What Forge's file would hold for the tiny model is built from the NF4 folders of make_nf4_models.py:
  - the 4-bit codes: tiny-flux-dev-nf4-dq's packed bytes (identical to tiny-flux-dev-nf4's: bnb computes the
    codes before it compresses the statistics; checked), concatenated in BFL order. Every fused part is a
    whole number of 64-value blocks, so quantize_4bit of the fused weight gives exactly these codes and the
    concatenated float32 absmax (blocks never straddle two parts).
  - v2: that float32 absmax (tiny-flux-dev-nf4's, concatenated).
  - v1: bnb quantize_4bit's compress_statistics step run on the fused float32 absmax, as Forge's
    quantization of the fused weight did (offset = absmax.mean(); quantize_blockwise(absmax - offset, 256)).
    For Linears that are not fused this reproduces tiny-flux-dev-nf4-dq's bytes (checked). The fused ones
    get new 8-bit statistics, so their dequantized values differ slightly from the -dq folder's.
  - T5 rounded to fp8 e4m3fn, CLIP to fp16: the weights change (T5 a lot), so the folder to compare with is
    written too.

Writes (only adds; an earlier output of this script is replaced):
  <models>/tiny-flux-dev-forge-nf4-v1/flux1-dev-bnb-nf4.safetensors      (+ tokenizer/, tokenizer_2/)
  <models>/tiny-flux-dev-forge-nf4-v2/flux1-dev-bnb-nf4-v2.safetensors   (+ tokenizer/, tokenizer_2/)
  and in each, reference/:
    diffusers/   a bnb-NF4 diffusers folder that must render the same images: the transformer is the Forge
                 file's split by rows the way bitsandbytes itself would serve those rows (packed bytes and
                 absmax sliced at block boundaries; v1's 8-bit absmax of a fused Linear resolved to float32
                 with bnb's dequantize_blockwise + offset first, since its parts do not start on 256-block
                 boundaries); T5 / CLIP hold exactly the fp8 / fp16-rounded values (stored bf16, exact).
                 For v2 the transformer equals tiny-flux-dev-nf4's (checked).
    nf4_reference.safetensors  "<diffusers p>.weight": bnb dequantize_4bit of the FUSED Forge weight, then
                 split / un-swapped as dense rows (bf16) - independent of any NF4 splitting.

Usage: /work/main/.venv/bin/python3 scripts/make_forge_nf4.py [--models models]
"""
import argparse
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from bitsandbytes.functional import QuantState  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_nf4_models import PINNED_BNB, bnb_dequantize  # noqa: E402
from make_tiny_models import flux_to_bfl, vae_to_ldm  # noqa: E402

BLOCK = 64
STATE = "quant_state.bitsandbytes__nf4"


def linear_plan(n_double, n_single, guidance):
    """BFL Linear -> the diffusers Linears whose rows it stacks, in order ("swap": the two halves swapped)."""
    plan = {}
    embedders = [("time_in", "timestep_embedder"), ("vector_in", "text_embedder")]
    if guidance:
        embedders.append(("guidance_in", "guidance_embedder"))
    for bfl, dif in embedders:
        plan[f"{bfl}.in_layer"] = [f"time_text_embed.{dif}.linear_1"]
        plan[f"{bfl}.out_layer"] = [f"time_text_embed.{dif}.linear_2"]
    plan["txt_in"] = ["context_embedder"]
    plan["img_in"] = ["x_embedder"]
    for i in range(n_double):
        b, p = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        plan[b + "img_mod.lin"] = [p + "norm1.linear"]
        plan[b + "txt_mod.lin"] = [p + "norm1_context.linear"]
        plan[b + "img_attn.qkv"] = [p + f"attn.to_{x}" for x in "qkv"]
        plan[b + "txt_attn.qkv"] = [p + f"attn.add_{x}_proj" for x in "qkv"]
        plan[b + "img_mlp.0"] = [p + "ff.net.0.proj"]
        plan[b + "img_mlp.2"] = [p + "ff.net.2"]
        plan[b + "txt_mlp.0"] = [p + "ff_context.net.0.proj"]
        plan[b + "txt_mlp.2"] = [p + "ff_context.net.2"]
        plan[b + "img_attn.proj"] = [p + "attn.to_out.0"]
        plan[b + "txt_attn.proj"] = [p + "attn.to_add_out"]
    for i in range(n_single):
        b, p = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        plan[b + "modulation.lin"] = [p + "norm.linear"]
        plan[b + "linear1"] = [p + f"attn.to_{x}" for x in "qkv"] + [p + "proj_mlp"]
        plan[b + "linear2"] = [p + "proj_out"]
    plan["final_layer.linear"] = ["proj_out"]
    plan["final_layer.adaLN_modulation.1"] = "swap"
    return plan


def parts_of(plan_entry):
    return ["norm_out.linear"] if plan_entry == "swap" else plan_entry


class Nf4:
    """One bnb-serialized NF4 Linear of a folder: packed codes, float32 absmax (resolved), raw statistics."""

    def __init__(self, sd, p):
        self.packed = sd[f"{p}.weight"].reshape(-1)
        self.code = sd[f"{p}.weight.quant_map"]
        self.json = json.loads(bytes(sd[f"{p}.weight.{STATE}"].tolist()).decode())
        self.shape = list(self.json["shape"])
        self.absmax = sd[f"{p}.weight.absmax"]
        self.nested = "nested_blocksize" in self.json
        assert self.json["blocksize"] == BLOCK and self.json["dtype"] == "bfloat16", self.json
        assert self.shape[0] * self.shape[1] % BLOCK == 0, (p, self.shape)


def rows_slice(nf4: Nf4, first_row, n_rows):
    """(packed, float32 absmax) of rows [first_row, first_row + n_rows) of a non-nested NF4 weight."""
    k = nf4.shape[1]
    v0, v1 = first_row * k, (first_row + n_rows) * k
    assert v0 % BLOCK == 0 and v1 % BLOCK == 0
    return nf4.packed[v0 // 2:v1 // 2], nf4.absmax[v0 // BLOCK:v1 // BLOCK]


def fused_stack(plan_entry, nf4s):
    """(packed, float32 absmax, shape) of a BFL Linear, stacked from the non-nested folder's parts."""
    if plan_entry == "swap":
        w = nf4s["norm_out.linear"]
        half = w.shape[0] // 2
        pieces = [rows_slice(w, half, half), rows_slice(w, 0, half)]
        return (torch.cat([p for p, _ in pieces]), torch.cat([a for _, a in pieces]), list(w.shape))
    ws = [nf4s[p] for p in plan_entry]
    assert all(w.shape[1] == ws[0].shape[1] for w in ws)
    shape = [sum(w.shape[0] for w in ws), ws[0].shape[1]]
    return torch.cat([w.packed for w in ws]), torch.cat([w.absmax for w in ws]), shape


def quant_state(absmax, shape, code, double_quant):
    """The QuantState bnb quantize_4bit(W [shape], blocksize=64, nf4, compress_statistics) returns, given the
    per-block float32 absmax it computed."""
    if not double_quant:
        return QuantState(absmax=absmax.clone(), shape=torch.Size(shape), code=code.clone(), blocksize=BLOCK,
                          quant_type="nf4", dtype=torch.bfloat16)
    offset = absmax.mean()
    qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=256)
    return QuantState(absmax=qabsmax, shape=torch.Size(shape), code=code.clone(), blocksize=BLOCK, quant_type="nf4",
                      dtype=torch.bfloat16, offset=offset, state2=state2)


def serialize(out, p, packed, qs):
    out[f"{p}.weight"] = packed.reshape(-1, 1).contiguous()
    for k, v in qs.as_dict(packed=True).items():
        out[f"{p}.weight.{k}"] = v.contiguous()


def resolved_absmax(qs):
    """bnb dequantize_4bit's float32 absmax (dequantize_blockwise + offset when nested)."""
    if not qs.nested:
        return qs.absmax
    absmax = F.dequantize_blockwise(qs.absmax, qs.state2)
    absmax += qs.offset
    return absmax.float()


def same(name, a, b):
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
        raise RuntimeError(f"{name}: tensors differ")


def build(models: Path, version: int):
    double_quant = version == 1
    plain_dir, dq_dir = models / "tiny-flux-dev-nf4", models / "tiny-flux-dev-nf4-dq"
    name = "flux1-dev-bnb-nf4.safetensors" if version == 1 else "flux1-dev-bnb-nf4-v2.safetensors"
    out_dir = models / f"tiny-flux-dev-forge-nf4-v{version}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)

    plain = load_file(str(plain_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    dq = load_file(str(dq_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    cfg = json.loads((plain_dir / "transformer" / "config.json").read_text())
    linears = sorted(k[:-len(".weight." + STATE)] for k in plain if k.endswith(STATE))
    nf4s = {p: Nf4(plain, p) for p in linears}
    for p in linears:
        assert not nf4s[p].nested
        same(f"{p}: packed codes of the -nf4 and -nf4-dq folders", nf4s[p].packed, dq[f"{p}.weight"].reshape(-1))

    plan = linear_plan(cfg["num_layers"], cfg["num_single_layers"], cfg["guidance_embeds"])
    covered = sorted(d for entry in plan.values() for d in parts_of(entry))
    assert covered == linears, (set(covered) ^ set(linears))

    # Biases and norm scales: the dense BFL conversion of make_tiny_models on the non-Linear-weight tensors
    # (Linear weights stood in for by their dequantized values, then dropped).
    stand_in = {k: v for k, v in plain.items() if not any(k.startswith(p + ".weight") for p in linears)}
    for p in linears:
        stand_in[p + ".weight"] = torch.zeros(nf4s[p].shape, dtype=torch.bfloat16)
    dense_bfl = flux_to_bfl(stand_in)
    assert {k[:-len(".weight")] for k in dense_bfl if k.endswith(".weight") and k[:-7] in plan} == set(plan)

    forge, ref_transformer, ref_dequant = {}, {}, {}
    for k, v in dense_bfl.items():
        if not (k.endswith(".weight") and k[:-7] in plan):
            forge[f"model.diffusion_model.{k}"] = v
    for k, v in plain.items():
        if not any(k.startswith(p + ".weight") for p in linears):
            ref_transformer[k] = v
    code = nf4s[linears[0]].code
    for bfl, entry in plan.items():
        packed, absmax, shape = fused_stack(entry, nf4s)
        qs = quant_state(absmax, shape, code, double_quant)
        serialize(forge, f"model.diffusion_model.{bfl}", packed, qs)
        fused_dense = bnb_dequantize(packed.reshape(-1, 1), qs)  # [N, K] bf16, bnb's own values
        parts = parts_of(entry)
        if len(parts) == 1 and entry != "swap":
            # Not fused: the bytes must be the -dq / plain folder's own.
            src = dq if double_quant else plain
            for key, v in qs.as_dict(packed=True).items():
                same(f"{bfl} {key} vs {parts[0]}", v, src[f"{parts[0]}.weight.{key}"])
            serialize(ref_transformer, parts[0], packed, qs)
            ref_dequant[f"{parts[0]}.weight"] = fused_dense
            continue
        # Fused: rows of the Forge weight, as bnb serves them, with float32 absmax.
        full_absmax = resolved_absmax(qs)
        rows = [nf4s[d].shape[0] for d in parts] if entry != "swap" else [shape[0] // 2, shape[0] // 2]
        starts = [sum(rows[:i]) for i in range(len(rows))]
        names = parts if entry != "swap" else ["norm_out.linear/shift", "norm_out.linear/scale"]
        pieces = {}
        for d, r0, n in zip(names, starts, rows):
            v0, v1 = r0 * shape[1], (r0 + n) * shape[1]
            part_qs = QuantState(absmax=full_absmax[v0 // BLOCK:v1 // BLOCK].clone(), shape=torch.Size([n, shape[1]]),
                                 code=code.clone(), blocksize=BLOCK, quant_type="nf4", dtype=torch.bfloat16)
            pieces[d] = (packed[v0 // 2:v1 // 2].clone(), part_qs, fused_dense[r0:r0 + n])
        if entry == "swap":  # BFL (shift, scale) -> diffusers (scale, shift)
            (p_shift, q_shift, d_shift), (p_scale, q_scale, d_scale) = pieces.values()
            qs_swapped = QuantState(absmax=torch.cat([q_scale.absmax, q_shift.absmax]), shape=torch.Size(shape),
                                    code=code.clone(), blocksize=BLOCK, quant_type="nf4", dtype=torch.bfloat16)
            pieces = {"norm_out.linear": (torch.cat([p_scale, p_shift]), qs_swapped, torch.cat([d_scale, d_shift]))}
        for d, (p_packed, p_qs, p_dense) in pieces.items():
            serialize(ref_transformer, d, p_packed, p_qs)
            ref_dequant[f"{d}.weight"] = p_dense.contiguous()
            same(f"{d}: bnb dequantize of the split part vs rows of the fused weight",
                 bnb_dequantize(p_packed.reshape(-1, 1), p_qs), p_dense)
    if not double_quant:
        assert set(ref_transformer) == set(plain), set(ref_transformer) ^ set(plain)
        for k in plain:
            same(f"v2 reference transformer {k} vs tiny-flux-dev-nf4", ref_transformer[k], plain[k])

    # VAE (LDM), CLIP (fp16), T5 (fp8 e4m3fn), and their exact values for the reference folder.
    vae_sd = load_file(str(plain_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_cfg = json.loads((plain_dir / "vae" / "config.json").read_text())
    for k, v in vae_to_ldm(vae_sd, len(vae_cfg["block_out_channels"])).items():
        forge[f"vae.{k}"] = v
    ref_text = {}
    for sub, prefix, dtype in (("text_encoder", "text_encoders.clip_l.transformer.", torch.float16),
                               ("text_encoder_2", "text_encoders.t5xxl.transformer.", torch.float8_e4m3fn)):
        sd = load_file(str(plain_dir / sub / "model.safetensors"))
        ref_text[sub] = {}
        for k, v in sd.items():
            low = v.to(dtype)
            back = low.to(v.dtype)
            assert torch.isfinite(back).all(), k
            same(f"{sub} {k}: the rounded value survives in {v.dtype}", back.to(dtype).float(), low.float())
            forge[prefix + k] = low.contiguous()
            ref_text[sub][k] = back.contiguous()
    save_file(forge, str(out_dir / name))
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(plain_dir / sub, out_dir / sub)

    ref = out_dir / "reference"
    diff = ref / "diffusers"
    shutil.copytree(plain_dir, diff, ignore=shutil.ignore_patterns("reference", "transformer", "text_encoder",
                                                                   "text_encoder_2"))
    for sub in ("transformer", "text_encoder", "text_encoder_2"):
        (diff / sub).mkdir()
    shutil.copy(plain_dir / "transformer" / "config.json", diff / "transformer" / "config.json")
    save_file(ref_transformer, str(diff / "transformer" / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    for sub in ("text_encoder", "text_encoder_2"):
        shutil.copy(plain_dir / sub / "config.json", diff / sub / "config.json")
        save_file(ref_text[sub], str(diff / sub / "model.safetensors"), metadata={"format": "pt"})
    save_file(ref_dequant, str(ref / "nf4_reference.safetensors"),
              metadata={"bitsandbytes": bitsandbytes.__version__, "double_quant": str(double_quant).lower()})
    print(f"{out_dir / name}: {len(plan)} NF4 Linears, {len(forge)} tensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    args = ap.parse_args()
    if bitsandbytes.__version__ != PINNED_BNB:
        raise SystemExit(f"bitsandbytes {bitsandbytes.__version__} found, {PINNED_BNB} required")
    models = Path(args.models)
    build(models, 1)
    build(models, 2)


if __name__ == "__main__":
    main()
