#!/usr/bin/env python3
"""Writes a FLUX.1 pipeline with random weights in the diffusers folder layout.

Speed and memory do not depend on weight values, so GPU benchmarks run on full-size FLUX.1-dev shapes
made here (no machine can download the real weights). Components are built one at a time directly in
the target dtype on the chosen device and saved, so peak memory stays near one component.

  python3 scripts/bench/make_random_flux.py --out /tmp/flux-dev-random --tokenizers-from models/tiny-flux-dev
  python3 scripts/bench/make_random_flux.py --out /tmp/x --scale tiny --device cpu   # a quick self-check
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

FULL = dict(
    transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                     guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
              bos_token_id=0, eos_token_id=2, pad_token_id=1),
    t5=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
            layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=True,
            tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    vae=dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
             shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
             mid_block_add_attention=True),
)
# Same structure, small sizes: lets the script be checked on a CPU machine.
TINY = dict(
    transformer=dict(FULL["transformer"], num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    clip=dict(FULL["clip"], hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
              num_attention_heads=2),
    t5=dict(FULL["t5"], d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4),
    vae=dict(FULL["vae"], block_out_channels=(32, 32, 32, 32), norm_num_groups=8, layers_per_block=1),
)
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                 num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)


def build(name, ctor, dtype, device, out):
    t0 = time.time()
    torch.set_default_dtype(dtype)  # parameters are born in the target dtype: no fp32 copy of 12B params
    with torch.device(device):
        model = ctor()
    torch.set_default_dtype(torch.float32)
    model.to(dtype)
    model.save_pretrained(out / name, max_shard_size="10GB")
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n / 1e9:.3f} B params, saved in {time.time() - t0:.1f} s", flush=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizers-from", type=Path, help="a diffusers folder whose tokenizer/ and tokenizer_2/ are copied")
    ap.add_argument("--skip", nargs="*", default=[], help="components not to write (transformer text_encoder ...)")
    args = ap.parse_args()
    cfg = FULL if args.scale == "full" else TINY
    dtype = torch.bfloat16
    torch.manual_seed(0)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if "transformer" not in args.skip:
        build("transformer", lambda: FluxTransformer2DModel(**cfg["transformer"]), dtype, args.device, out)
    if "text_encoder" not in args.skip:
        build("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**cfg["clip"])), dtype, args.device, out)
    if "text_encoder_2" not in args.skip:
        build("text_encoder_2", lambda: T5EncoderModel(T5Config(**cfg["t5"])), dtype, args.device, out)
    if "vae" not in args.skip:
        build("vae", lambda: AutoencoderKL(**cfg["vae"]), dtype, args.device, out)
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    if args.tokenizers_from:
        for sub in ("tokenizer", "tokenizer_2"):
            shutil.copytree(args.tokenizers_from / sub, out / sub, dirs_exist_ok=True)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
