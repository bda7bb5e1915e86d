#!/usr/bin/env python3
"""Gathers one GPU call's benchmark figures into the committed record docs/benchmarks/<card>.json:
{"card", "commit", "date", "figures": {name: value}} (milliseconds, images/hour, plain ratios).

  python3 scripts/bench/collect_figures.py --out OUT.json --commit SHA bench.json diffusers.json job16.json ...
Part files are flat {name: value} objects (fluxbatch_bench_transformer --json, job_bench.sh) whose names are
kept (so bench.json's forward_1024_b1_fp8_attn_ms and rel_l2_vs_fp32_fp8_attn come through as they are, like the
fp8 ones); diffusers.json (diffusers_reference.py) is renamed into diffusers_* figures, and a few figures are also
recorded under a second name (ALIASES). With --merge, figures already in OUT that this call did not measure are kept.
"""
import argparse
import datetime
import json
import subprocess
from pathlib import Path

DIFFUSERS_NAMES = {"forward_ms": "diffusers_forward_1024_b1_bf16_ms", "forward_nf4_ms": "diffusers_forward_1024_b1_nf4_ms",
                   "forward_peak_extra_gib": "diffusers_forward_1024_b1_bf16_peak_extra_gib"}

# name: the part file's figure it copies. The --compute fp8 jobs (run_h100.sh's fp8job and fp8attnjob steps,
# job_bench.sh FB_JOB_TAG=nf4_fp8 / nf4_fp8_attn) also under the names the fp8 issue records them by; s_per_image
# is the steady figure (denoise + decode stages per image), img_per_h the whole process.
ALIASES = {"job16_fp8_img_per_h": "job16_nf4_fp8_img_per_h",
           "job16_fp8_s_per_image": "job16_nf4_fp8_steady_s_per_image",
           "job16_fp8_attn_img_per_h": "job16_nf4_fp8_attn_img_per_h",
           "job16_fp8_attn_s_per_image": "job16_nf4_fp8_attn_steady_s_per_image"}


def card_name():
    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True).stdout.splitlines()
    return name[0].strip() if name else "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("parts", nargs="+", type=Path)
    args = ap.parse_args()
    record = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {"figures": {}}
    figures = record.get("figures", {})
    for part in args.parts:
        if not part.exists():
            print(f"collect_figures: {part} is missing (that step failed or was skipped)")
            continue
        data = json.loads(part.read_text())
        if part.name == "diffusers.json":
            data = {DIFFUSERS_NAMES[k]: v for k, v in data.items() if k in DIFFUSERS_NAMES}
        figures.update({k: v for k, v in data.items() if isinstance(v, (int, float))})
        figures.update({alias: data[k] for alias, k in ALIASES.items() if isinstance(data.get(k), (int, float))})
    ratios = {"forward_1024_b1_speedup_vs_diffusers": ("diffusers_forward_1024_b1_bf16_ms", "forward_1024_b1_bf16_ms"),
              "job16_speedup_vs_diffusers": ("job16_nf4_img_per_h", "diffusers_job16_nf4_img_per_h"),
              "job16_nf4_fp8_speedup_vs_diffusers": ("job16_nf4_fp8_img_per_h", "diffusers_job16_nf4_img_per_h"),
              "job16_fp8_attn_speedup_vs_diffusers": ("job16_fp8_attn_img_per_h", "diffusers_job16_nf4_img_per_h"),
              "rel_l2_bf16_over_diffusers": ("rel_l2_vs_fp32_bf16", "diffusers_rel_l2_vs_fp32_bf16")}
    for name, (num, den) in ratios.items():
        if num in figures and den in figures and figures[den]:
            figures[name] = figures[num] / figures[den]
    record.update(card=card_name(), commit=args.commit, date=datetime.date.today().isoformat(),
                  figures=dict(sorted(figures.items())))
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}: {len(figures)} figures ({record['card']}, commit {args.commit})")


if __name__ == "__main__":
    main()
