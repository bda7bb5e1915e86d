#!/usr/bin/env python3
"""LoRA files for the tiny FLUX.1-dev model and diffusers' images with them, for tests/runtime [lora].

Writes <models>/loras/ (needs tiny-flux-dev and tiny-flux-dev-nf4 from make_tiny_models.py / make_nf4_models.py):
  peft_a.safetensors   diffusers/PEFT keys ("transformer.<module>.lora_A/lora_B.weight") on every Linear of the
                       transformer, rank 4, an "alpha" key per module (2: scale 0.5), plus CLIP text-encoder
                       LoRAs ("text_encoder.text_model.encoder.layers.N...", no alpha)
  peft_b.safetensors   diffusers/PEFT, rank 2, attention projections only, no alpha
  kohya.safetensors    Kohya/sd-scripts keys ("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", ".alpha")
                       on every BFL layer (fused qkv, single-block linear1, final adaLN, embedders) plus "lora_te1_"
  xlabs.safetensors    XLabs keys ("double_blocks.0.processor.qkv_lora1.down.weight"), both block kinds
  foreign.safetensors  a PEFT LoRA naming a block the tiny model lacks and a key no format knows (strict errors)
  reference.safetensors  "<case>": the VAE output [2, 3, 64, 64] of diffusers' FluxPipeline (fp32, CPU) with
                       pipe.load_lora_weights(...) + set_adapters(..., adapter_weights) for each case of CASES
                       (metadata "cases": JSON), and "none": the same without LoRA.

Kohya files: diffusers' converter hard-codes FLUX.1's sizes for the single blocks' linear1 (dims 3072 x 3 + 12288),
which the tiny model does not have, and (0.42.1) names the LoRAs of img_in, txt_in, time_in, vector_in, guidance_in
and the final layer without the "transformer." prefix, so load_lora_weights silently drops them. The reference
therefore loads the Kohya file as converted by kohya_to_peft below: diffusers' _convert_sd_scripts_to_ai_toolkit with
the sizes taken from the tensors and the prefix kept; the script checks that it gives exactly what diffusers' own
converter gives (up to that prefix) on every key diffusers can convert for this model.

NF4 case: like make_nf4_models.py, diffusers' pipeline with every Linear of the transformer holding bitsandbytes'
dequantize_4bit(W) of tiny-flux-dev-nf4 (bnb MatMul4Bit's formula) and the rest as that folder stores it; the
LoRA's PEFT layers wrap those Linears as they wrap bnb's Linear4bit.

Usage: PYTHONPATH=... .venv/bin/python3 scripts/make_lora_fixtures.py [--models models]   (needs peft)
"""
import argparse
import json
import logging
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

from diffusers import FluxPipeline  # noqa: E402
from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

CASE = {"prompts": ["a photo of a cat", "A painting of a red house at night, oil on canvas"], "seeds": [0, 1],
        "width": 64, "height": 64, "steps": 4, "guidance": 3.5, "max_sequence_length": 512}
# name -> (base model folder, [(lora file, scale), ...])
CASES = {
    "peft_a": ("tiny-flux-dev", [("peft_a.safetensors", 0.8)]),
    "kohya": ("tiny-flux-dev", [("kohya.safetensors", 1.0)]),
    "xlabs": ("tiny-flux-dev", [("xlabs.safetensors", 1.0)]),
    "two": ("tiny-flux-dev", [("peft_a.safetensors", 0.7), ("peft_b.safetensors", -1.3)]),
    "nf4_peft_a": ("tiny-flux-dev-nf4", [("peft_a.safetensors", 0.8)]),
}
RANK = 4


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen) * 0.1


def linears(module):
    """name -> Linear, named as checkpoints name them (transformers 5's CLIPTextModel has no "text_model." level
    in its module tree, its checkpoints and LoRA files do)."""
    out = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    if not hasattr(module, "text_model") and any(n.startswith("encoder.layers.") for n in out):
        out = {"text_model." + n: m for n, m in out.items()}
    return out


