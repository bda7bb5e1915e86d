#!/usr/bin/env python3
"""Writes the binary overlay files of the hostile model corpus (tests/data/hostile-models/*/overlay/).

The corpus is committed; this script documents how its synthetic safetensors files were made and
rewrites them byte for byte. Each case directory holds case.json (what tests/app/test_cli_hostile_models.cpp
does with it) and overlay/ (files laid over a copy of the base model). Plain Python, no torch.

Usage: python3 tests/data/hostile-models/make_overlays.py
"""
import json
import os
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent


def safetensors(tensors, declared_end=None):
    """tensors: name -> (dtype, shape, nbytes of zero data). declared_end: claim more data than written."""
    header, offset = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        end = offset + nbytes
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    data = bytes(offset if declared_end is None else min(offset, declared_end))
    return struct.pack("<Q", len(text)) + text + data


def write(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    t = HERE / "truncated-shard" / "overlay" / "transformer"
    write(t / "diffusion_pytorch_model-00001-of-00002.safetensors",
          safetensors({"x_embedder.bias": ("BF16", [64], 128)}))
    # The second shard stops 4 KiB short of what its header promises (an interrupted download).
    write(t / "diffusion_pytorch_model-00002-of-00002.safetensors",
          safetensors({"x_embedder.weight": ("BF16", [64, 64], 8192)}, declared_end=4096))
    write(t / "diffusion_pytorch_model.safetensors.index.json", json.dumps({
        "metadata": {"total_size": 8320},
        "weight_map": {"x_embedder.bias": "diffusion_pytorch_model-00001-of-00002.safetensors",
                       "x_embedder.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}}, indent=2) + "\n")

    write(HERE / "index-outside-folder" / "overlay" / "transformer" / "diffusion_pytorch_model.safetensors.index.json",
          json.dumps({"weight_map": {"x_embedder.weight": "../vae/diffusion_pytorch_model.safetensors"}}, indent=2) + "\n")

    link = HERE / "symlink-loop" / "overlay" / "transformer" / "diffusion_pytorch_model.safetensors"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink("diffusion_pytorch_model.safetensors", link)

    # Zero values, so the file is tiny, but a dimension of 2^62.
    write(HERE / "absurd-shape" / "overlay" / "text_encoder_2" / "model.safetensors",
          safetensors({"shared.weight": ("BF16", [0, 4611686018427387904], 0)}))

    t5 = HERE / "mixed-t5-width" / "overlay" / "text_encoder_2"
    write(t5 / "model.safetensors", safetensors({"shared.weight": ("BF16", [16, 48], 16 * 48 * 2)}))
    clip = HERE / "mixed-clip-width" / "overlay" / "text_encoder"
    write(clip / "model.safetensors",
          safetensors({"text_model.embeddings.token_embedding.weight": ("BF16", [16, 48], 16 * 48 * 2)}))
    short = HERE / "clip-short-positions" / "overlay" / "text_encoder"
    write(short / "model.safetensors",
          safetensors({"text_model.embeddings.position_embedding.weight": ("BF16", [16, 32], 16 * 32 * 2),
                       "text_model.embeddings.token_embedding.weight": ("BF16", [16, 32], 16 * 32 * 2)}))
    vae = HERE / "mixed-vae-channels" / "overlay" / "vae"
    write(vae / "diffusion_pytorch_model.safetensors",
          safetensors({"decoder.conv_in.weight": ("BF16", [8, 4, 3, 3], 8 * 4 * 9 * 2)}))


if __name__ == "__main__":
    main()
