#!/usr/bin/env bash
# Pack a Triton release small enough to travel to the device machine (64 MiB per call, repo included),
# so the GPU tests and benchmarks can run on the Triton that CI installs as well as on the device's own.
#   bash benchmarks/pack_triton.sh 3.9.0      -> .triton_pack/triton-3.9.0.tar.xz (~50 MB)
#   run(command="TRITON_PACK=.triton_pack/triton-3.9.0.tar.xz bash benchmarks/device_kernels.sh", carry=[".triton_pack/triton-3.9.0.tar.xz"])
# The wheel is ~290 MB: this keeps the NVIDIA backend and the ptxas it uses for sm_90 and newer
# (Triton 3.9 names it ptxas-blackwell; CUDA 13.4) and drops what a run of our kernels on the H100 never
# loads (the AMD backend, the ptxas for GPUs before sm_90, CUPTI/proton profiling, MLIR plugins, test tools, C++
# headers, every CUDA header but cuda.h), and strips libtriton.so's symbol tables (500 -> 190 MB before compression).
# NO_PTXAS=1 drops that ptxas as well (~40 MB pack, -noptxas in its name), for when the repository has grown
# too large to travel with the whole pack: benchmarks/device_kernels.sh then points Triton at the device
# Triton's own ptxas-blackwell (v18 found the same SASS with 3.6's ptxas for our kernels).
set -euo pipefail
VERSION=${1:?usage: pack_triton.sh VERSION (e.g. 3.9.0)}
DEST=${DEST:-.triton_pack}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work" "triton==$VERSION"
(cd "$work" && unzip -q triton-*.whl)
t=$work/triton
rm -rf "$t/backends/amd" "$t/_C/libproton.so" "$t/backends/nvidia/lib/cupti" "$t/backends/nvidia/lib/cupti-blackwell" \
       "$t/backends/nvidia/bin/ptxas" "$t/backends/nvidia/bin/nvdisasm" "$t/backends/nvidia/bin/cuobjdump" "$t/instrumentation" \
       "$t/plugins" "$t/include" "$t/FileCheck"
# of the CUDA headers, the launcher that Triton compiles on the device includes cuda.h alone
find "$t/backends/nvidia/include" -mindepth 1 -maxdepth 1 ! -name cuda.h -exec rm -rf {} +
sed -i '/^amd = /d' "$work"/triton-"$VERSION".dist-info/entry_points.txt   # backends are found by entry point
strip --strip-unneeded "$t/_C/libtriton.so" "$t/backends/nvidia/bin/ptxas-blackwell"
name=triton-$VERSION
if [ "${NO_PTXAS:-0}" = 1 ]; then rm "$t/backends/nvidia/bin/ptxas-blackwell"; name=$name-noptxas; fi
mkdir -p "$DEST"
tmp="$DEST/$name.tar.xz.part"          # written whole, then renamed: no half-written pack
(cd "$work" && tar cf - triton triton-"$VERSION".dist-info) | xz -T0 -9 > "$tmp"
mv "$tmp" "$DEST/$name.tar.xz"
ls -l "$DEST/$name.tar.xz"
