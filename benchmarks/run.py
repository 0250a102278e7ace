#!/usr/bin/env python
"""One LSTM training step, unrolled versus looped, against a hand-written numpy floor and peers.

    python benchmarks/run.py              the full suite (about 20-30 minutes on 2 cores)
    python benchmarks/run.py --quick      tiny and medium at T in 1, 10, 50: well under a minute
    python benchmarks/run.py --impl "numpy floor,minigrad looped" --size medium --T 50,200

Method (see benchmarks/README.md): each implementation runs in its own worker process (torch's
OpenMP threads and allocator state would otherwise disturb numpy's timings); for every
configuration each worker builds its implementation, checks its loss and gradients against the
numpy floor (a wrong one is reported WRONG and not timed), measures memory, then the workers are
timed one after another, round by round, in a rotating order, so machine drift hits all alike.
In a round a worker warms up, then times repeated runs and reports their median; the figure is
the median over rounds. Ratios are to the numpy floor of the same configuration and round set.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:               # benchmark the checkout this file is in
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import impls as IM  # noqa: E402

T_ALL = (1, 10, 50, 200, 1000)
T_QUICK = (1, 10, 50)
LONG_T = 1000                # unrolled peers are skipped from here on (minutes, gigabytes)
SCHEMA = 1
BUSY_CORES = 0.3             # other processes using more CPU than this during a timed round: retime it

# Libraries a worker imports as soon as it starts (all workers start together, so the slow
# imports overlap instead of adding up).
PRELOAD = {"torch fused": ["torch"], "torch eager": ["torch"], "jax scan": ["jax", "jax.numpy"],
           "MyGrad": ["mygrad"], "HIPS autograd": ["autograd"],
           "minigrad looped": ["minigrad"], "minigrad unrolled": ["minigrad"]}


# ======================================================================================= worker

def _proc_status(key):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_rss_peak():
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim():
    """Hand the C heap's free memory back to the OS (glibc), so an RSS rise measures what a step
    needs rather than what earlier steps left cached in the heap."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _mb(n):
    return None if n is None else n / 2 ** 20


