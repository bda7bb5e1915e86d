#!/usr/bin/env python3
"""Takes GPU memory away from everyone else, so a budget benchmark meets real out-of-memory errors.

Allocates all free memory of GPU 0 but --leave-gib GiB in one tensor, writes --ready when done, then
sleeps until killed.  python3 scripts/bench/ballast.py --leave-gib 8 --ready /tmp/ballast.ready &
"""
import argparse
import signal
import time
from pathlib import Path

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--leave-gib", type=float, required=True)
parser.add_argument("--ready", type=Path, required=True)
args = parser.parse_args()
free, total = torch.cuda.mem_get_info(0)
# The CUDA context of the process that will render costs about 0.5 GiB of its own; it is part of the budget.
take = free - int(args.leave_gib * 2**30)
ballast = torch.empty(max(take, 0), dtype=torch.uint8, device="cuda") if take > 0 else None
torch.cuda.synchronize()
free_after, _ = torch.cuda.mem_get_info(0)
args.ready.write_text(f"{free_after / 2**30:.2f}\n")
print(f"ballast: holds {max(take, 0) / 2**30:.2f} GiB; {free_after / 2**30:.2f} GiB of {total / 2**30:.2f} left free",
      flush=True)
signal.signal(signal.SIGTERM, lambda *_: exit(0))
while True:
    time.sleep(3600)