def make_peft_a(pipe, gen):
    sd = {}
    for name, m in linears(pipe.transformer).items():
        sd[f"transformer.{name}.lora_A.weight"] = rand(gen, RANK, m.in_features)
        sd[f"transformer.{name}.lora_B.weight"] = rand(gen, m.out_features, RANK)
        sd[f"transformer.{name}.alpha"] = torch.tensor(2.0)
    for name, m in linears(pipe.text_encoder).items():
        if ".layers." not in name:
            continue
        sd[f"text_encoder.{name}.lora_A.weight"] = rand(gen, RANK, m.in_features)
        sd[f"text_encoder.{name}.lora_B.weight"] = rand(gen, m.out_features, RANK)
    return sd


def make_peft_b(pipe, gen):
    sd = {}
    for name, m in linears(pipe.transformer).items():
        if ".attn." in name:
            sd[f"transformer.{name}.lora_A.weight"] = rand(gen, 2, m.in_features)
            sd[f"transformer.{name}.lora_B.weight"] = rand(gen, m.out_features, 2)
    return sd


def make_kohya(pipe, gen):
    t = pipe.transformer
    dim = t.config.num_attention_heads * t.config.attention_head_dim
    mlp = 4 * dim
    shapes = {}  # kohya module -> (in, out)
    for i in range(t.config.num_layers):
        for s in ("img", "txt"):
            shapes[f"double_blocks_{i}_{s}_attn_qkv"] = (dim, 3 * dim)
            shapes[f"double_blocks_{i}_{s}_attn_proj"] = (dim, dim)
            shapes[f"double_blocks_{i}_{s}_mlp_0"] = (dim, mlp)
            shapes[f"double_blocks_{i}_{s}_mlp_2"] = (mlp, dim)
            shapes[f"double_blocks_{i}_{s}_mod_lin"] = (dim, 6 * dim)
    for i in range(t.config.num_single_layers):
        shapes[f"single_blocks_{i}_linear1"] = (dim, 3 * dim + mlp)
        shapes[f"single_blocks_{i}_linear2"] = (dim + mlp, dim)
        shapes[f"single_blocks_{i}_modulation_lin"] = (dim, 3 * dim)
    shapes["img_in"] = (t.config.in_channels, dim)
    shapes["txt_in"] = (t.config.joint_attention_dim, dim)
    shapes["time_in_in_layer"] = (256, dim)
    shapes["time_in_out_layer"] = (dim, dim)
    shapes["vector_in_in_layer"] = (t.config.pooled_projection_dim, dim)
    shapes["vector_in_out_layer"] = (dim, dim)
    shapes["guidance_in_in_layer"] = (256, dim)
    shapes["guidance_in_out_layer"] = (dim, dim)
    shapes["final_layer_linear"] = (dim, t.config.in_channels)
    shapes["final_layer_adaLN_modulation_1"] = (dim, 2 * dim)
    sd = {}
    for name, (i, o) in shapes.items():
        sd[f"lora_unet_{name}.lora_down.weight"] = rand(gen, RANK, i)
        sd[f"lora_unet_{name}.lora_up.weight"] = rand(gen, o, RANK)
        # diffusers ignores the final layer's alpha (its converter's "TODO: alphas"); alpha = rank is scale 1
        # either way, so the reference does not depend on that.
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(float(RANK) if "final_layer" in name else 2.0)
    for name, m in linears(pipe.text_encoder).items():
        if ".layers." not in name:
            continue
        key = "lora_te1_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = rand(gen, RANK, m.in_features)
        sd[f"{key}.lora_up.weight"] = rand(gen, m.out_features, RANK)
        sd[f"{key}.alpha"] = torch.tensor(8.0)  # scale 2: scale_down 2, scale_up 1
    return sd


def make_xlabs(pipe, gen):
    t = pipe.transformer
    dim = t.config.num_attention_heads * t.config.attention_head_dim
    sd = {}
    for i in range(t.config.num_layers):
        for n, (a, b) in {"qkv_lora1": (dim, 3 * dim), "proj_lora1": (dim, dim), "qkv_lora2": (dim, 3 * dim),
                          "proj_lora2": (dim, dim)}.items():
            sd[f"double_blocks.{i}.processor.{n}.down.weight"] = rand(gen, RANK, a)
            sd[f"double_blocks.{i}.processor.{n}.up.weight"] = rand(gen, b, RANK)
    for i in range(t.config.num_single_layers):
        sd[f"single_blocks.{i}.processor.qkv_lora.down.weight"] = rand(gen, RANK, dim)
        sd[f"single_blocks.{i}.processor.qkv_lora.up.weight"] = rand(gen, 3 * dim, RANK)
        sd[f"single_blocks.{i}.processor.proj_lora.down.weight"] = rand(gen, RANK, 5 * dim)
        sd[f"single_blocks.{i}.processor.proj_lora.up.weight"] = rand(gen, dim, RANK)
    return sd


