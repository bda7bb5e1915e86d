#!/usr/bin/env python3
"""NF4 / 8-bit dynamic quantization fixtures made by bitsandbytes, for tests/quant and tests/ops.

bitsandbytes (pinned: bitsandbytes==0.49.2) has two implementations that do not agree bit for bit:
  cpu   backends/default + libbitsandbytes_cpu: NF4 by argmin over |x/absmax - code| (ties -> lower code),
        8-bit by x / absmax, binary search and nearest (ties -> lower), and it overwrites code[0] of the
        dynamic map with -1.0 before quantizing (so the stored nested_quant_map starts with -1.0).
  cuda  csrc/kernels.cu: NF4 by the dQuantizeNF4 decision tree on x * (1/absmax) (ties -> lower code,
        which differs from argmin at 4 of the 15 thresholds), 8-bit by dQuantize<0> (binary search with
        fp32 midpoints) on x * (1/absmax), dynamic map untouched. Real checkpoints come from this one.
Both store the same layout and dequantize the same way. This script writes one file per backend:
  --device cpu   -> tests/data/nf4/bnb_cpu.safetensors   (runs anywhere)
  --device cuda  -> tests/data/nf4/bnb_cuda.safetensors  (needs a GPU). On a machine without registry access
                    carry a trimmed copy of the installed package (about 5 MB, pure Python + .so):
                      mkdir -p .bnb && cp -r .venv/lib/python3.11/site-packages/bitsandbytes .bnb/
                      rm -f .bnb/bitsandbytes/libbitsandbytes_{cuda1[12]?,rocm*,xpu}.so; echo /.bnb/ >> .git/info/exclude
                    and run there: PYTHONPATH=.bnb python3 scripts/make_nf4_fixtures.py --device cuda --out $OUT

Keys: "<case>.input"; "<case>.<plain|nested>.<field>" with fields packed (uint8 [(n+1)/2]), absmax (f32) or
q8 (uint8) + nested_absmax (f32) + nested_quant_map (f32[256]) + offset (f32[1]), deq_bf16 / deq_f16 /
deq_f32 (dequantize_4bit output, shape of the input; f16 / f32 for small cases only); "dyn.<case>.{input,q8,absmax,code}" for
quantize_blockwise(blocksize=256); "dynamic_map" (create_dynamic_map(), fresh) and "nf4_code".
Metadata: bitsandbytes / torch versions, backend, and the case list (JSON).

Usage: /work/main/.venv/bin/python3 scripts/make_nf4_fixtures.py --device cpu [--out tests/data/nf4]
"""
import argparse
import json
import logging
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

PINNED_BNB = "0.49.2"
SMALL_CASE = 20480  # cases up to this many values also get fp16 / fp32 dequantized outputs
# csrc/kernels.cu dQuantizeNF4's literals as float32 bits, as the compiler rounds the decimal text (read
# back from the sm_90 SASS of libbitsandbytes_cuda130.so). Going through a Python float (double) lands
# one ulp off for 4 of them.
NF4_THRESHOLD_BITS = [
    0xBF591CD9, 0xBF1C5270, 0xBEEB8480, 0xBEADEA76, 0xBE703CEC, 0xBE0D38BC, 0xBD3A7871, 0x3D22FAFF,
    0x3DF64863, 0x3E5067E0, 0x3E9582D4, 0x3EC753F9, 0x3F006D03, 0x3F248DAF, 0x3F5C89D9,
]


def edge_rows():
    """[rows, 64] float32: one hand-made block per row, each aimed at one rounding rule."""
    gen = torch.Generator().manual_seed(7)
    thr = torch.tensor(NF4_THRESHOLD_BITS, dtype=torch.int64).to(torch.int32).view(torch.float32)
    rows = []

    def block(values):
        out = torch.zeros(64, dtype=torch.float32)
        out[: len(values)] = torch.as_tensor(values, dtype=torch.float32)
        return out

    rows.append(torch.zeros(64))                                    # absmax 0: 0 * inf = NaN -> code 0 (-0.0)
    rows.append(block([1.0, *thr.tolist(), *(-thr).tolist()]))      # exact ties, absmax 1
    rows.append(block([2.0, *(2 * thr).tolist()]))                  # exact ties, absmax 2 (exact reciprocal)
    up = torch.nextafter(thr, torch.full_like(thr, 2.0))
    down = torch.nextafter(thr, torch.full_like(thr, -2.0))
    rows.append(block([1.0, *up.tolist(), *down.tolist()]))          # one ulp either side of each threshold
    neg = torch.randn(64, generator=gen).clamp(-1.9, 1.9)
    neg[17] = -3.0
    rows.append(neg)                                                # negative value is the absmax
    rows.append(torch.full((64,), 0.5))                             # constant positive
    rows.append(torch.full((64,), -0.25))                           # constant negative
    rows.append(torch.randn(64, generator=gen) * 1e-36)             # tiny but normal (subnormals: the CUDA
                                                                    # build flushes them, the CPU one not)
    rows.append(torch.randn(64, generator=gen) * 1e30)              # large
    rows.append(torch.randn(64, generator=gen) * 3.0 / 7.0)         # inexact reciprocal
    return torch.stack(rows)


