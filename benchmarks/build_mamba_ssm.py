"""Build mamba_ssm's selective_scan CUDA extension on the device, for the benchmark's comparison.

Expects mamba_ssm's sources (``csrc/selective_scan`` from the pip sdist, mamba_ssm 2.3.2.post1) in
``.mamba_src/selective_scan`` (carried to the device; no network there). Compiles the same files
with the same nvcc flags as mamba_ssm's setup.py, but for sm_90 only (the setup.py compiles 4-8
architectures), into ``$MAMBA_BUILD_DIR`` (default /tmp/mamba_build). The benchmark then imports
``selective_scan_cuda`` from there. Prints the elapsed time and the ptxas register report.
"""
import os
import sys
import time

import torch
from torch.utils.cpp_extension import load

src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".mamba_src", "selective_scan")
out = os.environ.get("MAMBA_BUILD_DIR", "/tmp/mamba_build")
os.makedirs(out, exist_ok=True)
os.environ.setdefault("MAX_JOBS", "16")
os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
files = ["selective_scan.cpp"] + [f"selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")] + \
        [f"selective_scan_bwd_{t}_{w}.cu" for t in ("fp32", "fp16", "bf16") for w in ("real", "complex")]
t0 = time.time()
load(name="selective_scan_cuda", sources=[os.path.join(src, f) for f in files], build_directory=out,
     extra_include_paths=[src], verbose=True,
     extra_cflags=["-O3", "-std=c++17"],
     extra_cuda_cflags=["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
                        "--ptxas-options=-v", "-lineinfo", "-gencode", "arch=compute_90,code=sm_90"])
print(f"mamba_ssm selective_scan_cuda built in {time.time() - t0:.0f} s into {out}", flush=True)
sys.exit(0)
