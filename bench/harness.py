"""Benchmark harness: implementations plug in by name; interleaved timing; FLOP and memory accounting.

An implementation is any object with

    name: str
    setup(config, dtype) -> step_fn      # step_fn() runs ONE train step: forward,
                                         # backward, SGD update; may return the loss
optionally
    traces_memory: bool                  # True if its buffers are visible to tracemalloc
                                         # (NumPy-based); default False
    info() -> dict                       # extra facts for the report (version, threads)

setup() builds everything (weights from bench.configs.init_params, batch from
bench.configs.make_batch, buffers) outside the timed region. It may raise
NotImplementedError for a config it does not support; that cell is reported as skipped.
Implementations are registered as "module:attribute" strings (imported lazily, so a
missing torch or a missing bench/nnspec_impl.py only skips that implementation) or as
zero-argument factories, via register().
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import statistics
import time
import tracemalloc
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from bench.configs import CONFIGS, activation_bytes, activation_elements, flops


@runtime_checkable
class Implementation(Protocol):
    name: str

    def setup(self, config, dtype) -> Callable[[], Any]: ...


REGISTRY: dict[str, str | Callable[[], Implementation]] = {
    "numpy": "bench.numpy_impl:NumpyImpl",
    "torch": "bench.torch_impl:TorchImpl",
    "nnspec": "bench.nnspec_impl:NnspecImpl",  # skipped until that file exists
    "nnspec-nofuse": "bench.nnspec_impl:NnspecNoFuseImpl",   # every loop on the NumPy path
    "nnspec-npsig": "bench.nnspec_impl:NnspecNumpySigmoidImpl",   # loop steps' sigmoid by NumPy
    "nnspec-noseg": "bench.nnspec_impl:NnspecNoSegmentsImpl",   # loop steps' elementwise runs op by op
    "nnspec-noblock": "bench.nnspec_impl:NnspecNoBlocksImpl",   # loop steps' products by a weight in one piece
    "nnspec-noplain": "bench.nnspec_impl:NnspecNoPlainKernelsImpl",   # plain steps' activations and loss by NumPy
}


def register(name: str, factory: str | Callable[[], Implementation]) -> None:
    REGISTRY[name] = factory


def load(name: str) -> Implementation:
    """Instantiate a registered implementation; ImportError if its module or dependency is missing."""
    factory = REGISTRY[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    impl = factory()
    if not isinstance(impl, Implementation):
        raise TypeError(f"{name}: {impl!r} lacks name/setup()")
    return impl


# ---------------------------------------------------------------- machine

def blas_threads() -> tuple[int, str]:
    """Threads NumPy's BLAS uses, and how we know. Other implementations should match it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if os.environ.get(var, "").isdigit():
                return int(os.environ[var]), f"${var}"
        return os.cpu_count() or 1, "assumed os.cpu_count() (threadpoolctl not installed)"
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    mine = [i for i in blas if "numpy" in i["filepath"]] or blas  # not torch's own BLAS
    if not mine:
        return os.cpu_count() or 1, "assumed os.cpu_count() (no BLAS found by threadpoolctl)"
    return mine[0]["num_threads"], f"threadpoolctl: {mine[0]['internal_api']} {mine[0]['version']}"


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    threads, source = blas_threads()
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas_threads": threads, "blas_threads_source": source,
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # older NumPy: no dict mode
        info["blas"] = "unknown"
    return info


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process): the
    difference over a run is what other processes took. Linux only; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def matmul_peak(n=2048, repeats=5, threads=None) -> dict[str, float]:
    """Best-of-`repeats` GFLOP/s of an n x n float32 product (2 n^3 FLOPs): NumPy's BLAS
    and, if installed, torch's."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    c = np.empty_like(a)
    runs = {"numpy": lambda: np.matmul(a, b, out=c)}
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        ta, tb, tc = (torch.from_numpy(m) for m in (a, b, c.copy()))
        runs["torch"] = lambda: torch.mm(ta, tb, out=tc)
    except ImportError:
        pass
    out = {}
    for name, fn in runs.items():
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = 2 * n**3 / best / 1e9
    return out


def _timed(fn, inner=1) -> float:
    return _timed_both(fn, inner)[0]


def _timed_both(fn, inner=1) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) per call. On a loaded machine the CPU time
    leaves out the time the process waited for a core (not the slowdown of shared caches)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner


# ---------------------------------------------------------------- measuring

def time_interleaved(steps: dict[str, Callable], repeats: int, warmup: int,
                     min_sample_s: float, settle_s: float = 0.15,
                     cpu: dict | None = None) -> tuple[dict, dict, dict]:
    """Warm each step up, then time them round-robin so that machine noise (other
    processes, frequency changes) hits every implementation alike. A sample runs the
    step `inner` times, chosen so a sample lasts >= min_sample_s (timer resolution and
    call overhead stay negligible for tiny configs). Before a sample that follows another
    implementation's, sleep settle_s: OpenBLAS worker threads busy-wait ~0.1 s after
    their last call, and on 2 cores that spinning halved torch's speed when interleaved.
    Returns (seconds-per-step samples, inner counts, loss of the very first step); ``cpu``, if
    given, receives the CPU seconds per step of each sample (process time)."""
    first_loss, inner = {}, {}
    for name, fn in steps.items():
        loss = fn()
        first_loss[name] = None if loss is None else float(loss)
        for _ in range(max(warmup - 1, 0)):
            fn()
        inner[name] = max(1, math.ceil(min_sample_s / _timed(fn)))
    samples = {name: [] for name in steps}
    names = list(steps)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: no collector pauses inside a sample
    last = None
    try:
        for r in range(repeats):
            k = r % len(names)  # rotate who goes first
            for name in names[k:] + names[:k]:
                if name != last:
                    time.sleep(settle_s)
                last = name
                wall, cpu_s = _timed_both(steps[name], inner[name])
                samples[name].append(wall)
                if cpu is not None:
                    cpu.setdefault(name, []).append(cpu_s)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, inner, first_loss


def traced_memory(impl, cfg, dtype) -> dict[str, int]:
    """tracemalloc over a fresh setup: bytes held after setup + two steps (weights, batch,
    buffers), and the peak during the next step (held + temporaries). A throwaway setup and step
    come first, so that what a first step loads once per process (modules, such as numba's when
    a kernel is compiled at the first step, and the kernels) is not counted as the step's."""
    impl.setup(cfg, dtype)()
    gc.collect()
    tracemalloc.start()
    try:
        fn = impl.setup(cfg, dtype)
        fn()  # lazily allocated buffers appear here,
        fn()  # and those made at a second step (nnspec's prepared pass of a batch geometry)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"held_bytes": held, "step_peak_bytes": peak, "step_transient_bytes": peak - held}


