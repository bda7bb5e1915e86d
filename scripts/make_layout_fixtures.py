#!/usr/bin/env python3
"""Model folders in the layouts users download, made by the tools that write them (tests [layouts], [tokenizers]).

Writes, next to the existing tiny models (only adds folders):
  <models>/tiny-flux-dev-tf5/    FluxPipeline.from_pretrained(tiny-flux-dev).save_pretrained(...) with transformers 5:
                                 tokenizer/ and tokenizer_2/ hold tokenizer.json (+ tokenizer_config.json) only, no
                                 vocab.json / merges.txt / spiece.model; text_encoder/ is saved without the
                                 `text_model.` prefix. Must render exactly what tiny-flux-dev renders.
  <models>/tokenizer-json/<name>/tokenizer.json  the T5 tokenizer.json in the other normalizer / pre-tokenizer
                                 forms transformers' converters write (see VARIANTS), and
  <models>/tokenizer-json/tokens.json  HF tokenizers' ids for each variant on the golden texts of tokens.json plus
                                 texts where special tokens touch words (what prepend_scheme changes).

Usage: /work/main/.venv/bin/python3 scripts/make_layout_fixtures.py --models models --golden tests/golden
"""
import argparse
import copy
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

from diffusers import FluxPipeline  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers.utils import logging as tlogging  # noqa: E402

dlogging.set_verbosity_error()
dlogging.disable_progress_bar()
tlogging.set_verbosity_error()

METASPACE = "\u2581"
SPECIAL_TEXTS = ["a</s>b", "<extra_id_0>x y", "x<pad>y z", "</s>", "  <unk>  z", "<extra_id_5>Hello world</s>",
                 "word<extra_id_1>word", "\u2581already\u2581spaced", "nel\u0085split and\u3000ideographic",
                 "a  <extra_id_2>  b", "x \t</s>\n y", " <pad> "]


def write_tf5(models: Path):
    src, dst = models / "tiny-flux-dev", models / "tiny-flux-dev-tf5"
    pipe = FluxPipeline.from_pretrained(str(src), torch_dtype=torch.bfloat16)
    if dst.exists():
        shutil.rmtree(dst)
    pipe.save_pretrained(str(dst), safe_serialization=True)
    # What the users have: only tokenizer.json. (transformers 5 writes nothing else; make sure.)
    for sub, classic in (("tokenizer", ("vocab.json", "merges.txt")), ("tokenizer_2", ("spiece.model",))):
        assert (dst / sub / "tokenizer.json").exists(), f"{sub}/tokenizer.json not written"
        for name in classic:
            (dst / sub / name).unlink(missing_ok=True)
    left = sorted(p.name for p in (dst / "tokenizer").iterdir()) + sorted(p.name for p in (dst / "tokenizer_2").iterdir())
    assert not {"vocab.json", "merges.txt", "spiece.model"} & set(left), left
    # It must still be a folder diffusers loads and tokenizes the same way.
    check = FluxPipeline.from_pretrained(str(dst), torch_dtype=torch.bfloat16)
    for a, b in ((pipe.tokenizer, check.tokenizer), (pipe.tokenizer_2, check.tokenizer_2)):
        text = "A Photo, of 2 cats! <extra_id_3> caf\u00e9"
        assert a(text).input_ids == b(text).input_ids


def t5_variants(base):
    pc = base["normalizer"]
    collapse = {"type": "Sequence", "normalizers": [
        pc, {"type": "Strip", "strip_left": False, "strip_right": True},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": METASPACE}]}

    def metaspace(scheme):
        return {"type": "Metaspace", "replacement": METASPACE, "prepend_scheme": scheme, "split": True}

    # name -> (normalizer, pre_tokenizer): what transformers 5 writes, and what convert_slow_tokenizer's
    # SpmConverter writes for T5 (legacy) and for legacy=False (prepend_scheme "first").
    return {
        "t5-transformers5": (pc, base["pre_tokenizer"]),
        # Added tokens that swallow the whitespace around them (AddedToken(lstrip=True, rstrip=True)).
        "t5-added-tokens-strip": (pc, base["pre_tokenizer"]),
        "t5-spm-converter": (collapse, metaspace("always")),
        "t5-spm-converter-first": (collapse, metaspace("first")),
        "t5-legacy-add-prefix-space": (pc, {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": METASPACE, "add_prefix_space": True}]}),
    }


def write_tokenizer_variants(models: Path, golden: Path):
    base = json.loads((models / "tiny-flux-dev-tf5" / "tokenizer_2" / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = json.loads((golden / "tokens.json").read_text(encoding="utf-8"))
    texts = sorted({c["text"] for c in tokens["t5"]}) + SPECIAL_TEXTS
    out_dir = models / "tokenizer-json"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    result = {}
    for name, (normalizer, pre) in t5_variants(base).items():
        j = copy.deepcopy(base)
        j["normalizer"], j["pre_tokenizer"] = normalizer, pre
        if name == "t5-added-tokens-strip":
            for token in j["added_tokens"]:
                token["lstrip"] = token["rstrip"] = True
        (out_dir / name).mkdir(parents=True)
        (out_dir / name / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
        tok = Tokenizer.from_file(str(out_dir / name / "tokenizer.json"))
        result[name] = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    (out_dir / "tokens.json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    ap.add_argument("--golden", default="tests/golden")
    args = ap.parse_args()
    models = Path(args.models)
    write_tf5(models)
    write_tokenizer_variants(models, Path(args.golden))
    print(f"layout fixtures written to {models}")


if __name__ == "__main__":
    main()
