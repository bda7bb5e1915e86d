#!/usr/bin/env python3
"""Dump the golden reference outputs of the tiny FLUX pipelines (contract: GOLDEN.md).

Everything runs in fp32 on CPU with diffusers' FluxPipeline and its components, loaded from the folders that
scripts/make_tiny_models.py wrote. Output layout under --out:
  tokens.json                        CLIP / T5 token ids of edge-case texts
  cases.json                         the full-pipeline cases (prompts, seeds, sizes, steps, ...)
  <variant>/clip.safetensors         CLIP text encoder in/out
  <variant>/t5.safetensors           T5 encoder in/out (no attention mask, like the pipeline)
  <variant>/transformer.safetensors  one transformer forward on random inputs
  <variant>/vae.safetensors          one vae.decode on random latents
  <variant>/case_<k>.safetensors     full pipeline run k (noise, sigmas, per-step latents, images)

Usage: /work/main/.venv/bin/python3 scripts/dump_reference.py --models models --out tests/golden
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from diffusers import FluxPipeline  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTokenizer, T5TokenizerFast  # noqa: E402
from transformers.utils import logging as tlogging  # noqa: E402

dlogging.set_verbosity_error()
dlogging.disable_progress_bar()
tlogging.set_verbosity_error()

VARIANTS = {"dev": "tiny-flux-dev", "schnell": "tiny-flux-schnell"}
T5_LEN = {"dev": 512, "schnell": 256}

LONG_PROMPT = ("A highly detailed matte painting of an ancient city built into the side of a colossal waterfall at "
               "sunset, with golden light streaming through mist, tiny figures crossing rope bridges, lush green "
               "vines hanging from carved stone towers, flocks of white birds circling overhead, dramatic clouds, "
               "volumetric lighting, ultra wide angle, trending on artstation, by several famous concept artists, "
               "8k resolution, intricate architecture, reflections in the pools below, a lone traveler in a red "
               "cloak standing on a cliff edge in the foreground looking at the view")

TEXTS = [
    "",
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "a photo of a cat.",
    "Café naïve résumé à la crème brûlée",
    "Zürich Straße Ærøskøbing ØRESUND",
    "東京の夜景、ネオンサイン",
    "Ελληνικά και Русский текст",
    "emoji 🐱🚀 test ❤️ 👩‍👩‍👧",
    "Hello, world! How's it going? I'm fine; you're great. We'll see, they'd say, I've done it.",
    "numbers 12345 and 3.14159 and 1,000,000 and 2024-06-01",
    "multiple   spaces\tand\nnewlines\n\n end",
    "   leading and trailing spaces   ",
    "<b>bold</b> &amp; <i>html</i> <a href=\"x.html\">link</a>",
    "snake_case-and-kebab--case__double",
    "quotes \"double\" 'single' `back` «guillemets» “curly”",
    "e\u0301galite\u0301 combining accents and ﬁ ligature and ½ fraction",
    "İstanbul ǅemal ΣΊΣΥΦΟΣ",
    "non\u00a0breaking\u2003em space\u200bzero width",
    "$100 @user #hashtag 50% a+b=c x*y/z ~tilde~ |pipe| \\backslash",
    "!!!???...,,,;;;",
    "a" * 120,
    LONG_PROMPT,
    LONG_PROMPT + " " + LONG_PROMPT + " " + LONG_PROMPT,
    "a<|endoftext|>b",
    "a <|startoftext|> b",
    "x <|ENDOFTEXT|> y",
    "<|endoftext|>",
]


def fuzz_texts(n=48):
    """Deterministic random strings over scripts, combining marks, Hangul jamo, whitespace and special casings."""
    import random
    rng = random.Random(7)
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x300, 0x370), range(0x370, 0x530),
             range(0x1E00, 0x1F00), range(0x2000, 0x2070), range(0x3000, 0x3100), range(0x4E00, 0x4E80),
             range(0x1F300, 0x1F700), range(0xAC00, 0xAC40), range(0x1100, 0x1176), range(0x11A8, 0x11C3),
             [9, 10, 13, 0x85, 0x130, 0x3A3, 0x1E9E, 0xFB01, 0x212B, 0x2126, 0x0344, 0x0F73, 0x1D15E, 0x2ADC]]
    return ["".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(1, 30))) for _ in range(n)]


FUZZ = fuzz_texts()
T5_ONLY = [
    "<extra_id_0> sentinel and </s> eos in text",
    "pad <pad> unk <unk>",
    "Don't   stop",
    " leading space",
]


def dump_tokens(models: Path, out: Path):
    tok_dir = models / VARIANTS["dev"]
    clip = CLIPTokenizer.from_pretrained(str(tok_dir / "tokenizer"))
    t5 = T5TokenizerFast.from_pretrained(str(tok_dir / "tokenizer_2"))
    res = {"clip": [], "t5": []}
    for text in TEXTS + FUZZ:
        ids = clip(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77
        res["clip"].append({"text": text, "ids": ids})
    very_long = " ".join([LONG_PROMPT] * 6)
    for text in TEXTS + T5_ONLY + [very_long]:
        for n in (512, 256, 16):
            if n == 256 and text not in (LONG_PROMPT, very_long, "a photo of a cat"):
                continue
            ids = t5(text, padding="max_length", max_length=n, truncation=True).input_ids
            assert len(ids) == n
            res["t5"].append({"text": text, "max_length": n, "ids": ids})
    for text in FUZZ:
        ids = t5(text, padding="max_length", max_length=64, truncation=True).input_ids
        res["t5"].append({"text": text, "max_length": 64, "ids": ids})
    (out / "tokens.json").write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return res


def tok_clip(pipe, prompts):
    return pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids


def tok_t5(pipe, prompts, n):
    return pipe.tokenizer_2(prompts, padding="max_length", max_length=n, truncation=True,
                            return_tensors="pt").input_ids


ENCODER_PROMPTS = ["a photo of a cat", "Café naïve résumé, 東京 🐱", LONG_PROMPT]


@torch.no_grad()
def dump_components(pipe, variant: str, out: Path):
    ids = tok_clip(pipe, ENCODER_PROMPTS)
    o = pipe.text_encoder(ids, output_hidden_states=False)
    save_file({"input_ids": ids.contiguous(), "last_hidden_state": o.last_hidden_state.contiguous(),
               "pooler_output": o.pooler_output.contiguous()}, str(out / "clip.safetensors"))

    ids = tok_t5(pipe, ENCODER_PROMPTS, T5_LEN[variant])
    h = pipe.text_encoder_2(ids, output_hidden_states=False)[0]
    save_file({"input_ids": ids.contiguous(), "last_hidden_state": h.contiguous()}, str(out / "t5.safetensors"))

    g = torch.Generator().manual_seed(1000 + len(variant))
    tr = pipe.transformer
    b, lh, lw, l_txt = 2, 4, 6, 24  # packed latent grid 4x6 (a 64x96 image), 24 text tokens
    cfg = tr.config
    inputs = {
        "hidden_states": torch.randn(b, lh * lw, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(b, l_txt, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(b, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.75, 0.2]),
        "img_ids": pipe._prepare_latent_image_ids(b, lh, lw, "cpu", torch.float32),
        "txt_ids": torch.zeros(l_txt, 3),
    }
    if cfg.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5, 5.0])
    y = tr(**inputs, return_dict=False)[0]
    save_file({**{k: v.contiguous() for k, v in inputs.items()}, "output": y.contiguous()},
              str(out / "transformer.safetensors"))

    lat = torch.randn(2, pipe.vae.config.latent_channels, 6, 10, generator=g)
    sample = pipe.vae.decode(lat, return_dict=False)[0]
    save_file({"latents": lat.contiguous(), "sample": sample.contiguous()}, str(out / "vae.safetensors"))


CASES = [
    # variant, prompts, seeds, width, height, steps, guidance
    ("dev", ["a photo of a cat", "A painting of a red house at night, oil on canvas"], [0, 1], 64, 64, 4, 3.5),
    ("dev", ["a wide landscape with mountains", "portrait of a robot"], [42, 7], 80, 48, 4, 4.0),
    ("dev", ["same prompt, different seeds", "same prompt, different seeds"], [3, 4], 64, 64, 4, 3.5),
    # batch independence: case 3 renders seed 5 alone, case 4 renders it at index 2 of a batch of 4
    ("dev", ["a blue bird on a branch"], [5], 48, 32, 4, 3.5),
    ("dev", ["a green apple", "a tall tower", "a blue bird on a branch", "snow"], [11, 12, 5, 13], 48, 32, 4, 3.5),
    ("schnell", ["a photo of a cat", "Café naïve résumé, 東京 🐱"], [0, 9], 64, 64, 4, 0.0),
]


@torch.no_grad()
def run_case(pipe, variant, prompts, seeds, width, height, steps, guidance):
    captured = {}
    orig_prepare, orig_encode, orig_decode = pipe.prepare_latents, pipe.encode_prompt, pipe.vae.decode

    def prepare_latents(*a, **kw):
        latents, ids = orig_prepare(*a, **kw)
        captured["noise"], captured["latent_image_ids"] = latents.clone(), ids.clone()
        return latents, ids

    def encode_prompt(*a, **kw):
        pe, pooled, text_ids = orig_encode(*a, **kw)
        captured["prompt_embeds"], captured["pooled_prompt_embeds"] = pe.clone(), pooled.clone()
        captured["text_ids"] = text_ids.clone()
        return pe, pooled, text_ids

    def decode(*a, **kw):
        r = orig_decode(*a, **kw)
        captured["image_float"] = (r[0] if isinstance(r, tuple) else r.sample).clone()
        return r

    def on_step(_pipe, i, _t, kw):
        captured[f"latents_{i}"] = kw["latents"].clone()
        return {}

    pipe.prepare_latents, pipe.encode_prompt, pipe.vae.decode = prepare_latents, encode_prompt, decode
    try:
        images = pipe(prompt=prompts, width=width, height=height, num_inference_steps=steps,
                      guidance_scale=guidance, max_sequence_length=T5_LEN[variant],
                      generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pil",
                      callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"]).images
    finally:
        del pipe.prepare_latents, pipe.encode_prompt, pipe.vae.decode
    captured["sigmas"] = pipe.scheduler.sigmas.clone().float()
    captured["timesteps"] = pipe.scheduler.timesteps.clone().float()
    captured["image_uint8"] = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))
    assert captured["sigmas"].shape[0] == steps + 1 and all(f"latents_{i}" in captured for i in range(steps))
    return {k: v.contiguous() for k, v in captured.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    models, out = Path(args.models), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        shutil.rmtree(out / variant, ignore_errors=True)
    dump_tokens(models, out)

    pipes = {}
    for variant, folder in VARIANTS.items():
        pipes[variant] = FluxPipeline.from_pretrained(str(models / folder), torch_dtype=torch.float32)
        pipes[variant].set_progress_bar_config(disable=True)
        (out / variant).mkdir(parents=True, exist_ok=True)
        dump_components(pipes[variant], variant, out / variant)

    listing = []
    for k, (variant, prompts, seeds, width, height, steps, guidance) in enumerate(CASES):
        tensors = run_case(pipes[variant], variant, prompts, seeds, width, height, steps, guidance)
        rel = f"{variant}/case_{k}.safetensors"
        save_file(tensors, str(out / rel))
        listing.append({"index": k, "variant": variant, "model": VARIANTS[variant], "file": rel,
                        "prompts": prompts, "seeds": seeds, "width": width, "height": height, "steps": steps,
                        "guidance": guidance, "max_sequence_length": T5_LEN[variant]})
    (out / "cases.json").write_text(json.dumps({"cases": listing}, ensure_ascii=False, indent=1) + "\n",
                                    encoding="utf-8")
    print(f"golden files written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