def _measure_memory(bench):
    """Peak extra memory during one step and the memory a forward keeps for backward, measured
    by tracemalloc (numpy's allocations are traced) and by RSS (for libraries with their own
    allocator). Separate runs: tracemalloc slows allocation-heavy code and costs RSS itself."""
    out = {}

    def settle():
        if bench.clear:
            bench.clear()
        gc.collect()

    settle()
    if bench.memory == "rss" and _reset_rss_peak():     # RSS where tracemalloc cannot see the allocator
        _malloc_trim()
        r0 = _proc_status("VmRSS")
        _reset_rss_peak()
        res = bench.step()
        out["rss_peak_mb"] = _mb(max(0, _proc_status("VmHWM") - r0))
        del res
        settle()
        _malloc_trim()
        r0 = _proc_status("VmRSS")
        kept = bench.forward()
        out["kept_rss_mb"] = _mb(max(0, _proc_status("VmRSS") - r0))
        del kept
    settle()
    import tracemalloc
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        res = bench.step()
        out["peak_mb"] = _mb(tracemalloc.get_traced_memory()[1] - base)
        del res
        settle()
        base = tracemalloc.get_traced_memory()[0]
        kept = bench.forward()
        out["kept_mb"] = _mb(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    if bench.graph_nodes is not None:
        out["graph_nodes"] = int(bench.graph_nodes(kept))
    del kept
    if bench.saved_nbytes is not None:     # preallocated buffers: tracemalloc sees no allocation
        out["kept_mb"] = _mb(bench.saved_nbytes)
    settle()
    return out


def _copy_result(res):
    loss, grads = res
    return float(loss), tuple(np.array(g, dtype=np.float64) for g in grads)


def _setup(state, req):
    state.clear()
    gc.collect()
    name, (B, I, H), T, dtype = req["impl"], req["size"], req["T"], np.dtype(req["dtype"])
    X, U, W, b = IM.make_inputs(B, T, I, H, dtype, seed=req.get("seed", 0))
    t_setup = time.perf_counter()
    # The reference every implementation is checked against: the numpy floor. The floor itself
    # is checked against the plain step-by-step reference, run in float64.
    if name == "numpy floor":
        ref = IM.reference_lstm(*(a.astype(np.float64) for a in (X, U, W, b)))
        against = "plain numpy reference (float64)"
    else:
        ref = _copy_result(IM.build("numpy floor", X, U, W, b).step())
        against = "numpy floor"
    gc.collect()
    try:
        bench = IM.build(name, X, U, W, b)
    except Exception as err:
        return {"status": "error", "error": f"{type(err).__name__}: {err}".strip(),
                "traceback": traceback.format_exc()}
    errs = {}
    ok = True
    for _ in range(2):      # twice: a gradient accumulated across steps by mistake shows up here
        good, e = IM.compare(bench.step(), ref, dtype)
        ok = ok and good
        errs = {k: max(v, errs.get(k, 0.0)) for k, v in e.items()}
    reply = {"status": "ok" if ok else "wrong", "check": errs, "checked_against": against,
             "tolerance": IM.tolerance(dtype), "info": bench.info, "memory_kind": bench.memory}
    if ok:
        reply.update(_measure_memory(bench))
        state["bench"] = bench
    reply["setup_s"] = time.perf_counter() - t_setup
    return reply


def _time(fn, reps, budget, warmup, min_reps, max_reps):
    gc.collect()
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    if not reps:
        reps = max(min_reps, min(max_reps, math.ceil(budget / max(min(warm), 1e-9))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()                                   # the result (and any graph) is freed in here too
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), reps


def _time_req(state, req):
    bench = state["bench"]
    kw = {k: req[k] for k in ("reps", "warmup", "min_reps", "max_reps")}
    step, n_step = _time(bench.step, budget=req["budget"], **kw)
    fwd, n_fwd = _time(bench.forward, budget=req["budget"] / 2, **kw)
    return {"step_s": step, "step_reps": n_step, "forward_s": fwd, "forward_reps": n_fwd}


def worker_main(impl):
    proto = os.fdopen(os.dup(1), "w", buffering=1)     # the protocol's own channel...
    os.dup2(2, 1)                                       # ...so anything printed goes to the log
    sys.stdout = sys.stderr
    for mod in PRELOAD.get(impl, []):
        try:
            __import__(mod)
        except Exception:
            pass                                        # reported by the factory at setup
    state = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        try:
            reply = {"setup": _setup, "time": _time_req}[req["cmd"]](state, req)
        except Exception as err:
            reply = {"status": "error", "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


# ======================================================================================= runner

class WorkerFailed(RuntimeError):
    pass


class Worker:
    """One implementation's process, spoken to in JSON lines on its stdin and stdout."""

    def __init__(self, impl, logdir, env):
        self.impl, self.logdir, self.env = impl, logdir, env
        self.log = Path(logdir) / (impl.replace(" ", "_") + ".log")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", impl],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"), text=True, bufsize=1, cwd=str(ROOT), env=self.env)

    def alive(self):
        return self.proc.poll() is None

    def restart(self):
        self.kill()
        return Worker(self.impl, self.logdir, self.env)

    def cpu_ticks(self):
        """CPU time used so far by every thread of the worker (clock ticks), or None."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return None

    def request(self, msg, timeout):
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._died()) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerFailed(f"no answer within {timeout:.0f} s (killed)")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(self._died())
        return json.loads(line)

    def _died(self):
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        try:
            tail = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        except OSError:
            tail = []
        return f"worker exited with code {self.proc.returncode}" + (f": {tail[0].strip()}" if tail else "")

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def close(self):
        if self.alive():
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


def _system_busy():
    """Jiffies the whole machine has spent busy (including time stolen by the hypervisor)."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:9]]
        return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    except (OSError, ValueError, IndexError):
        return None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def quiesce(workers, machine_limit=0.5, interval=0.02):
    """Wait until our workers are idle (at most 0.5 s), then until the whole machine is (at most
    ``machine_limit`` s). After its last call a numpy process's OpenBLAS threads spin for ~0.1 s
    before they sleep; on a 2-core machine they would steal a core from the next worker's timed
    runs (measured: medians up to 7x slower). Returns the seconds waited."""
    t0 = time.perf_counter()
    procs = [w for w in workers if w.alive()]
    if _system_busy() is None or any(w.cpu_ticks() is None for w in procs):
        time.sleep(0.15)                        # no /proc: wait out the usual spin instead
        return 0.15

    def wait(sample, is_quiet, limit):
        start, last, quiet = time.perf_counter(), sample(), 0
        while time.perf_counter() - start < limit and quiet < 2:
            time.sleep(interval)
            now = sample()
            quiet = quiet + 1 if is_quiet(last, now) else 0
            last = now

    wait(lambda: [w.cpu_ticks() for w in procs], lambda a, b: a == b, 0.5)
    # the machine: busy under a quarter of a core over the interval (ticks are 10 ms: allow one)
    wait(_system_busy, lambda a, b: b - a <= 0.25 * interval * _TICK + 1, machine_limit)
    return time.perf_counter() - t0


class Probe:
    """How much CPU *other* processes used while one worker was being timed, in cores."""

    def __init__(self, worker):
        self.worker = worker
        self.t0, self.busy0, self.own0 = time.perf_counter(), _system_busy(), worker.cpu_ticks()

    def others(self):
        busy, own = _system_busy(), self.worker.cpu_ticks()
        if None in (busy, own, self.busy0, self.own0):
            return None
        elapsed = time.perf_counter() - self.t0
        return max(0.0, ((busy - self.busy0) - (own - self.own0)) / (elapsed * _TICK))


def machine_info():
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = " ".join(str(blas.get(k)) for k in ("name", "version") if blas.get(k))
        if blas.get("openblas configuration"):
            info["blas_config"] = blas["openblas configuration"]
    except Exception:
        info["blas"] = None
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "version")}
                               for p in threadpool_info()]
    except Exception:
        pass
    info["thread_env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                          if k in os.environ}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                                capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def configurations(args):
    """[(size, dtype, T)] to run, and [(size, dtype, T, reason)] skipped by rule."""
    sizes = args.size or (["tiny", "medium"] if args.quick else list(IM.SIZES))
    Ts = args.T or (list(T_QUICK) if args.quick else list(T_ALL))
    if args.dtype:
        dtype_sets = {s: list(args.dtype) for s in sizes}
    else:
        dtype_sets = {s: ["float32"] + (["float64"] if s == "medium" and not args.quick else []) for s in sizes}
    configs, skipped = [], []
    for dtype in ("float32", "float64"):
        for s in sizes:
            if dtype not in dtype_sets[s]:
                continue
            for T in Ts:
                if s == "large" and T >= LONG_T and not args.no_skip:
                    skipped.append((s, dtype, T, "large at T=1000: minutes per step for the slow peers, "
                                                      "gigabytes for unrolled graphs"))
                    continue
                configs.append((s, dtype, T))
    return configs, skipped


def skip_reason(impl, size, dtype, T, args):
    if args.no_skip:
        return None
    if IM.IMPLS[impl].unrolled_peer and T >= LONG_T:
        return f"unrolled peer at T={T}: minutes per configuration"
    return None


def fmt(x, nd=2):
    if x is None:
        return ""
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        if abs(x) < 0.01:
            return f"{x:.{nd}g}"
        return f"{x:.{nd}f}"
    return str(x)


def notes(row):
    out = []
    if row["status"] == "wrong":
        worst = max(row["check"], key=row["check"].get)
        out.append(f"WRONG: rel err {row['check'][worst]:.1e} in {worst} (tolerance {row['tolerance']:.0e})")
    elif row["status"] in ("error", "skipped"):
        out.append(f"{row['status']}: {row.get('error') or row.get('reason')}")
    if row.get("compile_s") is not None:
        out.append(f"compile {row['compile_s']:.2f} s")
    if row.get("peak_over_state") is not None and row["impl"] == "minigrad looped":
        out.append(f"peak/state {row['peak_over_state']:.2f}")
    if row.get("step_spread", 1) > 1.5:
        out.append(f"rounds vary x{row['step_spread']:.1f}")
    n = len(row.get("step_rounds") or [])
    if row.get("rounds_used") == 0:
        out.append(f"machine busy in all {n} rounds")
    elif row.get("rounds_used") is not None and row["rounds_used"] < n:
        out.append(f"{n - row['rounds_used']} of {n} rounds left out: machine busy")
    return "; ".join(out)


def peak_cell(row):
    if row.get("memory_kind") == "rss":
        return f"{fmt(row.get('rss_peak_mb'))} rss" if row.get("rss_peak_mb") is not None else ""
    return fmt(row.get("peak_mb"))


def kept_cell(row):
    if row.get("memory_kind") == "rss":
        return f"{fmt(row.get('kept_rss_mb'))} rss" if row.get("kept_rss_mb") is not None else ""
    return fmt(row.get("kept_mb"))


def markdown(doc):
    m = doc["machine"]
    lines = [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb', '?')} GB; "
             f"Python {m.get('python')}, numpy {m.get('numpy')} ({m.get('blas')}); minigrad {m.get('git_commit', '?')}"
             f"{' (with uncommitted changes)' if m.get('git_dirty') else ''}; load {m.get('loadavg_start')}.",
             f"Training step = forward over T steps + loss (sum of all h_t) + backward to U, W, b and the inputs. "
             f"Median of {doc['settings']['rounds']} rounds, each the median of repeated runs, every implementation "
             f"in its own process. Ratios are to the numpy floor and to torch.nn.LSTM in the same run. Peak MB: "
             f"extra memory during one step (tracemalloc; 'rss' where the library has its own allocator). "
             f"Kept MB: memory held for backward after the forward.", ""]
    lines += headline(doc["results"])
    lines += ["| implementation | size | dtype | T | step ms | x floor | x torch fused | forward ms | peak MB "
              "| kept MB | graph nodes | notes |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["results"]:
        if r["status"] == "skipped":
            continue
        lines.append("| " + " | ".join([
            r["impl"], r["size"], r["dtype"], str(r["T"]), fmt(r.get("step_ms")), fmt(r.get("ratio_floor")),
            fmt(r.get("ratio_torch_fused")), fmt(r.get("forward_ms")), peak_cell(r), kept_cell(r),
            fmt(r.get("graph_nodes")), notes(r)]) + " |")
    skipped = doc.get("skipped_summary") or []
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    if doc.get("targets"):
        lines += ["", "Performance targets (float32; see benchmarks/README.md):"]
        lines += [f"- {t['status']}: {t['target']}: {t['measured']}" for t in doc["targets"]]
    return "\n".join(lines)


def headline(rows, T=50, dtype="float32"):
    """One line per implementation, one column per size, at one T: 'ms (x floor)'."""
    sizes = [s for s in IM.SIZES if _find(rows, "numpy floor", s, dtype, T)]
    impls = [n for n in IM.IMPLS if any(_find(rows, n, s, dtype, T) for s in sizes)]
    if not sizes or len(impls) < 2:
        return []
    out = [f"Training step at T = {T}, {dtype}: median ms (ratio to the numpy floor).", "",
           "| implementation | " + " | ".join(f"{s} {IM.SIZES[s]}" for s in sizes) + " |",
           "|---|" + "---:|" * len(sizes)]
    for n in impls:
        cells = []
        for s in sizes:
            r = _find(rows, n, s, dtype, T)
            cells.append(f"{fmt(r['step_ms'])} (x{r['ratio_floor']:.2f})" if r and r.get("ratio_floor") else "")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out + [""]


def _find(rows, impl, size, dtype, T):
    for r in rows:
        if (r["impl"], r["size"], r["dtype"], r["T"]) == (impl, size, dtype, T) and r.get("step_ms") is not None:
            return r
    return None


def targets(rows):
    """The project's performance targets (benchmarks/README.md), where this run measured what they need."""
    out = []

    def add(target, ok, measured):
        out.append({"target": target, "status": "meets" if ok else "misses", "measured": measured})

    f32 = "float32"
    for size in IM.SIZES:
        floor, looped = _find(rows, "numpy floor", size, f32, 50), _find(rows, "minigrad looped", size, f32, 50)
        if floor and looped:
            add(f"minigrad looped <= 1.0x floor at {size}, T=50", looped["ratio_floor"] <= 1.0,
                f"x{looped['ratio_floor']:.2f}")
    floor, unrolled = _find(rows, "numpy floor", "medium", f32, 50), _find(rows, "minigrad unrolled", "medium", f32, 50)
    if floor and unrolled:
        add("minigrad unrolled <= 1.3x floor at medium, T=50", unrolled["ratio_floor"] <= 1.3,
            f"x{unrolled['ratio_floor']:.2f}")
    for size in IM.SIZES:
        u = _find(rows, "minigrad unrolled", size, f32, 50)
        peers = [p for p in (_find(rows, n, size, f32, 50) for n in ("torch eager", "MyGrad", "HIPS autograd")) if p]
        if u and peers:
            add(f"minigrad unrolled faster than the unrolled peers at {size}, T=50",
                all(u["step_ms"] < p["step_ms"] for p in peers),
                ", ".join(f"{p['impl']} x{u['step_ms'] / p['step_ms']:.2f}" for p in peers))
    for size in IM.SIZES:
        for impl in ("minigrad looped", "minigrad unrolled"):
            a, z = _find(rows, impl, size, f32, 10), _find(rows, impl, size, f32, 1000)
            if a and z:
                ratio = (z["step_ms"] / 1000) / (a["step_ms"] / 10)
                add(f"{impl}: per-step time at T=1000 <= 1.2x T=10 ({size})", ratio <= 1.2, f"x{ratio:.2f}")
    for r in rows:
        looped = (r["impl"], r["dtype"]) == ("minigrad looped", f32)
        if looped and r.get("peak_over_state") is not None and r["T"] >= 50:
            add(f"minigrad looped peak extra memory <= 1.5x per-step state ({r['size']}, T={r['T']})",
                r["peak_over_state"] <= 1.5, f"x{r['peak_over_state']:.2f} ({fmt(r['peak_mb'])} MB over "
                f"{fmt(r['state_mb'])} MB)")
    return out


def _plot_memory(row):
    if row["impl"] == "numpy floor":        # allocates nothing in the step: show what it holds instead
        return row.get("kept_mb")
    return row.get("rss_peak_mb") if row.get("memory_kind") == "rss" else row.get("peak_mb")


def plot(doc, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in doc["results"] if r.get("step_ms") is not None and r["dtype"] == "float32"]
    sizes = [s for s in IM.SIZES if any(r["size"] == s for r in rows)]
    if not sizes:
        return None
    series = [("numpy floor", "k", "-"), ("minigrad looped", "tab:blue", "-"), ("minigrad unrolled", "tab:orange", "-"),
              ("torch fused", "tab:gray", "--")]
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 7), squeeze=False)
    for j, size in enumerate(sizes):
        B, I, H = IM.SIZES[size]
        for impl, color, ls in series:
            pts = sorted((r["T"], r) for r in rows if r["impl"] == impl and r["size"] == size)
            if not pts:
                continue
            Ts = [t for t, _ in pts]
            axes[0][j].plot(Ts, [r["step_ms"] for _, r in pts], ls, color=color, marker="o", label=impl)
            mem = [(t, _plot_memory(r)) for t, r in pts]
            mem = [(t, m) for t, m in mem if m]
            if mem:
                label = impl + (" (its preallocated buffers)" if impl == "numpy floor" else "")
                axes[1][j].plot(*zip(*mem), ls, color=color, marker="o", label=label)
        Tmax = [r["T"] for r in rows if r["size"] == size]
        if Tmax:
            Ts = sorted(set(Tmax))
            itemsize = 4
            axes[1][j].plot(Ts, [t * B * 6 * H * itemsize / 2 ** 20 for t in Ts], ":", color="tab:green",
                            label="per-step state T*B*6H*4")
        axes[0][j].set_title(f"{size} (B={B}, I={I}, H={H})")
        for i, ylabel in enumerate(("training step, median ms", "peak extra memory in a step, MB")):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("T (timesteps)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.suptitle(f"LSTM training step, float32 - {doc['machine'].get('cpu')}, {doc['machine'].get('cores')} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def summarise(rows):
    """Medians over rounds, and ratios to the floor and to torch.nn.LSTM, for one configuration.
    Rounds during which other processes were measured busy are left out when clean ones exist:
    on 2 cores a process that takes one core makes a 2-thread BLAS or OpenMP run 10-50x slower."""
    for r in rows:
        if not r.get("step_rounds"):
            continue
        busy = [c is not None and c > BUSY_CORES for c in r.get("background_cores") or [False] * len(r["step_rounds"])]
        keep = [i for i, b in enumerate(busy) if not b] or list(range(len(busy)))
        r["rounds_used"] = len(keep) if len(keep) < len(busy) or not any(busy) else 0   # 0: all were busy
        step = [r["step_rounds"][i] for i in keep]
        r["step_ms"] = statistics.median(step) * 1e3
        r["step_ms_best"] = min(r["step_rounds"]) * 1e3
        r["step_spread"] = max(step) / min(step)
        r["forward_ms"] = statistics.median([r["forward_rounds"][i] for i in keep]) * 1e3
        r["per_step_us"] = r["step_ms"] * 1e3 / r["T"]
    base = {r["impl"]: r.get("step_ms") for r in rows}
    for r in rows:
        if r.get("step_ms") is None:
            continue
        if base.get("numpy floor"):
            r["ratio_floor"] = r["step_ms"] / base["numpy floor"]
        if base.get("torch fused"):
            r["ratio_torch_fused"] = r["step_ms"] / base["torch fused"]


def progress_line(i, n, cfg, rows, t_setup, t_timing):
    size, dtype, T = cfg
    parts = []
    for r in rows:
        if r.get("step_ms") is not None:
            ratio = "" if r.get("ratio_floor") is None or r["impl"] == "numpy floor" else f" x{r['ratio_floor']:.2f}"
            parts.append(f"{r['impl']} {fmt(r['step_ms'])} ms{ratio}")
        elif r["status"] == "wrong":
            parts.append(f"{r['impl']} WRONG")
        elif r["status"] == "error":
            parts.append(f"{r['impl']} error")
    return (f"[{i}/{n}] {size} {dtype} T={T}: " + " | ".join(parts)
            + f"  (setup {t_setup:.1f} s, timing {t_timing:.1f} s)")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Implementations: " + ", ".join(IM.IMPLS))
    p.add_argument("--quick", action="store_true", help="tiny and medium at T in 1, 10, 50; fewer rounds and reps")
    p.add_argument("--impl", action="append", help="implementations, comma-separated (default: all); repeatable")
    p.add_argument("--size", action="append", help="sizes: tiny, medium, large (comma-separated; repeatable)")
    p.add_argument("--T", action="append", help="sequence lengths, comma-separated (default 1,10,50,200,1000)")
    p.add_argument("--dtype", action="append", help="float32 and/or float64 (default: float32, plus float64 at medium)")
    p.add_argument("--rounds", type=int, help="rounds (default 5; 2 with --quick)")
    p.add_argument("--reps", type=int, help="timed runs per round (default: as many as fit in --budget, 3 to 25)")
    p.add_argument("--budget", type=float, help="seconds of timed steps per round and implementation (default 0.6;"
                                                " 0.08 with --quick)")
    p.add_argument("--out", help="JSON output (default benchmarks/results/latest.json); the plot goes beside it")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG plot")
    p.add_argument("--no-skip", action="store_true", help="run what the default rules skip (large at T=1000, "
                                                          "unrolled peers at T=1000)")
    p.add_argument("--threads", type=int, help="threads for every library (OMP, OpenBLAS, MKL, XLA when 1); default: "
                                               "each library's own default. 1 is steadier on a busy machine")
    p.add_argument("--retries", type=int, help="times to retime a round during which other processes were busy "
                                               "(default 1; 0 with --quick)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one worker answer")
    p.add_argument("--list", action="store_true", help="list the implementations and exit")
    p.add_argument("--render", metavar="JSON", help="re-summarise a run's JSON: rewrite its table, plot and targets")
    args = p.parse_args(argv)

    def split(values):
        return [v.strip() for item in values for v in item.split(",") if v.strip()] if values else None

    names = split(args.impl)
    if names:
        lookup = {n.lower(): n for n in IM.IMPLS}
        bad = [n for n in names if n.lower() not in lookup]
        if bad:
            p.error(f"unknown implementation(s) {bad}; known: {', '.join(IM.IMPLS)}")
        names = [lookup[n.lower()] for n in names]
    args.impl = names or list(IM.IMPLS)
    args.size = split(args.size)
    if args.size and any(s not in IM.SIZES for s in args.size):
        p.error(f"sizes are {', '.join(IM.SIZES)}")
    args.T = [int(t) for t in split(args.T)] if args.T else None
    args.dtype = split(args.dtype)
    if args.dtype and any(d not in ("float32", "float64") for d in args.dtype):
        p.error("dtypes are float32 and float64")
    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    args.budget = args.budget or (0.08 if args.quick else 0.6)
    return args


def worker_env(args):
    """The workers' environment: the caller's, plus a short OpenBLAS spin (see below), plus the
    thread counts of ``--threads``."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    # An idle OpenBLAS thread spins 2^28 cycles (~0.1 s) before it sleeps; 2^24 (~6 ms) is still far
    # longer than any gap between two products inside a step, but lets the next worker start sooner.
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "24")
    if args.threads:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(args.threads)
        if args.threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def setup_config(workers, names, cfg, args, doc):
    """Build and check every implementation for one configuration; measure its memory."""
    size, dtype, T = cfg
    B, I, H = IM.SIZES[size]
    state_mb = T * B * 6 * H * np.dtype(dtype).itemsize / 2 ** 20     # what BPTT must keep
    rows = []
    for n in names:
        row = {"impl": n, "size": size, "batch": B, "input": I, "hidden": H, "dtype": dtype, "T": T,
               "state_mb": state_mb}
        rows.append(row)
        reason = skip_reason(n, size, dtype, T, args)
        if reason:
            row.update(status="skipped", reason=reason)
            continue
        if not workers[n].alive():
            workers[n] = workers[n].restart()
        try:
            reply = workers[n].request({"cmd": "setup", "impl": n, "size": [B, I, H], "T": T, "dtype": dtype},
                                       args.timeout)
        except WorkerFailed as err:
            reply = {"status": "error", "error": str(err)}
        info = reply.pop("info", None) or {}
        if "compile_s" in info:
            row["compile_s"] = info["compile_s"]
            row["compile_forward_s"] = info.get("compile_forward_s")
        doc["versions"][n] = {k: v for k, v in info.items() if not k.startswith("compile")}
        row.update(reply)
        if row.get("peak_mb") is not None:
            row["peak_over_state"] = row["peak_mb"] / state_mb
    return rows


def time_rounds(workers, rows, args, timing):
    """Time every checked implementation, round by round, one worker at a time, in an order that
    rotates each round; a round during which other processes were busy is timed again."""
    active = [r for r in rows if r["status"] == "ok"]
    for rnd in range(args.rounds):
        k = rnd % len(active) if active else 0
        for row in active[k:] + active[:k]:
            if row["status"] != "ok":
                continue
            worker = workers[row["impl"]]
            for _attempt in range(args.retries + 1):
                try:
                    quiesce(workers.values(), machine_limit=0.1 if args.quick else 0.5)
                    probe = Probe(worker)
                    reply = worker.request({"cmd": "time", **timing}, args.timeout)
                    others = probe.others()
                except WorkerFailed as err:
                    reply, others = {"status": "error", "error": str(err)}, None
                if reply.get("status") == "error" or others is None or others <= BUSY_CORES:
                    break
                row["disturbed"] = row.get("disturbed", 0) + 1    # timed again if retries remain
            if reply.get("status") == "error":
                row.update(status="error", error=reply["error"])
                continue
            row.setdefault("step_rounds", []).append(reply["step_s"])
            row.setdefault("forward_rounds", []).append(reply["forward_s"])
            row.setdefault("reps", []).append(reply["step_reps"])
            row.setdefault("background_cores", []).append(None if others is None else round(others, 2))


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for spec in IM.IMPLS.values():
            print(f"{spec.name:18s} {spec.doc}")
        return 0
    if args.render:
        return render(Path(args.render), plot_it=not args.no_plot)
    t_start = time.perf_counter()
    out_path = Path(args.out) if args.out else HERE / "results" / "latest.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    configs, skipped = configurations(args)
    names = [n for n in IM.IMPLS if n in args.impl]
    timing = {"reps": args.reps, "warmup": 1, "min_reps": 2 if args.quick else 3, "max_reps": 10 if args.quick else 25,
              "budget": args.budget}
    env = worker_env(args)
    doc = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": [sys.executable] + sys.argv,
           "machine": machine_info(),
           "settings": {"quick": args.quick, "rounds": args.rounds, "retries": args.retries, "threads": args.threads,
                        "implementations": names, **timing, "seed": 0,
                        "sizes": {k: dict(zip(("batch", "input", "hidden"), v)) for k, v in IM.SIZES.items()},
                        "worker_env": {k: env[k] for k in ("OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS",
                                                           "OPENBLAS_NUM_THREADS", "XLA_FLAGS") if k in env}},
           "results": [], "skipped_summary": [f"{size} {dtype} T={T} ({why})" for size, dtype, T, why in skipped],
           "targets": [], "versions": {}}
    print(f"minigrad LSTM benchmark: {len(configs)} configurations x {len(names)} implementations, "
          f"{args.rounds} rounds. Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores.", flush=True)
    for s in doc["skipped_summary"]:
        print(f"  skipping {s}", flush=True)

    logdir = tempfile.mkdtemp(prefix="minigrad-bench-")
    workers = {n: Worker(n, logdir, env) for n in names}     # all start at once: their imports overlap
    try:
        for i, cfg in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {cfg[0]} {cfg[1]} T={cfg[2]}: setting up and checking...", flush=True)
            t0 = time.perf_counter()
            rows = setup_config(workers, names, cfg, args, doc)
            doc["results"].extend(rows)
            t1 = time.perf_counter()
            time_rounds(workers, rows, args, timing)
            summarise(rows)
            print(progress_line(i, len(configs), cfg, rows, t1 - t0, time.perf_counter() - t1), flush=True)
            _write(doc, out_path)
    finally:
        for w in workers.values():
            w.close()
    by_reason = {}
    for r in doc["results"]:
        if r["status"] == "skipped":
            by_reason.setdefault(r["reason"], set()).add(r["impl"])
    doc["skipped_summary"] += [f"{', '.join(sorted(v))}: {k}" for k, v in by_reason.items()]
    doc["targets"] = targets(doc["results"])
    doc["elapsed_s"] = time.perf_counter() - t_start
    if hasattr(os, "getloadavg"):
        doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.no_plot:
        doc["plot"] = plot(doc, out_path.with_suffix(".png"))
    _write(doc, out_path)
    table = markdown(doc)
    out_path.with_suffix(".md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nWrote {out_path}" + (f", {doc['plot']}" if doc.get("plot") else "") +
          f" and {out_path.with_suffix('.md')} in {doc['elapsed_s']:.0f} s.", flush=True)
    return 0


def render(path, plot_it=True):
    doc = json.loads(path.read_text())
    groups = {}
    for r in doc["results"]:
        groups.setdefault((r["size"], r["dtype"], r["T"]), []).append(r)
    for rows in groups.values():
        summarise(rows)
    doc["targets"] = targets(doc["results"])
    if plot_it:
        doc["plot"] = plot(doc, path.with_suffix(".png"))
    _write(doc, path)
    table = markdown(doc)
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


def _write(doc, path):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        sys.exit(main())
