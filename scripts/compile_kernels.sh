#!/usr/bin/env bash
# Compile-check every CUDA kernel source with nvcc for Hopper (sm_90): a kernel that does not
# compile cannot land. Usage: scripts/compile_kernels.sh [out_dir]   (PTX files go to out_dir)
# The kernels are compiled at run time by NVRTC through CuPy; nvcc checks the same sources.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kernels="$root/worker/backend/kernels"
out="${1:-$(mktemp -d)}"
arch="${CUDA_ARCH:-sm_90}"
command -v nvcc >/dev/null || { echo "nvcc not found" >&2; exit 127; }
mkdir -p "$out"
status=0
for cu in "$kernels"/*.cu; do
  name="$(basename "$cu" .cu)"
  if nvcc -arch="$arch" --ptx -std=c++17 -Werror all-warnings -I "$kernels" -o "$out/$name.ptx" "$cu"; then
    echo "ok   $name.cu -> $out/$name.ptx"
  else
    echo "FAIL $name.cu" >&2
    status=1
  fi
done
exit $status
