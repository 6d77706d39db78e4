"""The direct kernel launches (longseq.kernels.triton_launch): what can be checked without a GPU.

The launches themselves run on the device (tests/test_gpu_kernels.py: every GPU test goes through
them, and two tests check that they are taken, that they match Triton's own launches bitwise and
that a misaligned tensor gets its own compiled kernel)."""
import pytest
import torch

triton = pytest.importorskip("triton")
from triton.runtime.jit import JITFunction  # noqa: E402

from longseq.kernels import triton_launch as TL  # noqa: E402


def test_direct_launch_only_for_the_tritons_whose_launcher_we_read():
    for v in ("3.6.0", "3.7.1", "3.8.0", "3.9.0", "3.9.1+git"):
        assert TL.direct_launch_supported(v), v
    for v in ("3.5.1", "3.10.0", "4.0.0", "2.3.1"):
        assert not TL.direct_launch_supported(v), v


def test_argument_key_separates_what_triton_specialises_on():
    buf = torch.zeros(64, dtype=torch.float32)
    aligned, misaligned = buf[:32], buf[1:33]           # 4 bytes off a 16-byte boundary
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    def key(args):
        return TL._args_key(args)[0]
    assert key((aligned, 3)) != key((misaligned, 3))                 # alignment
    assert key((aligned, 3)) != key((aligned.to(torch.bfloat16), 3))  # dtype
    assert key((aligned, 3)) != key((aligned, 4))                    # integer values, exactly
    assert key((aligned, 1)) != key((aligned, True))                 # a bool is not the integer 1
    assert key((aligned, 1)) != key((aligned, 1.0))                  # nor is a float
    assert key((aligned, 16)) == key((buf[4:36], 16))                # another aligned tensor: same kernel
    assert key((None, 2.5)) == key((None, 2.5))
    # what the launcher gets: addresses for tensors, the rest as given
    assert TL._args_key((aligned, 3, None))[1] == [aligned.data_ptr(), 3, None]


def test_trailing_arguments_in_signature_order_with_defaults():
    # a JITFunction made directly, so that TRITON_INTERPRET (CI) does not turn it into an interpreted one
    import triton.language as tl

    def k(x_ptr, n, A: tl.constexpr, B: tl.constexpr = 3, C: tl.constexpr = None):
        pass
    kernel = JITFunction(k)
    assert TL._trailing(kernel, 2, {"C": 5, "A": 1, "num_warps": 4}) == (1, 3, 5)
    assert TL._trailing(kernel, 3, {}) == (3, None)
    with pytest.raises(TypeError, match="'A'"):
        TL._trailing(kernel, 2, {"B": 1})


def test_direct_launch_off_by_request_and_with_launch_hooks(monkeypatch):
    monkeypatch.delenv("LONGSEQ_TRITON_LAUNCH", raising=False)
    assert TL.direct() == TL._SUPPORTED
    monkeypatch.setenv("LONGSEQ_TRITON_LAUNCH", "triton")
    assert not TL.direct()
    monkeypatch.delenv("LONGSEQ_TRITON_LAUNCH")
    hooks = triton.knobs.runtime.launch_enter_hook

    def hook(metadata):
        pass
    if hasattr(hooks, "add"):      # a HookChain (Triton 3.6 on)
        hooks.add(hook)
        try:
            assert not TL.direct()     # a profiler's hook needs Triton's own launch (it gets the metadata)
        finally:
            hooks.remove(hook)
    else:
        monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", hook)
        assert not TL.direct()
    assert TL.direct() == TL._SUPPORTED


def test_launch_under_the_interpreter_runs_the_kernel(monkeypatch):
    """An interpreted kernel (TRITON_INTERPRET=1, how CI runs every kernel test) is no JITFunction:
    launch() calls kernel[grid](...) for it."""
    import triton.language as tl
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from triton.runtime.interpreter import InterpretedFunction

    def add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)
    x = torch.arange(10, dtype=torch.float32)
    TL.launch(InterpretedFunction(add_one), (3,), x, 10, BLOCK=4)
    assert torch.equal(x, torch.arange(10, dtype=torch.float32) + 1)


def test_compile_only_warms_up_and_launches_nothing(monkeypatch):
    """Under compile_only() launch() asks Triton to compile (run with warmup=True: no launch); the
    switch is off again afterwards, also after an error inside."""
    import triton.language as tl

    def k(x_ptr, n, A: tl.constexpr):
        pass
    kernel = JITFunction(k)
    calls = []
    monkeypatch.setattr(kernel, "run", lambda *a, **kw: calls.append((a, kw)) or "compiled")
    x = torch.zeros(4)
    with TL.compile_only():
        assert TL.launch(kernel, (2,), x, 4, A=1, num_warps=1) == "compiled"
    assert calls == [((x, 4), dict(grid=(2,), warmup=True, A=1, num_warps=1))]
    with pytest.raises(ValueError):
        with TL.compile_only():
            raise ValueError
    assert not TL._COMPILE_ONLY.get()
    # another thread's launches still run meanwhile
    import threading
    seen = []
    with TL.compile_only():
        th = threading.Thread(target=lambda: seen.append(TL._COMPILE_ONLY.get()))
        th.start()
        th.join()
    assert seen == [False]


def test_tuner_compiles_candidates_in_its_thread_pool(monkeypatch):
    """triton_tune's first step: every candidate's run(cfg) under Triton's AsyncCompileMode and
    compile_only, in a pool of LONGSEQ_COMPILE_WORKERS threads; one worker (or one candidate) skips it.
    A candidate whose run raises is left to the timing loop."""
    from triton.runtime import _async_compile

    from longseq.kernels import triton_tune
    seen = []

    def run(cfg):
        seen.append((cfg, TL._COMPILE_ONLY.get(), _async_compile.active_mode.get() is not None))
        if cfg == "bad":
            raise RuntimeError("does not compile")
    monkeypatch.setenv("LONGSEQ_COMPILE_WORKERS", "3")
    assert triton_tune.compile_workers() == 3
    triton_tune._compile_in_parallel(["a", "bad", "c"], run)
    assert seen == [("a", True, True), ("bad", True, True), ("c", True, True)]
    assert not TL._COMPILE_ONLY.get() and _async_compile.active_mode.get() is None
    seen.clear()
    triton_tune._compile_in_parallel(["a"], run)                 # one candidate: nothing to overlap
    monkeypatch.setenv("LONGSEQ_COMPILE_WORKERS", "1")
    triton_tune._compile_in_parallel(["a", "c"], run)
    assert seen == []
    monkeypatch.setenv("LONGSEQ_COMPILE_WORKERS", "2")
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool, triton.AsyncCompileMode(pool):    # a caller's own mode: left alone
        triton_tune._compile_in_parallel(["a", "c"], run)
        assert _async_compile.active_mode.get() is not None
    assert seen == [] and not TL._COMPILE_ONLY.get()
    monkeypatch.delenv("LONGSEQ_COMPILE_WORKERS")
    assert 1 <= triton_tune.compile_workers() <= 16