def run_suite(config_names, impl_names=None, repeats=20, warmup=3, min_sample_ms=20.0,
              settle_ms=150.0, dtype=np.float32, memory=True, peak=True, log=print) -> dict:
    dtype = np.dtype(dtype)
    info = machine_info()
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    impls, skipped = {}, {}
    for name in impl_names or list(REGISTRY):
        try:
            impls[name] = load(name)
        except ImportError as e:
            skipped[name] = f"not available: {e}"
            log(f"[skip] {name}: {e}")
    info["impls"] = {n: (i.info() if hasattr(i, "info") else {}) for n, i in impls.items()}
    # Measured before and after the runs; the best is the peak (load from other
    # processes can only lower a measurement).
    peaks = {"start": matmul_peak(threads=info["blas_threads"])} if peak else {}
    machine_peak = None
    results = []
    for cname in config_names:
        cfg = CONFIGS[cname]
        steps = {}
        for name, impl in impls.items():
            try:
                steps[name] = impl.setup(cfg, dtype)
            except NotImplementedError as e:
                log(f"[skip] {name} on {cname}: {e}")
                results.append({"config": cname, "impl": name, "skipped": str(e) or "unsupported"})
        if not steps:
            continue
        log(f"[run] {cname}: {', '.join(steps)}")
        cpu: dict = {}
        samples, inner, first_loss = time_interleaved(steps, repeats, warmup, min_sample_ms / 1e3,
                                                      settle_ms / 1e3, cpu)
        del steps  # free buffers before the memory runs
        n_flops = flops(cfg)
        medians = {n: statistics.median(s) for n, s in samples.items()}
        cpu_medians = {n: statistics.median(s) for n, s in cpu.items()}
        for name, s in samples.items():
            med = medians[name]
            row = {
                "config": cname, "impl": name, "inner": inner[name],
                "samples_ms": [x * 1e3 for x in s],
                "min_ms": min(s) * 1e3, "median_ms": med * 1e3, "max_ms": max(s) * 1e3,
                "vs_torch": med / medians["torch"] if "torch" in medians else None,
                "vs_numpy": med / medians["numpy"] if "numpy" in medians else None,
                "cpu_samples_ms": [x * 1e3 for x in cpu[name]], "cpu_median_ms": cpu_medians[name] * 1e3,
                "cpu_vs_torch": cpu_medians[name] / cpu_medians["torch"] if "torch" in cpu_medians else None,
                "cpu_vs_numpy": cpu_medians[name] / cpu_medians["numpy"] if "numpy" in cpu_medians else None,
                "flops": n_flops, "gflops": n_flops / med / 1e9,
                "pct_peak": None,  # filled in once the peak is known
                "first_loss": first_loss[name],
                "activation_bytes": activation_bytes(cfg, dtype),
                "activation_elements": activation_elements(cfg),
            }
            note = getattr(impls[name], "notes", {}).get(cname)
            if note:
                row["note"] = note
            if memory and getattr(impls[name], "traces_memory", False):
                row["memory"] = traced_memory(impls[name], cfg, dtype)
            results.append(row)
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu_end, wall = cpu_seconds(), time.perf_counter() - wall_start
    if cpu_start and cpu_end:  # share of all cores that other processes used during the run
        other = (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])
        info["other_processes_cpu_share"] = max(other, 0.0) / (wall * (os.cpu_count() or 1))
    if peak:
        peaks["end"] = matmul_peak(threads=info["blas_threads"])
        machine_peak = max(v for p in peaks.values() for v in p.values())
        for row in results:
            if "gflops" in row:
                row["pct_peak"] = 100 * row["gflops"] / machine_peak
    return {"machine": info, "matmul_peak_gflops": peaks,
            "machine_peak_gflops": machine_peak,
            "settings": {"repeats": repeats, "warmup": warmup, "min_sample_ms": min_sample_ms,
                         "settle_ms": settle_ms, "dtype": dtype.name},
            "configs": {c: dataclasses.asdict(CONFIGS[c]) for c in config_names},
            "skipped": skipped, "results": results}


