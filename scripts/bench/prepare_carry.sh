#!/usr/bin/env bash
# Prepares, on the dev machine, what scripts/bench/run_h100.sh needs on the GPU machine and cannot download
# there (shared/gpu-machine.md): .stb (stb headers from Debian's libstb-dev) and .whl (diffusers,
# importlib_metadata, zipp, bitsandbytes, open_clip_torch and nvidia-cudnn-frontend wheels for its Python 3.12;
# open_clip only for the CLIP BPE vocabulary scripts/make_tiny_models.py reads from it, the cuDNN frontend only
# for its C++ headers, which the fp8 attention builds against: gpu_common.sh's fb_gpu_build). bitsandbytes' wheel
# carries a library per CUDA version (60 MB); only the CUDA 13.0 one (torch cu130 there) is kept, and of the cuDNN
# frontend's (11 MB) only include/, so a call's carry stays small.
#   bash scripts/bench/prepare_carry.sh     then carry [".stb", ".whl"] in the device call
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=.venv/bin/python3
if [ ! -f .stb/usr/include/stb/stb_image_write.h ]; then
  rm -rf .stb /tmp/stb-deb && mkdir -p /tmp/stb-deb
  (cd /tmp/stb-deb && apt-get download libstb-dev >/dev/null)
  dpkg -x /tmp/stb-deb/libstb-dev_*.deb .stb
fi
mkdir -p .whl
versions=$($PY -c "import diffusers, bitsandbytes, importlib_metadata as m; print(diffusers.__version__, bitsandbytes.__version__, m.version('importlib_metadata'), m.version('open_clip_torch'))")
read -r diffusers_v bnb_v meta_v clip_v <<<"$versions"
# Pinned in requirements-nodeps.txt (the dev machine's venv may predate it). A cp312 manylinux_2_28 wheel.
frontend_v=$(sed -n 's/^nvidia-cudnn-frontend==//p' scripts/requirements-nodeps.txt)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "diffusers==$diffusers_v" "importlib_metadata==$meta_v" zipp "bitsandbytes==$bnb_v" \
  "open_clip_torch==$clip_v" "nvidia-cudnn-frontend==$frontend_v"
$PY - <<'PY'
import glob, os, zipfile

def bnb_keeps(name):  # the CPU and CUDA 13.0 libraries of the dozen
    return not (name.startswith("bitsandbytes/libbitsandbytes_") and "cuda130" not in name and "cpu" not in name)

def frontend_keeps(name):  # include/ and the metadata, not the Python bindings (45 MB unpacked)
    return not name.startswith("cudnn/")

for pattern, keeps in ((".whl/bitsandbytes-*.whl", bnb_keeps), (".whl/nvidia_cudnn_frontend-*.whl", frontend_keeps)):
    for path in glob.glob(pattern):
        src = zipfile.ZipFile(path)
        keep = [i for i in src.infolist() if keeps(i.filename)]
        if len(keep) == len(src.infolist()):
            continue
        names = {i.filename for i in keep}
        tmp = path + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in keep:
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = [l for l in data.decode().splitlines()
                             if l.split(",")[0] in names or l.endswith("RECORD,,")]
                    data = ("\n".join(lines) + "\n").encode()
                dst.writestr(info, data)
        src.close()
        os.replace(tmp, path)
        print(f"{path}: kept {len(keep)} files, {os.path.getsize(path) / 2**20:.1f} MiB")
PY
du -sh .stb .whl