def make_foreign(pipe, gen):
    dim = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    sd = {}
    for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.7.attn.to_q"):
        sd[f"transformer.{name}.lora_A.weight"] = rand(gen, RANK, dim)
        sd[f"transformer.{name}.lora_B.weight"] = rand(gen, dim, RANK)
    sd["transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector"] = rand(gen, dim)
    return sd


def kohya_to_peft(sd):
    """diffusers' _convert_sd_scripts_to_ai_toolkit with the fused layers' sizes read from the tensors."""
    sd = dict(sd)
    out = {}

    def fold(stem):
        down = sd.pop(stem + ".lora_down.weight")
        up = sd.pop(stem + ".lora_up.weight")
        rank = down.shape[0]
        alpha = sd.pop(stem + ".alpha", torch.tensor(float(rank))).item()
        if "final_layer" in stem:
            alpha = rank  # as diffusers: the final layer's alpha is not applied
        scale_down, scale_up = alpha / rank, 1.0
        while scale_down * 2 < scale_up:
            scale_down *= 2
            scale_up /= 2
        return down * scale_down, up * scale_up

    def put(stem, targets, dims=None):
        if stem + ".lora_down.weight" not in sd:
            return
        down, up = fold(stem)
        if "final_layer_adaLN" in stem:
            shift, scale = up.chunk(2, dim=0)
            up = torch.cat([scale, shift], dim=0)
        dims = dims or [up.shape[0] // len(targets)] * len(targets)
        for target, part in zip(targets, torch.split(up, dims, dim=0)):
            out[f"{target}.lora_A.weight"] = down
            out[f"{target}.lora_B.weight"] = part

    stems = sorted({k.rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0] for k in sd if k.startswith("lora_unet_")})
    for stem in stems:
        name = stem[len("lora_unet_"):]
        if name.startswith("double_blocks_"):
            i, rest = name[len("double_blocks_"):].split("_", 1)
            b = f"transformer.transformer_blocks.{i}."
            table = {"img_attn_proj": ["attn.to_out.0"], "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
                     "img_mlp_0": ["ff.net.0.proj"], "img_mlp_2": ["ff.net.2"], "img_mod_lin": ["norm1.linear"],
                     "txt_attn_proj": ["attn.to_add_out"],
                     "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                     "txt_mlp_0": ["ff_context.net.0.proj"], "txt_mlp_2": ["ff_context.net.2"],
                     "txt_mod_lin": ["norm1_context.linear"]}
            put(stem, [b + m for m in table[rest]])
        elif name.startswith("single_blocks_"):
            i, rest = name[len("single_blocks_"):].split("_", 1)
            b = f"transformer.single_transformer_blocks.{i}."
            if rest == "linear1":
                hidden = sd[stem + ".lora_down.weight"].shape[1]
                rows = sd[stem + ".lora_up.weight"].shape[0]
                put(stem, [b + "attn.to_q", b + "attn.to_k", b + "attn.to_v", b + "proj_mlp"],
                    [hidden, hidden, hidden, rows - 3 * hidden])
            else:
                put(stem, [b + {"linear2": "proj_out", "modulation_lin": "norm.linear"}[rest]])
        else:
            table = {"img_in": "x_embedder", "txt_in": "context_embedder",
                     "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
                     "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
                     "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
                     "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
                     "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
                     "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
                     "final_layer_linear": "proj_out", "final_layer_adaLN_modulation_1": "norm_out.linear"}
            put(stem, ["transformer." + table[name]])
    for stem in sorted({k.rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0] for k in sd if k.startswith("lora_te1_")}):
        # diffusers' text-encoder branch: lora_te1_text_model_encoder_layers_0_self_attn_q_proj
        rest = stem[len("lora_te1_text_model_encoder_layers_"):]
        i, layer = rest.split("_", 1)
        module = {"self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
                  "self_attn_v_proj": "self_attn.v_proj", "self_attn_out_proj": "self_attn.out_proj",
                  "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}[layer]
        down, up = fold(stem)
        out[f"text_encoder.text_model.encoder.layers.{i}.{module}.lora_A.weight"] = down
        out[f"text_encoder.text_model.encoder.layers.{i}.{module}.lora_B.weight"] = up
    assert not sd, f"unconverted keys: {sorted(sd)}"
    return out


def check_against_diffusers(kohya):
    """kohya_to_peft == diffusers' converter, on everything diffusers converts for this model (all but linear1)."""
    # Text-encoder keys are left out: diffusers names them in its older convention (to_q_lora.down) before
    # converting them to PEFT's, and folds alpha the same way as for the transformer.
    convertible = {k: v for k, v in kohya.items() if "_linear1" not in k and not k.startswith("lora_te")}
    theirs = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in convertible.items()})
    ours = kohya_to_peft({k: v.clone() for k, v in convertible.items()})
    # diffusers 0.42 names the embedders', final layer's and guidance LoRAs without the "transformer." prefix, so
    # load_lora_weights then drops them (they never reach the model); kohya_to_peft keeps the prefix.
    theirs = {k if k.startswith("transformer.") else "transformer." + k: v for k, v in theirs.items()}
    assert set(theirs) == set(ours), (sorted(set(theirs) ^ set(ours)))[:10]
    for k in theirs:
        assert torch.equal(theirs[k], ours[k]), k


