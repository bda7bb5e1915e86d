#!/usr/bin/env python3
"""Build tiny random-weight FLUX.1 pipelines for the fluxbatch tests (contract: GOLDEN.md).

Writes, under --out:
  tiny-flux-dev/       diffusers folder layout (model_index.json, transformer/, text_encoder/, text_encoder_2/,
                       tokenizer/, tokenizer_2/, vae/, scheduler/), bf16 weights, guidance_embeds true
  tiny-flux-schnell/   same layout, guidance_embeds false, schnell scheduler
  tiny-flux-dev-bfl/   the dev weights as BFL/ComfyUI single files + tokenizer/ and tokenizer_2/ copies

Everything is deterministic (fixed seeds, single-threaded sentencepiece training). Every parameter is perturbed
(norm weights around 1, non-zero biases) so a missing term in the C++ port changes the outputs.

Usage: /work/main/.venv/bin/python3 scripts/make_tiny_models.py --out models
"""
import argparse
import gzip
import inspect
import io
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import importlib.util  # noqa: E402
import sentencepiece as spm  # noqa: E402
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel  # noqa: E402
from transformers import T5TokenizerFast  # noqa: E402

DTYPE = torch.bfloat16
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_SPM_VOCAB = 1000
T5_EXTRA_IDS = 100