def nf4_cases():
    gen = torch.Generator().manual_seed(1234)
    randn = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    const_absmax = randn(8, 64).clamp(-0.9, 0.9)
    const_absmax[:, 5] = 1.0                                        # every block absmax 1: nested absmax 0
    return {
        "rand_f32": randn(64, 320),                                 # 320 blocks: nested 256 + 64 tail
        "flux_bf16": (randn(3072, 64) * 0.02).to(torch.bfloat16),   # FLUX-shaped slice, 12 nested blocks
        "edge_f32": edge_rows(),
        "tail_f32": randn(3, 50),                                   # 150 values: last block has 22
        "tail_bf16": randn(5, 26).to(torch.bfloat16),               # 130 values: last block has 2
        "single_block_f32": randn(1, 64),                           # one block: nested absmax 0
        "const_absmax_f32": const_absmax,
        "f16": (randn(16, 128) * 4).to(torch.float16),
        "odd_f32": randn(3, 5),                                     # odd numel: the cpu backend refuses it
    }


def dyn_cases():
    gen = torch.Generator().manual_seed(99)
    code = F.create_dynamic_map()
    mids = (code[:-1] + code[1:]) / 2
    exact = torch.cat([code, torch.tensor([-1.0])])                 # absmax 1 in every block
    mid_block = torch.cat([mids, torch.tensor([1.0])])
    up = torch.nextafter(mids, torch.full_like(mids, 2.0))
    down = torch.nextafter(mids, torch.full_like(mids, -2.0))
    near = torch.cat([up, down, torch.tensor([1.0, -1.0])])
    return {
        "codes": exact,
        "mids": mid_block,
        "near_mids": near,
        "rand": torch.randn(1000, generator=gen),                   # 4 blocks, last one partial
        "scaled": torch.randn(512, generator=gen) * 0.37,           # inexact reciprocals
        "zeros": torch.zeros(256),
    }


def quantize_case(prefix, w, device, nested, out):
    q, s = F.quantize_4bit(w.to(device), blocksize=64, quant_type="nf4", compress_statistics=nested)
    out[f"{prefix}.packed"] = q.reshape(-1)
    if nested:
        out[f"{prefix}.q8"] = s.absmax
        out[f"{prefix}.nested_absmax"] = s.state2.absmax
        out[f"{prefix}.nested_quant_map"] = s.state2.code
        out[f"{prefix}.offset"] = s.offset.reshape(1).float()
    else:
        out[f"{prefix}.absmax"] = s.absmax
    outputs = [("deq_bf16", torch.bfloat16)]
    if w.numel() <= SMALL_CASE:
        outputs += [("deq_f16", torch.float16), ("deq_f32", torch.float32)]
    for name, dtype in outputs:
        s.dtype = dtype
        out[f"{prefix}.{name}"] = F.dequantize_4bit(q, s).reshape(w.shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "data" / "nf4"))
    args = parser.parse_args()
    if bitsandbytes.__version__ != PINNED_BNB:
        raise SystemExit(f"bitsandbytes {bitsandbytes.__version__} installed, fixtures need {PINNED_BNB}")
    torch.set_num_threads(1)
    # The cpu backend overwrites the cached dynamic map in place: start from a fresh one either way.
    F.name2qmap.clear()

    tensors = {"dynamic_map": F.create_dynamic_map(), "nf4_code": F.get_4bit_type("nf4", device="cpu")}
    cases, skipped = [], {}
    for name, w in nf4_cases().items():
        try:
            produced = {}
            for variant, nested in (("plain", False), ("nested", True)):
                quantize_case(f"{name}.{variant}", w, args.device, nested, produced)
        except RuntimeError as err:  # odd_f32 on the cpu backend
            skipped[name] = str(err).splitlines()[0]
            continue
        tensors[f"{name}.input"] = w
        tensors.update(produced)
        cases.append(name)
    dyn = []
    for name, x in dyn_cases().items():
        q8, state = F.quantize_blockwise(x.to(args.device), blocksize=256)
        tensors.update({f"dyn.{name}.input": x, f"dyn.{name}.q8": q8, f"dyn.{name}.absmax": state.absmax,
                        f"dyn.{name}.code": state.code})
        dyn.append(name)

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {
        "bitsandbytes": bitsandbytes.__version__,
        "torch": torch.__version__,
        "backend": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "nf4_cases": json.dumps(cases),
        "dyn_cases": json.dumps(dyn),
        "skipped": json.dumps(skipped),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bnb_{args.device}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size} bytes): {len(cases)} nf4 cases, {len(dyn)} dyn cases, "
          f"skipped {skipped}")


if __name__ == "__main__":
    main()