def load_pipe(models: Path, base: str):
    if base == "tiny-flux-dev":
        pipe = FluxPipeline.from_pretrained(str(models / base), torch_dtype=torch.float32)
    else:  # NF4: the dense layout with bnb's dequantized weights (make_nf4_models.py's reference pipeline)
        pipe = FluxPipeline.from_pretrained(str(models / "tiny-flux-dev"), torch_dtype=torch.float32)
        stored = load_file(str(models / base / "transformer" / "diffusion_pytorch_model.safetensors"))
        dequantized = load_file(str(models / base / "reference" / "nf4_reference.safetensors"))
        with torch.no_grad():
            for key, param in pipe.transformer.named_parameters():
                source = dequantized[key] if key in dequantized else stored[key]
                param.copy_(source.to(torch.float32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render(pipe):
    captured = {}
    orig_decode = pipe.vae.decode

    def decode(*a, **kw):
        r = orig_decode(*a, **kw)
        captured["image"] = (r[0] if isinstance(r, tuple) else r.sample).clone()
        return r

    pipe.vae.decode = decode
    pipe(prompt=CASE["prompts"], width=CASE["width"], height=CASE["height"], num_inference_steps=CASE["steps"],
         guidance_scale=CASE["guidance"], max_sequence_length=CASE["max_sequence_length"],
         generator=[torch.Generator().manual_seed(s) for s in CASE["seeds"]], output_type="pil")
    pipe.vae.decode = orig_decode
    return captured["image"].contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    args = ap.parse_args()
    models = Path(args.models)
    out = models / "loras"
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    pipe = load_pipe(models, "tiny-flux-dev")
    files = {"peft_a.safetensors": make_peft_a(pipe, gen), "peft_b.safetensors": make_peft_b(pipe, gen),
             "kohya.safetensors": make_kohya(pipe, gen), "xlabs.safetensors": make_xlabs(pipe, gen),
             "foreign.safetensors": make_foreign(pipe, gen)}
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / name), metadata={"format": "pt"})
    check_against_diffusers(files["kohya.safetensors"])
    images = {"none": render(pipe)}
    for case, (base, loras) in CASES.items():
        pipe = load_pipe(models, base)
        names = []
        for i, (file, _) in enumerate(loras):
            source = kohya_to_peft(files[file]) if file == "kohya.safetensors" else str(out / file)
            pipe.load_lora_weights(source, adapter_name=f"l{i}")
            names.append(f"l{i}")
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
        images[case] = render(pipe)
        diff = (images[case] - images["none"]).abs().max().item() if base == "tiny-flux-dev" else float("nan")
        print(f"{case}: max |with LoRA - without| = {diff:.3f}")
    save_file(images, str(out / "reference.safetensors"),
              metadata={"case": json.dumps(CASE), "cases": json.dumps(CASES), "torch": torch.__version__})
    print(f"{out}: {len(files)} LoRA files, {len(images)} reference images")


if __name__ == "__main__":
    main()