# ------------------------------------------------------------------------------------------------ tokenizers
def bytes_to_unicode():
    """GPT-2/CLIP byte -> printable unicode char table (same order as open_clip / transformers)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_bpe_merges():
    # open_clip is only a data carrier here (importing it needs torchvision): locate its package dir
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return lines[1 : 49152 - 256 - 2 + 1]  # the merges openai/clip-vit-large-patch14 keeps


def write_clip_tokenizer(dst: Path):
    """vocab.json + merges.txt exactly like openai/clip-vit-large-patch14 (49408 entries)."""
    merges = clip_bpe_merges()
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += [CLIP_BOS, CLIP_EOS]
    assert len(vocab) == 49408, len(vocab)
    encoder = {tok: i for i, tok in enumerate(vocab)}
    assert len(encoder) == 49408, "duplicate CLIP vocab entries"
    tmp = Path(tempfile.mkdtemp())
    (tmp / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(str(tmp), model_max_length=77)
    dst.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(dst))
    # keep the classic slow-tokenizer files (the C++ tokenizer reads these two)
    shutil.copy(tmp / "vocab.json", dst / "vocab.json")
    shutil.copy(tmp / "merges.txt", dst / "merges.txt")
    shutil.rmtree(tmp)
    # like the real FLUX.1 repos: no tokenizer.json for CLIP (transformers rebuilds it from vocab + merges)
    reference = tok("A Photo, of 2 cats!", padding="max_length", max_length=77, truncation=True).input_ids
    (dst / "tokenizer.json").unlink(missing_ok=True)
    write_special_tokens_map(dst, {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS,
                                   "pad_token": CLIP_EOS})
    check = CLIPTokenizer.from_pretrained(str(dst))
    ids = check("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[0] == 49406 and ids[1:5] == [320, 1125, 539, 320] and ids[6] == 49407, ids[:8]
    assert check("A Photo, of 2 cats!", padding="max_length", max_length=77, truncation=True).input_ids == reference
    return check


def write_special_tokens_map(dst: Path, tokens):
    (dst / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n", encoding="utf-8")


def t5_corpus(merges):
    """Deterministic English-ish corpus: words from the CLIP merges, plus digits, punctuation and accents."""
    rng = random.Random(1234)
    words = sorted({m.replace(" ", "")[:-4] for m in merges if m.endswith("</w>")})
    words = [w for w in words if w.isascii() and w.isalpha() and 2 <= len(w) <= 10][:6000]
    extra = ["café", "naïve", "résumé", "über", "señor", "garçon", "façade", "Zürich", "1024", "3.5", "2024",
             "(a)", "[b]", "x,", "y.", "z!", "why?", "it's", "don't", "e-mail", "50%", "$10", "#1", "a+b", "Photo",
             "The", "A", "HTML", "<b>", "</b>", "&amp;", "\"quote\"", "'single'", "semi;colon", "co:lon", "~", "_"]
    common = ("a an the of in on at with and photo painting portrait cat dog house tree city night sky red blue "
              "green white black light dark old young man woman girl boy car street mountain river sea forest "
              "flower bird style detailed high quality art digital oil canvas by from beautiful small large tall "
              "wide landscape sunset morning robot tower apple snow bridge window cloud water fire stone").split()
    rng.shuffle(words)
    vocab = common + [w for w in words if w not in common]
    weights = [1.0 / (r + 1) for r in range(len(vocab))]  # Zipf-like, so frequent words become whole pieces
    lines = []
    for _ in range(4000):
        n = rng.randint(4, 14)
        ws = rng.choices(vocab, weights, k=n)
        ws = [w if rng.random() > 0.15 else rng.choice(extra) for w in ws]
        if rng.random() < 0.3:
            ws[0] = ws[0].capitalize()
        lines.append(" ".join(ws))
    return lines


def write_t5_tokenizer(dst: Path, merges):
    tmp = Path(tempfile.mkdtemp())
    model = io.BytesIO()  # in-memory training: no temp paths end up in the model's trainer_spec
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t5_corpus(merges)), model_writer=model, vocab_size=T5_SPM_VOCAB,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        normalization_rule_name="nmt_nfkc", num_threads=1, seed_sentencepiece_size=20000, minloglevel=2,
        shuffle_input_sentence=False)
    src = tmp / "spiece"
    Path(str(src) + ".model").write_bytes(model.getvalue())
    (tmp / "tok").mkdir()
    shutil.copy(str(src) + ".model", tmp / "tok" / "spiece.model")
    tok = T5TokenizerFast.from_pretrained(str(tmp / "tok"), model_max_length=512, legacy=False)
    dst.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(dst))
    shutil.copy(str(src) + ".model", dst / "spiece.model")
    write_special_tokens_map(dst, {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                                   "additional_special_tokens": [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]})
    shutil.rmtree(tmp)
    check = T5TokenizerFast.from_pretrained(str(dst))
    assert check.pad_token_id == 0 and check.eos_token_id == 1 and check.unk_token_id == 2
    assert len(check) == T5_SPM_VOCAB + T5_EXTRA_IDS, len(check)
    return check


# ------------------------------------------------------------------------------------------------ models
def is_norm_module(m: torch.nn.Module) -> bool:
    # LayerNorm / GroupNorm / RMSNorm of torch, diffusers' RMSNorm, transformers' T5LayerNorm
    return isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)) or "Norm" in type(m).__name__ \
        and not any(True for _ in m.children())


def perturb(module: torch.nn.Module, seed: int):
    """Make every parameter non-trivial: norm weights ~1, biases ~0.05, other weights default init + noise."""
    g = torch.Generator().manual_seed(seed)
    norm_params = {f"{mn}.{pn}" if mn else pn for mn, m in module.named_modules() if is_norm_module(m)
                   for pn, _ in m.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name in norm_params and leaf != "bias":
                p.copy_(1.0 + 0.1 * noise)
            elif leaf == "bias":
                p.copy_(0.05 * noise)
            else:
                std = p.float().std().item() if p.numel() > 1 else 0.0
                p.add_(max(0.3 * std, 0.02) * noise)
    return module


def build_transformer(guidance: bool, seed: int):
    torch.manual_seed(seed)
    m = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=guidance, axes_dims_rope=[4, 6, 6])
    return perturb(m, seed + 1)


def build_clip(seed: int):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=2, pad_token_id=1)  # legacy ids, as in FLUX.1's text_encoder/config.json
    return perturb(CLIPTextModel(cfg), seed + 1)


def build_t5(seed: int, vocab_size: int):
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return perturb(T5EncoderModel(cfg), seed + 1)


def build_vae(seed: int):
    torch.manual_seed(seed)
    m = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 64, 64], layers_per_block=1,
        act_fn="silu", latent_channels=16, norm_num_groups=8, sample_size=64, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
        force_upcast=True)
    return perturb(m, seed + 1)


def build_scheduler(schnell: bool):
    if schnell:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False,
                                               base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                               max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096)


def build_pipeline(dst: Path, schnell: bool, seed: int, tok_dir: Path):
    clip_tok = CLIPTokenizer.from_pretrained(str(tok_dir / "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(str(tok_dir / "tokenizer_2"))
    pipe = FluxPipeline(
        scheduler=build_scheduler(schnell), vae=build_vae(seed + 10).to(DTYPE),
        text_encoder=build_clip(seed + 20).to(DTYPE), tokenizer=clip_tok,
        text_encoder_2=build_t5(seed + 30, len(t5_tok)).to(DTYPE), tokenizer_2=t5_tok,
        transformer=build_transformer(not schnell, seed + 40).to(DTYPE))
    if dst.exists():
        shutil.rmtree(dst)
    pipe.save_pretrained(str(dst), safe_serialization=True)
    restore_clip_prefix(dst / "text_encoder", pipe.text_encoder)
    # the tokenizer folders we wrote carry vocab.json/merges.txt/spiece.model; make sure they survive as-is
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(dst / sub)
        shutil.copytree(tok_dir / sub, dst / sub)


def restore_clip_prefix(folder: Path, model):
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix that every published checkpoint
    (FLUX.1 text_encoder/, clip_l.safetensors) has; store the published naming and check it still loads."""
    path = folder / "model.safetensors"
    sd = load_file(str(path))
    if all(k.startswith("text_model.") for k in sd):
        return
    save_file({f"text_model.{k}": v for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    loaded = CLIPTextModel.from_pretrained(str(folder), torch_dtype=DTYPE)
    assert_same("CLIP text_model. prefix reload", loaded.state_dict(), model.state_dict())


# ------------------------------------------------------------------------------------------------ BFL single files
def flux_to_bfl(sd):
    """Inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers."""
    sd = dict(sd)
    out = {}

    def take(dst, src):
        out[dst] = sd.pop(src)

    def swap_halves(w):  # diffusers (scale, shift) -> BFL (shift, scale); the swap is its own inverse
        a, b = w.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    for bfl, dif in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                     ("guidance_in", "guidance_embedder")):
        if f"time_text_embed.{dif}.linear_1.weight" not in sd:
            continue
        for bl, dl in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for t in ("weight", "bias"):
                take(f"{bfl}.{bl}.{t}", f"time_text_embed.{dif}.{dl}.{t}")
    for t in ("weight", "bias"):
        take(f"txt_in.{t}", f"context_embedder.{t}")
        take(f"img_in.{t}", f"x_embedder.{t}")
    n_double = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    n_single = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
    for i in range(n_double):
        p, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for t in ("weight", "bias"):
            take(f"{b}img_mod.lin.{t}", f"{p}norm1.linear.{t}")
            take(f"{b}txt_mod.lin.{t}", f"{p}norm1_context.linear.{t}")
            out[f"{b}img_attn.qkv.{t}"] = torch.cat([sd.pop(f"{p}attn.to_{x}.{t}") for x in "qkv"], dim=0)
            out[f"{b}txt_attn.qkv.{t}"] = torch.cat([sd.pop(f"{p}attn.add_{x}_proj.{t}") for x in "qkv"], dim=0)
            take(f"{b}img_mlp.0.{t}", f"{p}ff.net.0.proj.{t}")
            take(f"{b}img_mlp.2.{t}", f"{p}ff.net.2.{t}")
            take(f"{b}txt_mlp.0.{t}", f"{p}ff_context.net.0.proj.{t}")
            take(f"{b}txt_mlp.2.{t}", f"{p}ff_context.net.2.{t}")
            take(f"{b}img_attn.proj.{t}", f"{p}attn.to_out.0.{t}")
            take(f"{b}txt_attn.proj.{t}", f"{p}attn.to_add_out.{t}")
        take(f"{b}img_attn.norm.query_norm.scale", f"{p}attn.norm_q.weight")
        take(f"{b}img_attn.norm.key_norm.scale", f"{p}attn.norm_k.weight")
        take(f"{b}txt_attn.norm.query_norm.scale", f"{p}attn.norm_added_q.weight")
        take(f"{b}txt_attn.norm.key_norm.scale", f"{p}attn.norm_added_k.weight")
    for i in range(n_single):
        p, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for t in ("weight", "bias"):
            take(f"{b}modulation.lin.{t}", f"{p}norm.linear.{t}")
            out[f"{b}linear1.{t}"] = torch.cat(
                [sd.pop(f"{p}attn.to_{x}.{t}") for x in "qkv"] + [sd.pop(f"{p}proj_mlp.{t}")], dim=0)
            take(f"{b}linear2.{t}", f"{p}proj_out.{t}")
        take(f"{b}norm.query_norm.scale", f"{p}attn.norm_q.weight")
        take(f"{b}norm.key_norm.scale", f"{p}attn.norm_k.weight")
    for t in ("weight", "bias"):
        take(f"final_layer.linear.{t}", f"proj_out.{t}")
        out[f"final_layer.adaLN_modulation.1.{t}"] = swap_halves(sd.pop(f"norm_out.linear.{t}"))
    if sd:
        raise RuntimeError(f"flux_to_bfl: unmapped diffusers keys {sorted(sd)}")
    return {k: v.contiguous() for k, v in out.items()}


def vae_to_ldm(sd, n_blocks):
    """Inverse of diffusers' convert_ldm_vae_checkpoint (BFL ae.safetensors naming, no prefix)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        side = parts[0]  # encoder / decoder
        rest = ".".join(parts[1:])
        if rest.startswith("conv_norm_out."):
            rest = "norm_out." + rest[len("conv_norm_out."):]
        elif rest.startswith("down_blocks."):
            i = parts[2]
            tail = ".".join(parts[3:])
            if tail.startswith("resnets."):
                rest = f"down.{i}.block." + tail[len("resnets."):]
            else:
                rest = f"down.{i}.downsample." + tail[len("downsamplers.0."):]
        elif rest.startswith("up_blocks."):
            i = n_blocks - 1 - int(parts[2])
            tail = ".".join(parts[3:])
            if tail.startswith("resnets."):
                rest = f"up.{i}.block." + tail[len("resnets."):]
            else:
                rest = f"up.{i}.upsample." + tail[len("upsamplers.0."):]
        elif rest.startswith("mid_block.resnets."):
            j = int(parts[3])
            rest = f"mid.block_{j + 1}." + ".".join(parts[4:])
        elif rest.startswith("mid_block.attentions.0."):
            tail = ".".join(parts[4:])
            tail = {"group_norm.weight": "norm.weight", "group_norm.bias": "norm.bias",
                    "to_q.weight": "q.weight", "to_q.bias": "q.bias", "to_k.weight": "k.weight",
                    "to_k.bias": "k.bias", "to_v.weight": "v.weight", "to_v.bias": "v.bias",
                    "to_out.0.weight": "proj_out.weight", "to_out.0.bias": "proj_out.bias"}[tail]
            if tail.endswith("weight") and not tail.startswith("norm") and v.ndim == 2:
                v = v[:, :, None, None]  # LDM stores the attention projections as 1x1 convs
            rest = "mid.attn_1." + tail
        rest = rest.replace("conv_shortcut", "nin_shortcut")
        out[f"{side}.{rest}"] = v.contiguous()
    return out


def diffusers_flux_converter():
    """diffusers' own BFL->diffusers function; it hard-codes FLUX.1's inner_dim 3072, so read it from the
    checkpoint instead (the only change) to let it run on the tiny model."""
    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    needle = "    inner_dim = 3072\n"
    if src.count(needle) != 1:
        raise RuntimeError("diffusers convert_flux_transformer_checkpoint_to_diffusers changed; update the patch")
    src = src.replace(needle, "    inner_dim = checkpoint['img_in.weight'].shape[0]\n")
    ns = dict(vars(sfu))
    exec(compile(src, sfu.__file__, "exec"), ns)
    return ns["convert_flux_transformer_checkpoint_to_diffusers"]


def assert_same(name, a, b):
    if set(a) != set(b):
        raise RuntimeError(f"{name}: key sets differ: only-left {sorted(set(a) - set(b))[:10]}, "
                           f"only-right {sorted(set(b) - set(a))[:10]}")
    for k in a:
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]):
            raise RuntimeError(f"{name}: tensor {k} differs after round trip")


def write_bfl(dev_dir: Path, dst: Path):
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    tr = load_file(str(dev_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    bfl = flux_to_bfl(tr)
    back = diffusers_flux_converter()({k: v.clone() for k, v in bfl.items()})
    assert_same("flux transformer BFL round trip", back, tr)
    save_file(bfl, str(dst / "flux1-tiny-dev.safetensors"), metadata={"format": "pt"})

    vae_sd = load_file(str(dev_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_cfg = json.loads((dev_dir / "vae" / "config.json").read_text())
    ldm = vae_to_ldm(vae_sd, len(vae_cfg["block_out_channels"]))
    back = sfu.convert_ldm_vae_checkpoint({k: v.clone() for k, v in ldm.items()}, vae_cfg)
    assert_same("VAE LDM round trip", back, vae_sd)
    save_file(ldm, str(dst / "ae.safetensors"), metadata={"format": "pt"})

    clip = load_file(str(dev_dir / "text_encoder" / "model.safetensors"))
    assert all(k.startswith("text_model.") for k in clip), sorted(clip)[:5]
    save_file(clip, str(dst / "clip_l.safetensors"), metadata={"format": "pt"})
    t5 = load_file(str(dev_dir / "text_encoder_2" / "model.safetensors"))
    assert "shared.weight" in t5 and all(k == "shared.weight" or k.startswith("encoder.") for k in t5), sorted(t5)[:5]
    save_file(t5, str(dst / "t5xxl.safetensors"), metadata={"format": "pt"})
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(dev_dir / sub, dst / sub)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tempfile.mkdtemp())
    try:
        write_clip_tokenizer(tok_dir / "tokenizer")
        write_t5_tokenizer(tok_dir / "tokenizer_2", clip_bpe_merges())
        build_pipeline(out / "tiny-flux-dev", schnell=False, seed=100, tok_dir=tok_dir)
        build_pipeline(out / "tiny-flux-schnell", schnell=True, seed=200, tok_dir=tok_dir)
        write_bfl(out / "tiny-flux-dev", out / "tiny-flux-dev-bfl")
    finally:
        shutil.rmtree(tok_dir, ignore_errors=True)
    print(f"tiny models written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