# ---------------------------------------------------------------- reporting

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(report: dict) -> str:
    m = report["machine"]
    peaks = "; ".join(f"at {when}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
                      for when, p in report["matmul_peak_gflops"].items())
    if peaks:
        peaks += f"; %peak uses {report['machine_peak_gflops']:.1f}"
    lines = [
        f"CPU: {m['cpu']} ({m['cpu_count']} logical cores); NumPy {m['numpy']}, BLAS {m['blas']}",
        f"threads: {m['blas_threads']} ({m['blas_threads_source']}); "
        + "; ".join(f"{n}: {i}" for n, i in m["impls"].items() if i),
        f"float32 matmul peak GFLOP/s (2048^3, best of 5): {peaks or 'not measured'}",
        "load average (1/5/15 min) at start / end: "
        + " / ".join(" ".join(f"{x:.2f}" for x in la) for la in (m["loadavg_start"], m["loadavg_end"]) if la)
        + (f"; other processes used {100 * m['other_processes_cpu_share']:.0f}% of the cores "
           "during the run" if "other_processes_cpu_share" in m else ""),
        f"dtype {report['settings']['dtype']}, {report['settings']['repeats']} interleaved "
        f"samples per implementation",
        "",
    ]
    head = ["config", "impl", "min ms", "median ms", "max ms", "/torch", "/numpy",
            "cpu ms", "cpu/torch", "cpu/numpy", "GFLOP/s", "%peak", "loss@1", "traced MB", "act MB"]
    rows, notes = [], []
    for r in report["results"]:
        if "skipped" in r:
            rows.append([r["config"], r["impl"]] + ["-"] * (len(head) - 2))
            notes.append(f"skipped {r['impl']} on {r['config']}: {r['skipped']}")
            continue
        mem = r.get("memory")
        if r.get("note"):
            notes.append(f"{r['impl']} on {r['config']}: {r['note']}")
        rows.append([
            r["config"], r["impl"], _fmt(r["min_ms"], ".3f"), _fmt(r["median_ms"], ".3f"),
            _fmt(r["max_ms"], ".3f"), _fmt(r["vs_torch"], ".2f"), _fmt(r["vs_numpy"], ".2f"),
            _fmt(r.get("cpu_median_ms"), ".3f"), _fmt(r.get("cpu_vs_torch"), ".2f"),
            _fmt(r.get("cpu_vs_numpy"), ".2f"),
            _fmt(r["gflops"], ".1f"), _fmt(r["pct_peak"], ".1f"), _fmt(r["first_loss"], ".4f"),
            _fmt(mem and mem["step_peak_bytes"] / 2**20, ".2f"),
            _fmt(r["activation_bytes"] / 2**20, ".2f"),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def fmt_row(cells):  # names left-aligned, numbers right-aligned
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    lines += [fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows]
    lines += ["", "/torch, /numpy: ratio of medians (below 1 = faster). cpu ms: median process "
              "(CPU) time per step, and its ratios: on a loaded machine they leave out waiting for a "
              "core, so they read steadier than wall times (shared caches still slow them). GFLOP/s: matrix-product "
              "FLOPs (configs.flops) / median. traced MB: tracemalloc peak during a step "
              "(weights, buffers, temporaries). act MB: analytic size of the activations the "
              "backward pass needs."]
    lines += [f"skipped {n}: {why}" for n, why in report["skipped"].items()] + notes
    lines += [f"WARNING: {w}" for w in loss_mismatches(report) + noisy(report)]
    return "\n".join(lines)


def loss_mismatches(report, rtol=1e-3) -> list[str]:
    """All implementations start from the same weights and batch, so their first-step
    losses must agree (to float32 rounding); a mismatch means a different computation."""
    out, ref = [], {}
    for r in report["results"]:
        loss = r.get("first_loss")
        if loss is None:
            continue
        c = r["config"]
        ref.setdefault(c, (r["impl"], loss))
        name, want = ref[c]
        if abs(loss - want) > rtol * abs(want):
            out.append(f"{c}: first-step loss of {r['impl']} is {loss:.6f}, {name} has {want:.6f}")
    return out


def noisy(report, factor=1.25) -> list[str]:
    """Rows whose median is well above their minimum: something else was using the cores."""
    return [f"{r['config']}/{r['impl']}: median {r['median_ms'] / r['min_ms']:.2f}x the minimum "
            "(other load on the machine?)"
            for r in report["results"] if "median_ms" in r and r["median_ms"] > factor * r["min_ms"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, from: {', '.join(CONFIGS)} (default all)")
    ap.add_argument("--impls", default=None,
                    help=f"comma-separated, from: {', '.join(REGISTRY)} (default all available)")
    ap.add_argument("--repeats", type=int, default=20, help="timed samples per implementation")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    ap.add_argument("--min-sample-ms", type=float, default=20.0,
                    help="repeat short steps within one sample until it lasts this long")
    ap.add_argument("--settle-ms", type=float, default=150.0,
                    help="idle time before each sample, so the previous implementation's "
                         "BLAS threads stop spinning")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--json", metavar="PATH", help="also write the full results here")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    impls = args.impls.split(",") if args.impls else None
    if impls and (bad := [i for i in impls if i not in REGISTRY]):
        ap.error(f"unknown implementation(s) {bad}; registered: {list(REGISTRY)}")
    report = run_suite(configs, impls, args.repeats, args.warmup, args.min_sample_ms,
                       args.settle_ms, np.dtype(args.dtype), memory=not args.no_memory, peak=not args.no_peak)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nfull results: {args.json}")
    return 0
