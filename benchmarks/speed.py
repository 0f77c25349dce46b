"""Speed and memory of the scHyena encoder at full length, against exact attention.

One command::

    python benchmarks/speed.py                                  # CPU, float32
    python benchmarks/speed.py --device cuda --dtype bf16       # GPU, bf16 autocast

For every model size (``default``: d_model 64, 2 layers; ``paper``: d_model 256, 4 layers), every
mode (``embed``: forward without autograd; ``train``: forward + backward of the masked loss, no
optimiser step), every sequence length and both mixers (``hyena``, and ``attention``: the same
encoder with every Hyena operator replaced by exact multi-head
``torch.nn.functional.scaled_dot_product_attention``), one fresh subprocess builds the model,
runs one warm-up batch and up to ``--repeats`` timed batches within ``--time-budget`` seconds,
and reports the median time per batch and the peak memory (see ``_speed_worker.py``). A
configuration that runs out of memory is marked ``OOM``; one that does not finish within the
budget is killed and marked ``timeout``, and longer lengths of the same series are then skipped.
Hyena and attention of the same length run back to back, so their ratio is measured side by
side. ``--before-after`` (default on) also times the network of an earlier commit
(``--before-commit``, extracted from git) against the current one at full length, alternately
in fresh processes, at the package's batch size and the sweep's, with the FFT share of the time
and the FFTs' FLOP/s against this CPU's FFT roof.

Writes ``speed_<device>.md`` (tables), ``speed_<device>.png`` (log-log plot) and
``speed_<device>.json`` (raw numbers) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FULL_LENGTH = 19972
MODELS = {
    "default": dict(d_model=64, n_layers=2, order=2, filter_hidden_dim=32, attention_heads=4),
    "paper": dict(d_model=256, n_layers=4, order=2, filter_hidden_dim=32, attention_heads=8),
}
DEFAULT_LENGTHS = [1000, 2000, 4000, 8000, 16000, FULL_LENGTH, 32000]
#: The last commit before the CPU work of issue 15 (cells in cache-sized chunks, the short
#: convolution's own backward): what ``--before-after`` compares against by default.
BEFORE_COMMIT = "5cf7b80"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="autocast dtype for projections and MLPs (the FFTs stay float32)",
    )
    p.add_argument(
        "--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="comma-separated numbers of genes"
    )
    p.add_argument("--models", default="default,paper", help="comma-separated: default, paper")
    p.add_argument("--mixers", default="hyena,attention")
    p.add_argument("--modes", default="embed,train")
    p.add_argument(
        "--batch-size", type=int, default=None, help="cells per batch (default: 2 on CPU, 32 on CUDA)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed batches after one warm-up (median)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds per configuration before it is killed as 'timeout' (default 60)",
    )
    p.add_argument(
        "--max-total-minutes",
        type=float,
        default=40.0,
        help="stop starting new configurations after this long; the rest are 'not run'",
    )
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=12.0,
        help="CPU only: RLIMIT_DATA of each worker, so attention fails as 'OOM' instead of "
        "swapping a shared machine (0: no limit)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: 1 on CPU, see benchmarks/README.md; 0: torch default)",
    )
    p.add_argument("--compile", action="store_true", help="compile the blocks with torch.compile")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--no-before-after",
        dest="before_after",
        action="store_false",
        help="skip the comparison with the network of --before-commit",
    )
    p.add_argument(
        "--before-commit",
        default=BEFORE_COMMIT,
        help=f"git commit whose src/schyena_tools/nn is 'before' (default {BEFORE_COMMIT})",
    )
    p.add_argument(
        "--before-after-batch-sizes",
        default="2,16",
        help="cells per batch of the before/after runs (16: the package's default batch size)",
    )
    p.add_argument("--before-after-models", default="default", help="models of the before/after runs")
    p.add_argument(
        "--before-after-rounds", type=int, default=2, help="alternating before/after rounds (median)"
    )
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "benchmarks"))
    p.add_argument("--tag", default=None, help="output file stem (default speed_<device>[_<dtype>])")
    p.add_argument(
        "--report-only",
        default=None,
        metavar="JSON",
        help="rebuild the markdown table and plot from a saved JSON, run nothing",
    )
    args = p.parse_args(argv)
    args.lengths = [int(v) for v in args.lengths.split(",") if v]
    args.models = [m for m in args.models.split(",") if m]
    args.mixers = [m for m in args.mixers.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    args.before_after_models = [m for m in args.before_after_models.split(",") if m]
    args.before_after_batch_sizes = [int(v) for v in args.before_after_batch_sizes.split(",") if v]
    if args.batch_size is None:
        args.batch_size = 32 if args.device.startswith("cuda") else 2
    if args.threads is None:
        args.threads = 0 if args.device.startswith("cuda") else 1
    if args.time_budget is None:
        args.time_budget = 60.0
    if args.tag is None:
        args.tag = f"speed_{args.device.split(':')[0]}" + ("" if args.dtype == "fp32" else f"_{args.dtype}")
    return args


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model}, {os.cpu_count()} cores{mem}"


def run_config(cfg: dict, hard_limit: float) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "_speed_worker.py"), json.dumps(cfg)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=hard_limit)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["wall_s"] = wall
            return result
    status = "OOM" if proc.returncode in (-9, 137) else "error"  # SIGKILL: the kernel's OOM killer
    return {"status": status, "wall_s": wall, "message": (proc.stderr or proc.stdout)[-800:]}


def fit_exponent(lengths, values):
    """Least-squares slope of log(value) against log(length)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(lengths, values, strict=True) if v and v > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def write_outputs(payload, out_dir, tag):
    payload["exponents"] = exponents(payload["results"])
    with open(os.path.join(out_dir, tag + ".json"), "w") as fh:
        json.dump(payload, fh, indent=1, default=float)
    md = report_markdown(payload)
    with open(os.path.join(out_dir, tag + ".md"), "w") as fh:
        fh.write(md)
    try:
        if payload["results"]:  # a before/after-only run has no sweep to plot
            plot(payload, os.path.join(out_dir, tag + ".png"))
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    return md


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        with open(args.report_only) as fh:
            payload = json.load(fh)
        stem = os.path.splitext(os.path.basename(args.report_only))[0]
        print(write_outputs(payload, os.path.dirname(os.path.abspath(args.report_only)), stem))
        return payload
    import torch

    os.makedirs(args.out, exist_ok=True)
    device_text = device_description(args.device)
    meta = {
        "device": args.device,
        "device_description": device_text,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "time_budget_s": args.time_budget,
        "memory_limit_gb": args.memory_limit_gb if args.device == "cpu" else None,
        "threads": args.threads or torch.get_num_threads(),
        "compile": args.compile,
        "gradient_checkpointing": args.gradient_checkpointing,
        "models": {m: MODELS[m] for m in args.models},
        "before_commit": args.before_commit if args.before_after else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(
        f"# device: {device_text}; torch threads {meta['threads']}; torch {torch.__version__}; "
        f"dtype {args.dtype}; "
        f"batch {args.batch_size}; budget {args.time_budget:.0f} s/config",
        flush=True,
    )
    deadline = time.monotonic() + 60 * args.max_total_minutes
    hard_limit = args.time_budget + 45.0  # process start, model build, and one step's overrun

    def base_cfg(model, mode, length):
        return dict(
            MODELS[model],
            device=args.device,
            dtype=args.dtype,
            length=length,
            mode=mode,
            batch_size=args.batch_size,
            repeats=args.repeats,
            time_budget=args.time_budget,
            memory_limit_gb=args.memory_limit_gb,
            threads=args.threads,
            compile=args.compile,
            gradient_checkpointing=args.gradient_checkpointing,
        )

    results = []
    stopped: dict[tuple, str] = {}
    for model in args.models:
        for length in args.lengths:
            for mode in args.modes:
                for mixer in args.mixers:
                    key = (model, mode, mixer)
                    row = dict(model=model, mode=mode, mixer=mixer, length=length, batch_size=args.batch_size)
                    if key in stopped:
                        row.update(status="skipped", message=stopped[key])
                    elif time.monotonic() > deadline:
                        row.update(status="not run", message="--max-total-minutes reached")
                    else:
                        cfg = dict(base_cfg(model, mode, length), mixer=mixer)
                        row.update(run_config(cfg, hard_limit))
                        if row["status"] in ("OOM", "timeout"):
                            stopped[key] = f"{row['status']} at {length} genes"
                    results.append(row)
                    print(_progress(row), flush=True)
    before_after = []
    if args.before_after:
        before_after = run_before_after(args, base_cfg, hard_limit, deadline)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    payload = {"meta": meta, "results": results, "before_after": before_after}
    md = write_outputs(payload, args.out, args.tag)
    print(md)
    return payload


def extract_commit(commit: str, path: str = "src/schyena_tools/nn") -> str:
    """``path`` of ``commit`` in a temporary folder; returns its ``src`` (what goes on ``sys.path``)."""
    import tempfile

    root = os.path.dirname(HERE)
    folder = tempfile.mkdtemp(prefix=f"schyena_nn_{commit}_")
    archive = subprocess.run(["git", "-C", root, "archive", commit, path], capture_output=True, check=False)
    if archive.returncode != 0:
        raise RuntimeError(
            f"git archive {commit} failed ({archive.stderr.decode().strip()[:200]}); run from a full "
            "clone, or pass --before-commit with a commit it has, or --no-before-after"
        )
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    return os.path.join(folder, "src")


def run_before_after(args, base_cfg, hard_limit: float, deadline: float) -> list[dict]:
    """``before`` (``--before-commit``) and ``after`` (this checkout), alternately, full length."""
    source = extract_commit(args.before_commit)
    entries = []
    for model in args.before_after_models:
        for batch in args.before_after_batch_sizes:
            for mode in args.modes:
                runs: dict[str, list] = {"before": [], "after": []}
                for _ in range(args.before_after_rounds):
                    for impl in ("before", "after"):
                        if time.monotonic() > deadline:
                            continue
                        cfg = dict(base_cfg(model, mode, FULL_LENGTH), mixer="hyena", compile=False)
                        # a training batch of 16 before the change takes ~20 s: give every
                        # run room for its warm-up, 3 repeats and the profiled step
                        budget = max(args.time_budget, 120.0)
                        cfg.update(batch_size=batch, profile_fft=True, time_budget=budget)
                        if impl == "before":
                            cfg["source"] = source
                        runs[impl].append(run_config(cfg, max(hard_limit, 300.0)))
                entry = dict(model=model, mode=mode, length=FULL_LENGTH, batch_size=batch)
                entry.update({impl: summarise_rounds(rs) for impl, rs in runs.items()})
                entry["rounds"] = runs
                entries.append(entry)
                print("before/after", model, mode, batch, {k: _fmt_time(entry[k]) for k in runs}, flush=True)
    return entries


def summarise_rounds(rounds: list[dict]) -> dict:
    """Median over the rounds that finished (time, memory, FFT figures)."""
    import statistics

    ok = [r for r in rounds if r.get("status") == "ok"]
    if not ok:
        return rounds[-1] if rounds else {"status": "not run"}
    out = {"status": "ok", "n_rounds": len(ok)}
    for key in ("sec_per_batch", "cells_per_s", "peak_mem_mb", "fft_share", "fft_gflops", "fft_roof_gflops"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def _fmt_time(r):
    if r.get("status") != "ok":
        return r.get("status")
    return f"{r['sec_per_batch']:.3f} s/batch"


def _progress(row):
    text = f"{row['model']:8s} {row['mode']:6s} {row['mixer']:10s} L={row['length']:6d} "
    if row["status"] == "ok":
        return text + (
            f"{row['cells_per_s']:9.2f} cells/s  {row['sec_per_batch']:8.3f} s/batch  "
            f"{row['peak_mem_mb']:9.1f} MB  (wall {row['wall_s']:.0f} s)"
        )
    return text + row["status"] + (f" ({row.get('message', '')[:200]})" if row.get("message") else "")


def exponents(results, lo=2000, hi=32000):
    """Log-log slopes of time per cell and peak memory over ``lo <= L <= hi`` (ok entries only)."""
    out = []
    series = sorted({(r["model"], r["mode"], r["mixer"]) for r in results})
    for model, mode, mixer in series:
        rows = [
            r
            for r in results
            if (r["model"], r["mode"], r["mixer"]) == (model, mode, mixer)
            and r["status"] == "ok"
            and lo <= r["length"] <= hi
        ]
        lengths = [r["length"] for r in rows]
        upper = [r for r in rows if r["length"] >= 8000]
        out.append(
            dict(
                model=model,
                mode=mode,
                mixer=mixer,
                n_points=len(rows),
                range=f"{min(lengths)}-{max(lengths)}" if lengths else "",
                time_exponent=fit_exponent(lengths, [r["sec_per_batch"] for r in rows]),
                memory_exponent=fit_exponent(lengths, [r["peak_mem_mb"] for r in rows]),
                time_exponent_8k=fit_exponent(
                    [r["length"] for r in upper], [r["sec_per_batch"] for r in upper]
                ),
                memory_exponent_8k=fit_exponent(
                    [r["length"] for r in upper], [r["peak_mem_mb"] for r in upper]
                ),
                cpu_time_exponent=fit_exponent(lengths, [r.get("cpu_sec_per_batch") for r in rows])
                if all(r.get("cpu_sec_per_batch") for r in rows)
                else None,
            )
        )
    return out


def _cell(r, budget):
    if r is None:
        return "", ""
    s = r["status"]
    if s == "ok":
        mark = "†" if r.get("single_cold_run") else ""
        return f"{r['cells_per_s']:.3g}{mark}", f"{r['peak_mem_mb']:.0f}"
    if s == "timeout":
        return f"timeout (> {budget:.0f} s/batch)", "-"
    if s == "skipped":
        return f"skipped ({r.get('message', '')})", "-"
    return s, "-"


def report_markdown(payload) -> str:
    meta, results = payload["meta"], payload["results"]
    budget = meta["time_budget_s"]
    lines = [
        f"# scHyena speed benchmark: {meta['device']} ({meta['dtype']})",
        "",
        f"* Device: **{meta['device_description']}**, torch threads per worker: {meta['threads']}",
        f"* torch {meta['torch']}, Python {meta['python']}; dtype {meta['dtype']}"
        + (" (autocast; FFTs in float32)" if meta["dtype"] != "fp32" else ""),
        f"* Batch size {meta['batch_size']} cells; one warm-up batch, then up to {meta['repeats']} timed "
        f"batches (median) within a budget of {budget:.0f} s per configuration; each configuration in a "
        "fresh process.",
        "* `embed`: forward without autograd. `train`: forward + backward of the masked-expression loss "
        "(15% masked), no optimiser step.",
        "* Memory: "
        + (
            "peak CUDA memory allocated during the timed batches, minus model and inputs."
            if meta["device"].startswith("cuda")
            else "peak resident memory (VmHWM after resetting it) minus the resident size before the "
            f"first batch, i.e. what the batches add on top of model and inputs; workers are "
            f"limited to {meta['memory_limit_gb']} GB (RLIMIT_DATA)."
        ),
        "* Attention: same encoder, each Hyena operator replaced by exact multi-head softmax attention "
        "(`F.scaled_dot_product_attention`, non-causal). Speed ratio = attention time / Hyena time.",
        "* † = the warm-up batch alone took more than half the budget, so that single (cold) run is "
        "reported.",
        f"* Run {meta['started']} - {meta.get('finished', '')}.",
        "",
    ]
    for model in meta["models"]:
        spec = meta["models"][model]
        for mode in sorted({r["mode"] for r in results}):
            lines += [
                f"## {model} model (d_model {spec['d_model']}, {spec['n_layers']} layers), {mode} "
                f"- {meta['device_description']}, {meta['dtype']}",
                "",
                "| genes | Hyena cells/s | Hyena peak MB | attention cells/s | attention peak MB "
                "| speed ratio | memory ratio |",
                "|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for length in sorted({r["length"] for r in results}):
                h = _find(results, model, mode, "hyena", length)
                a = _find(results, model, mode, "attention", length)
                hc, hm = _cell(h, budget)
                ac, am = _cell(a, budget)
                ratio = mratio = ""
                if h and h["status"] == "ok" and a:
                    if a["status"] == "ok":
                        ratio = f"{a['sec_per_batch'] / h['sec_per_batch']:.1f}x"
                        if h["peak_mem_mb"] > 0:
                            mratio = f"{a['peak_mem_mb'] / h['peak_mem_mb']:.1f}x"
                    elif a["status"] == "timeout":
                        ratio = f">= {budget / h['sec_per_batch']:.0f}x"
                lines.append(f"| {length:,} | {hc} | {hm} | {ac} | {am} | {ratio} | {mratio} |")
            lines.append("")
    lines += [
        "## Fitted log-log exponents (time per cell and peak memory against genes, 2k-32k)",
        "",
        f"Device: {meta['device_description']}, {meta['dtype']}.",
        "",
        "Fitted over the measured (`ok`) lengths between 2k and 32k; the last two columns refit over "
        "8k-32k only, where fixed per-batch costs matter least.",
        "",
        "`CPU-time exponent`: the same fit on the worker's process CPU time instead of wall-clock time "
        "(with one thread it is insensitive to other jobs on a shared machine).",
        "",
        "| model | mode | mixer | points | range | time exponent | memory exponent "
        "| time exp. (8k-32k) | memory exp. (8k-32k) | CPU-time exponent |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]

    def fmt(v):
        return "" if v is None else f"{v:.2f}"

    for e in payload["exponents"]:
        lines.append(
            f"| {e['model']} | {e['mode']} | {e['mixer']} | {e['n_points']} | {e['range']} "
            f"| {fmt(e['time_exponent'])} | {fmt(e['memory_exponent'])} "
            f"| {fmt(e.get('time_exponent_8k'))} | {fmt(e.get('memory_exponent_8k'))} "
            f"| {fmt(e.get('cpu_time_exponent'))} |"
        )
    if payload.get("before_after"):
        lines += before_after_markdown(payload)
    return "\n".join(lines) + "\n"


def before_after_markdown(payload) -> list[str]:
    """The before/after table (medians over the alternating rounds)."""
    meta = payload["meta"]
    entries = [e for e in payload["before_after"] if "before" in e]
    if not entries:
        return []
    lines = [
        "",
        "## Before / after (same run, alternating fresh processes, same weights, Hyena mixer)",
        "",
        f"Device: {meta['device_description']}, {meta['dtype']}, {meta['threads']} thread(s). "
        f"`before` is `src/schyena_tools/nn` of commit {meta.get('before_commit', '?')}; `after` is "
        "this checkout. FFT share: self time of the real-FFT kernels over the step "
        "(`torch.profiler`); FFT GFLOP/s: their `2.5 n log2 n` FLOPs over that time; roof: the best "
        "of `torch.fft` and SciPy on 16, 64 or 256 rows of the same size alone.",
        "",
        "| model | mode | batch | before s/batch | after s/batch | speed-up | before / after peak MB "
        "| FFT share before / after | FFT GFLOP/s before / after (roof) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def seconds(r):
        return f"{r['sec_per_batch']:.3f}" if r.get("status") == "ok" else str(r.get("status", "-"))

    def value(r, key, spec):
        return format(r[key], spec) if r.get(key) is not None else "-"

    for e in entries:
        b, a = e["before"], e["after"]
        ok = b.get("status") == "ok" and a.get("status") == "ok"
        speedup = f"**{b['sec_per_batch'] / a['sec_per_batch']:.2f}x**" if ok else ""
        lines.append(
            f"| {e['model']} | {e['mode']} | {e['batch_size']} | {seconds(b)} | {seconds(a)} | {speedup} "
            f"| {value(b, 'peak_mem_mb', '.0f')} / {value(a, 'peak_mem_mb', '.0f')} "
            f"| {value(b, 'fft_share', '.0%')} / {value(a, 'fft_share', '.0%')} "
            f"| {value(b, 'fft_gflops', '.1f')} / {value(a, 'fft_gflops', '.1f')} "
            f"({value(a, 'fft_roof_gflops', '.1f')}) |"
        )
    return lines


def _find(results, model, mode, mixer, length):
    for r in results:
        if (r["model"], r["mode"], r["mixer"], r["length"]) == (model, mode, mixer, length):
            return r
    return None


def plot(payload, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, results = payload["meta"], payload["results"]
    modes = sorted({r["mode"] for r in results})
    fig, axes = plt.subplots(2, len(modes), figsize=(5.5 * len(modes), 8), squeeze=False)
    styles = {"hyena": "-o", "attention": "--s"}
    colors = {"default": "tab:blue", "paper": "tab:red"}
    for j, mode in enumerate(modes):
        for model in meta["models"]:
            for mixer in ("hyena", "attention"):
                key = (model, mode, mixer)
                rows = sorted(
                    (
                        r
                        for r in results
                        if (r["model"], r["mode"], r["mixer"]) == key and r["status"] == "ok"
                    ),
                    key=lambda r: r["length"],
                )
                if not rows:
                    continue
                n = [r["length"] for r in rows]
                label = f"{mixer} ({model})"
                axes[0, j].loglog(
                    n,
                    [r["sec_per_batch"] / r["batch_size"] for r in rows],
                    styles[mixer],
                    color=colors.get(model),
                    label=label,
                )
                axes[1, j].loglog(
                    n,
                    [max(r["peak_mem_mb"], 1e-3) for r in rows],
                    styles[mixer],
                    color=colors.get(model),
                    label=label,
                )
                failed = [
                    r
                    for r in results
                    if (r["model"], r["mode"], r["mixer"]) == (model, mode, mixer)
                    and r["status"] in ("timeout", "OOM")
                ]
                for r in failed:
                    where = (r["length"], rows[-1]["sec_per_batch"] / r["batch_size"])
                    axes[0, j].annotate(r["status"], where, color=colors.get(model), fontsize=8, rotation=30)
        axes[0, j].set_title(f"{mode}: time per cell")
        axes[0, j].set_ylabel("seconds per cell")
        axes[1, j].set_title(f"{mode}: peak memory added by a batch of {meta['batch_size']}")
        axes[1, j].set_ylabel("MB")
        for i in range(2):
            axes[i, j].set_xlabel("genes (sequence length)")
            axes[i, j].grid(True, which="both", alpha=0.3)
            axes[i, j].axvline(FULL_LENGTH, color="grey", lw=0.8, ls=":")
        axes[0, j].legend(fontsize=8)
    title = f"scHyena vs attention - {meta['device_description']}, {meta['dtype']}, torch {meta['torch']}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
