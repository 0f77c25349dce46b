"""One configuration of ``benchmarks/speed.py``, run in a fresh process.

Usage: ``python benchmarks/_speed_worker.py '<json config>'``. Prints one line
``RESULT <json>`` with the measured time per batch and peak memory, or a status ``OOM``/``error``.
The parent process enforces the hard time limit (it kills this process) and marks ``timeout``.

Memory
------
* CUDA: ``torch.cuda.max_memory_allocated()`` during the timed loop minus the memory allocated
  before it (model, inputs), i.e. the peak of activations, workspaces and gradients.
* CPU: PyTorch has no caching allocator on CPU, so the honest number is what the process takes
  from the OS. After building the model and inputs we reset the kernel's peak-RSS counter
  (``echo 5 > /proc/self/clear_refs``) and report ``VmHWM - VmRSS_before``: the peak resident
  memory added by the forward (and backward) passes. Each configuration runs in its own process
  so nothing freed by an earlier configuration is counted or reused.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def _import_nn_only(source: str | None = None) -> None:
    """Make ``import schyena_tools.nn`` skip the package ``__init__`` (AnnData, scvi-tools...).

    The network is plain PyTorch; importing the whole package costs seconds per worker.
    ``source``: a folder holding another version's ``schyena_tools/nn`` (``speed.py``'s
    before/after extracts one from git) to import instead of the installed one.
    """
    import importlib.util
    import types

    if "schyena_tools" in sys.modules:
        return
    if source is not None:
        locations = [os.path.join(source, "schyena_tools")]
    else:
        spec = importlib.util.find_spec("schyena_tools")
        if spec is None or not spec.submodule_search_locations:
            return
        locations = list(spec.submodule_search_locations)
    package = types.ModuleType("schyena_tools")
    package.__path__ = locations
    sys.modules["schyena_tools"] = package


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return any(
        s in text
        for s in (
            "out of memory",
            "can't allocate memory",
            "not enough memory",
            "cannot allocate memory",
            "failed to allocate",
        )
    )


def main(cfg: dict) -> dict:
    if cfg.get("memory_limit_gb") and cfg["device"] == "cpu":
        import resource

        limit = int(cfg["memory_limit_gb"] * 1024**3)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["dtype"]]

    _import_nn_only(cfg.get("source"))
    import inspect

    from schyena_tools.nn import SCHyenaEncoder

    accepted = inspect.signature(SCHyenaEncoder).parameters
    extra = {
        k: cfg[k]
        for k in ("mixer", "attention_heads", "cells_per_chunk")
        if k in accepted and cfg.get(k) is not None
    }
    if cfg.get("mixer", "hyena") != "hyena" and "mixer" not in accepted:
        return {"status": "error", "message": "this version has no attention mixer"}

    torch.manual_seed(0)
    length, batch = cfg["length"], cfg["batch_size"]
    model = SCHyenaEncoder(
        length,
        d_model=cfg["d_model"],
        n_layers=cfg["n_layers"],
        order=cfg["order"],
        filter_hidden_dim=cfg["filter_hidden_dim"],
        gradient_checkpointing=cfg.get("gradient_checkpointing", False),
        **extra,
    ).to(device)
    if cfg.get("compile"):
        model.compile_blocks()
    train = cfg["mode"] == "train"
    model.train(train)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, length, generator=gen).to(device)
    masked = (torch.rand(batch, length, generator=gen) < 0.15).to(device)

    def step():
        if cfg.get("fft_backend"):
            from schyena_tools.nn import use_fft_backend

            with use_fft_backend(cfg["fft_backend"]):
                return _step()
        return _step()

    def _step():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else _null()
        if train:
            with ctx:
                out = model(x, masked=masked)
            loss = (out.predicted_expression.float() - x).pow(2)[masked].mean()
            loss.backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad(), ctx:
                model(x).cell_embedding.sum().item()
        if device.type == "cuda":
            torch.cuda.synchronize()

    # memory baseline: model, inputs, libraries
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = (_status_kb("VmRSS") or 0) * 1024
        reset_ok = _reset_peak_rss()

    budget = cfg["time_budget"]
    times = []
    cpu_times = []  # process CPU time: robust to other jobs on a shared machine with 1 thread
    flagged_single = False
    try:
        if cfg.get("compile"):
            step()  # compilation: not timed, not counted in the budget
        started = time.perf_counter()
        t0, c0 = time.perf_counter(), time.process_time()
        step()  # warm-up (compilation, first-touch allocations, plan caches)
        warm, warm_cpu = time.perf_counter() - t0, time.process_time() - c0
        if warm > budget / 2:
            # one more run would not fit in the budget: report the warm-up run, flagged
            times, cpu_times = [warm], [warm_cpu]
            flagged_single = True
        else:
            while len(times) < cfg["repeats"] and time.perf_counter() - started < budget:
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
    except Exception as err:  # noqa: BLE001
        return {"status": "OOM" if _is_oom(err) else "error", "message": f"{type(err).__name__}: {err}"[:500]}

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        mem_method = "cuda max_memory_allocated - allocated before"
    else:
        peak = (_status_kb("VmHWM") or 0) * 1024 - base
        mem_method = "peak RSS (VmHWM after clear_refs) - RSS before" if reset_ok else "VmHWM - RSS before"
    sec = statistics.median(times)
    fft = fft_profile(step, cfg) if cfg.get("profile_fft") else {}
    return {
        **fft,
        "status": "ok",
        "sec_per_batch": sec,
        "cells_per_s": batch / sec,
        "peak_mem_mb": peak / 2**20,
        "n_timed": len(times),
        "single_cold_run": flagged_single,
        "times": times,
        "cpu_sec_per_batch": statistics.median(cpu_times),
        "mem_method": mem_method,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def fft_flops(n_fft: int, rows: int) -> float:
    """Conventional cost of ``rows`` real FFTs of size ``n_fft``: ``2.5 n log2 n`` each."""
    import math

    return rows * 2.5 * n_fft * math.log2(n_fft)


def fft_profile(step, cfg: dict) -> dict:
    """FFT share of one more step (``torch.profiler``) and its FLOP/s against the FFT roof.

    The share is the self CPU time of the real-FFT kernels (``aten::_fft_r2c``/``_fft_c2r``)
    over the whole step; their FLOP count comes from their input shapes. The roof is the best of
    ``torch.fft`` and SciPy's pocketfft on 16, 64 and 256 rows of the same size, alone, with the
    worker's threads: what this CPU's FFT libraries reach at best.
    """
    import time

    import numpy as np
    import scipy.fft
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    total = fft_time = flops = 0.0
    n_fft = None
    for event in prof.events():
        if event.cpu_parent is None:
            total += event.cpu_time_total
        if event.name in ("aten::_fft_r2c", "aten::_fft_c2r"):
            shape = event.input_shapes[0]
            n = shape[-1] if event.name == "aten::_fft_r2c" else 2 * (shape[-1] - 1)
            rows = int(np.prod(shape[:-1]))
            fft_time += event.self_cpu_time_total
            flops += fft_flops(n, rows)
            n_fft = n
    if not total or n_fft is None:
        return {}
    roofs = {}
    for rows in (16, 64, 256):  # in cache and out of it: the roof is the best
        signal = torch.rand(rows, n_fft)
        for name, forward, inverse in (
            ("torch", lambda x: torch.fft.rfft(x), lambda f: torch.fft.irfft(f, n=n_fft)),
            (
                "scipy",
                lambda x: torch.from_numpy(scipy.fft.rfft(x.numpy(), workers=torch.get_num_threads())),
                lambda f: torch.from_numpy(
                    scipy.fft.irfft(f.numpy(), n=n_fft, workers=torch.get_num_threads())
                ),
            ),
        ):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                inverse(forward(signal))
                best = min(best, time.perf_counter() - t0)
            roofs[f"{name}_{rows}_rows"] = 2 * fft_flops(n_fft, rows) / best / 1e9
    achieved = flops / (fft_time / 1e6) / 1e9
    return {
        "fft_share": fft_time / total,
        "fft_gflops": achieved,
        "fft_roof_gflops": max(roofs.values()),
        "fft_roof_by_backend": roofs,
        "n_fft": n_fft,
    }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    try:
        result = main(config)
    except Exception as err:  # noqa: BLE001
        status = "OOM" if _is_oom(err) else "error"
        result = {"status": status, "message": f"{type(err).__name__}: {err}"[:500]}
    print("RESULT " + json.dumps(result), flush=True)
