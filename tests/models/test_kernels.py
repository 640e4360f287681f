"""Compiled pointwise kernels: the same values as their eager code, any tensor layout, eager when compiling fails."""
from __future__ import annotations

import logging

import pytest
import torch

from embedtune.models import kernels
from embedtune.models.kernels import Kernel, RowLayout


@pytest.fixture(autouse=True)
def compiling_on(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "1")


def rows(n: int, width: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_norm_matches_eager(dtype):
    x, grad = rows(37, 24, dtype, 0), rows(37, 24, dtype, 1)
    scale = 1.0 + rows(1, 24, torch.float32, 2)[0] * 0.1
    y, rstd = kernels.RMS_NORM_FORWARD(True, x, scale, 1e-6)
    y_ref, rstd_ref = kernels.rms_norm_forward(x, scale, 1e-6)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # the last bf16 bit may differ
    assert torch.allclose(y.float(), y_ref.float(), atol=tolerance, rtol=tolerance)
    assert torch.allclose(rstd, rstd_ref, rtol=1e-6)
    dx = kernels.RMS_NORM_BACKWARD(True, grad, x, rstd, scale)
    assert torch.allclose(dx.float(), kernels.rms_norm_backward(grad, x, rstd, scale).float(), atol=tolerance,
                          rtol=tolerance)
    assert (y.dtype, dx.dtype) == (dtype, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_geglu_matches_eager(dtype):
    gate, up, grad = rows(29, 40, dtype, 3), rows(29, 40, dtype, 4), rows(29, 40, dtype, 5)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(kernels.GEGLU_FORWARD(True, gate, up).float(), kernels.geglu_forward(gate, up).float(),
                          atol=tolerance, rtol=tolerance)
    compiled, eager = kernels.GEGLU_BACKWARD(True, grad, gate, up), kernels.geglu_backward(grad, gate, up)
    for got, want in zip(compiled, eager, strict=True):
        assert torch.allclose(got.float(), want.float(), atol=tolerance, rtol=tolerance)


def test_row_layout_reads_permuted_views_in_memory_order():
    memory = torch.arange(2 * 5 * 3 * 4.0).view(2, 5, 3, 4)  # [batch, tokens, heads, dim]
    x = memory.transpose(1, 2)  # [batch, heads, tokens, dim], as Gemma-3 normalises q and k
    layout = RowLayout(x)
    flat = layout.rows(x)
    assert flat.data_ptr() == memory.data_ptr() and flat.is_contiguous()  # a view, no copy
    assert torch.equal(flat, memory.reshape(-1, 4))
    back = layout.restore(flat * 2)
    assert back.shape == x.shape and torch.equal(back, x * 2)
    assert torch.equal(layout.rows(x.contiguous()), flat)  # a differently laid out gradient: same rows


def test_failed_compile_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(fn, **options):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    kernel = Kernel(kernels.geglu_forward)
    gate, up = rows(4, 8, torch.float32, 6), rows(4, 8, torch.float32, 7)
    with caplog.at_level(logging.WARNING, logger="embedtune.models.kernels"):
        out = kernel(True, gate, up)
        kernel(True, gate, up)
    assert torch.equal(out, kernels.geglu_forward(gate, up))
    assert kernel.failed and sum("compiling geglu_forward failed" in r.message for r in caplog.records) == 1


def test_a_slow_first_call_reports_its_compile_cost_once(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # no real compile: the report is what is tested
    monkeypatch.setattr(kernels, "SHOW_COMPILE_SECONDS", 0.0)
    kernel = Kernel(kernels.geglu_forward)
    gate, up = rows(4, 8, torch.float32, 6), rows(4, 8, torch.float32, 7)
    with caplog.at_level(logging.INFO, logger="embedtune.models.kernels"):
        kernel(True, gate, up)
        kernel(True, gate, up)
    reports = [r for r in caplog.records if "compiled geglu_forward on first use in" in r.message]
    assert len(reports) == 1 and reports[0].levelno == logging.INFO and kernels.ENV in reports[0].message


def test_a_fast_first_call_from_torchs_cache_stays_quiet(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)
    monkeypatch.setattr(kernels, "SHOW_COMPILE_SECONDS", 3600.0)
    kernel = Kernel(kernels.geglu_forward)
    with caplog.at_level(logging.INFO, logger="embedtune.models.kernels"):
        kernel(True, rows(4, 8, torch.float32, 6), rows(4, 8, torch.float32, 7))
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_switched_off_runs_eager(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "0")
    from embedtune.models.backend import Backend

    backend = Backend.for_device("cpu", "fp32")
    assert backend.compile_kernels is False  # the backend reads the user's switch
    kernel = Kernel(kernels.geglu_forward)
    kernel(backend.compile_kernels, rows(4, 8, torch.float32, 8), rows(4, 8, torch.float32, 9))
    assert kernel.compiled is None


def test_a_process_mixing_dtypes_and_grad_modes_keeps_its_compiled_kernels():
    kernel = Kernel(kernels.rms_norm_forward)
    scale = torch.ones(24)
    # Models differ in eps (a constant in the compiled code) and runs in dtype and grad mode: more variants than
    # dynamo's default limit of 8, past which a fullgraph function fails for good.
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = rows(7, 24, dtype, 0)
        for grad, autocast in ((True, False), (False, False), (True, True), (False, True)):
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                for eps in (1e-6, 1e-5):
                    kernel(True, x, scale, eps)
    assert kernel.compiled is not None and not kernel.failed


def test_a_trace_runs_the_eager_kernel_and_leaves_compiling_on():
    # The ONNX export traces the model with torch.jit: a compiled function there fails, and a failure would turn
    # compiling off for the rest of the process.
    kernel = Kernel(kernels.rms_norm_forward)
    x, scale = torch.randn(3, 8), torch.randn(8)
    traced = torch.jit.trace(lambda a, b: kernel(True, a, b, 1e-6)[0], (x, scale))
    torch.testing.assert_close(traced(x, scale), kernels.rms_norm_forward(x, scale, 1e-6)[0])
    assert not kernel.failed  # (the trace check reruns the function untraced: compiled there, and fine)
