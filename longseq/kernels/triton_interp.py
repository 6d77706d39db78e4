"""Speed-up for Triton's CPU interpreter (TRITON_INTERPRET=1), used by the CPU tests.

The interpreter runs ``tl.associative_scan`` with a custom combine one element at a time in
Python (~0.2 ms per element: a [4, 16, 64] chunk scan takes ~1 s). :func:`install` replaces that
with a Hillis-Steele scan vectorised over whole tiles: log2(n) calls of the combine function on
shifted slices, the same tree-shaped association a GPU scan uses (results equal to rounding). Nothing changes on GPU. If the interpreter's internals differ (another Triton
version), the patch is skipped and the slow path stays correct.
"""
from __future__ import annotations

import os

_installed = False


def install() -> bool:
    global _installed
    if _installed or os.environ.get("TRITON_INTERPRET") != "1":
        return _installed
    try:
        import numpy as np
        from triton.runtime import interpreter as interp
        ScanOps = interp.ScanOps
        if not hasattr(ScanOps, "generic_scan") or not hasattr(ScanOps, "to_tensor"):
            return False
    except Exception:
        return False

    def generic_scan(self, input):
        # Hillis-Steele inclusive scan along the axis: log2(n) vectorised combine calls.
        datas = [np.ascontiguousarray(arg.handle.data) for arg in input]
        axis = self.axis
        n = datas[0].shape[axis]
        nd = datas[0].ndim

        def sl(a, b):
            idx = [slice(None)] * nd
            idx[axis] = slice(a, b)
            return tuple(idx)

        k = 1
        while k < n:
            # shifted[i] = d[i - k] for i >= k (positions < k hold d[i]; their results are discarded,
            # since the interpreter only accepts power-of-two shapes)
            shifted = []
            for d in datas:
                sh = d.copy()
                sh[sl(k, n)] = d[sl(0, n - k)]
                shifted.append(sh)
            left = [self.to_tensor(sh, input[j].dtype) for j, sh in enumerate(shifted)]
            right = [self.to_tensor(d, input[j].dtype) for j, d in enumerate(datas)]
            with np.errstate(all="ignore"):
                ret = self.combine_fn.fn(*left, *right)
            ret = ret if isinstance(ret, tuple) else (ret,)
            new = [d.copy() for d in datas]
            for j, r in enumerate(ret):
                val = np.broadcast_to(r.handle.data if hasattr(r, "handle") else r, datas[j].shape)
                new[j][sl(k, n)] = val[sl(k, n)]
            datas = new
            k *= 2
        return [self.to_tensor(d, input[j].dtype) for j, d in enumerate(datas)]

    ScanOps.generic_scan = generic_scan
    _installed = True
    return True
