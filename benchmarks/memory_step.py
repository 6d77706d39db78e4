"""What a MambaLM training step keeps in GPU memory: the tensors autograd saves for the backward,
and the peak of the forward and of the backward.

    python3 benchmarks/memory_step.py --d-model 256 --n-layer 8 --log2-len 20 [--out mem.json]

One forward + backward under bf16 autocast (batch 1, random tokens). Saved tensors are recorded with
``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage (views of one buffer share
it), grouped by the shape and dtype of the storage's first saved view. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from longseq import MambaConfig, MambaLM  # noqa: E402

GIB = 2 ** 30


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--log2-len", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    L = 2 ** args.log2_len
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=12)).to(dev)
    ids = torch.randint(0, 12, (1, L + 1), device=dev)

    def step(record=None):
        hooks = torch.autograd.graph.saved_tensors_hooks(record, lambda t: t) if record else None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if hooks:
                with hooks:
                    logits = model(ids[:, :-1])
            else:
                logits = model(ids[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), ids[0, 1:])

    step().backward()                                     # warm-up: tuning, allocator
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seen = {}

    def record(t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in seen:
            seen[key] = (tuple(t.shape), str(t.dtype).replace("torch.", ""), st.nbytes())
        return t

    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = step(record)
    torch.cuda.synchronize()
    after_fwd = torch.cuda.memory_allocated()
    peak_fwd = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss.backward()
    torch.cuda.synchronize()
    peak_bwd = torch.cuda.max_memory_allocated()
    groups = defaultdict(lambda: [0, 0])
    for shape, dtype, nbytes in seen.values():
        g = groups[(shape, dtype)]
        g[0] += 1
        g[1] += nbytes
    rows = sorted(((list(s), d, n, b) for (s, d), (n, b) in groups.items()), key=lambda r: -r[3])
    saved = sum(r[3] for r in rows)
    print(f"d_model {args.d_model}, {args.n_layer} layers, L {L}: held after the forward "
          f"{(after_fwd - base) / GIB:.2f} GiB (saved storages {saved / GIB:.2f}); peak forward "
          f"{(peak_fwd - base) / GIB:.2f}, peak backward {(peak_bwd - base) / GIB:.2f} GiB over the "
          f"model and its gradients ({base / GIB:.2f})")
    for shape, dtype, n, nbytes in rows[:20]:
        print(f"  {nbytes / GIB:8.3f} GiB  {n:3d} x {dtype:<9} {shape}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            d_model=args.d_model, n_layer=args.n_layer, seq_len=L, held_after_forward_gib=(after_fwd - base) / GIB,
            peak_forward_gib=(peak_fwd - base) / GIB, peak_backward_gib=(peak_bwd - base) / GIB,
            saved=[dict(shape=s, dtype=d, count=n, gib=b / GIB) for s, d, n, b in rows]), indent=1))


if __name__ == "__main__":
    main()
