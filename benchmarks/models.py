"""Benchmark the tsode models on PhysioNet 2012: seconds per training step and per epoch, NFE,
peak memory, backprop vs adjoint, and per-sample vs union-of-times grids.

Data: PhysioNet 2012 sets A+B (``--sets``), times to the minute (no quantization), the
interpolation task (every time point in the context, as in the latent ODE paper's PhysioNet
runs), random (non-bucketed) training batches of 50 series. The same ``--steps`` batches are
used for every configuration.

Model sizes (the latent ODE paper's PhysioNet settings): latent ODE with 20 latent dims, 40
recognition dims, 3x50 ODE nets (both the latent and the recognition ODE), 50 GRU units;
ODE-RNN with a 50-dim hidden state and a 3x50 ODE net; GRU-dt with 50 units; Neural CDE with
a 50-dim state and a 3x50 vector field. Solvers (``--solvers``): ``dopri5`` (rtol=1e-3,
atol=1e-4) everywhere, or ``euler`` -- the reference implementation's setting: fixed-step Euler
with steps of at most 48 h / 50 for the ODE-RNN (the latent ODE's recognition ODE-RNN), dopri5
(rtol=1e-3, atol=1e-4) for the latent trajectory. The Neural CDE runs its default solver
(``rk4``, steps of at most 1 h ending on every knot) with backprop and adjoint, dopri5
(rtol=1e-3, atol=1e-4) with backprop, and ``rk4-0.25h`` (steps of at most 15 min) with the
adjoint (``--ncde-solvers``).

Grid modes for ODE-RNN and latent ODE: ``per_sample`` (each series integrated only over its own
observation times) and ``union`` (the reference implementation's batching: every series stepped
through the union of all time points of the batch; ``benchmarks/union_grid.py``). Both compute
the same function.

Each configuration runs in a fresh subprocess with one thread (``torch.set_num_threads(1)``).
Reported: median wall time of a training step (forward + backward + Adam step) after one
warm-up step, the same times the number of training batches per epoch (estimate), NFE of
forward and backward (vector-field calls, counted in the model, mean over steps), and peak
memory as the process's peak RSS (``VmHWM``, whole process: interpreter, torch, data and
allocator caching included) and its growth over the RSS just before training.

Usage: ``python benchmarks/models.py [--steps 4] [--union-steps 2] [--sets a b] [--json out]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SOLVERS = {
    # adaptive default of tsode's ODE models
    "dopri5": dict(method="dopri5", rtol=1e-3, atol=1e-4),
    # the reference implementation's setting: Euler in the ODE-RNN (encoder), steps of at most
    # 1/50 of the 48 h window; the latent ODE keeps dopri5 for z(t)
    "euler": dict(method="euler", step_size=48.0 / 50),
    # the Neural CDE's default: one RK4 step per interval between knots, at most 1 h long
    "rk4": dict(method="rk4", step_size=1.0),
    # finer RK4 for the Neural CDE adjoint (at 1 h steps the continuous adjoint cannot
    # re-integrate the coarse forward steps on PhysioNet; see docs/ncde.md)
    "rk4-0.25h": dict(method="rk4", step_size=0.25),
}
# Gradient modes per Neural CDE solver (False = backprop, True = adjoint); the dopri5 adjoint
# takes ~50 s per step.
NCDE_GRADIENTS = {"rk4": (False, True), "dopri5": (False,), "rk4-0.25h": (True,)}
BATCH_SIZE = 50
REFERENCE = {"odernn": 11.0, "latent_ode": 140.0}  # s / batch of 50, reference code, this machine
TARGET_VS_REFERENCE = {"odernn": 10.0, "latent_ode": 50.0}  # the speed-up targets
TARGET_VS_UNION = 5.0
TARGET_PEAK_MB = 2048.0

MODEL_KW = {
    "odernn": dict(hidden_dim=50, ode_hidden_dim=50, ode_layers=3, gru_input_dim=0),
    "latent_ode": dict(
        latent_dim=20, rec_dim=40, ode_hidden_dim=50, ode_layers=3, rec_ode_hidden_dim=50,
        rec_ode_layers=3, gru_units=50, num_samples=3,
        # the reference model's recognition (z0 at the first context time, ODE-RNN run
        # backwards): the only anchor the union grid supports, so both grids time one function
        anchor="first",
    ),
    "gru_dt": dict(hidden_dim=50),
    "ncde": dict(hidden_dim=50, vf_width=50, vf_layers=3),
}
SIZES = {
    "odernn": "hidden 50, ODE 3x50",
    "latent_ode": "latent 20, rec 40, ODE 3x50 (x2), GRU units 50, K=3, anchor first",
    "gru_dt": "hidden 50",
    "ncde": "hidden 50, field 3x50",
}


def default_physionet_dir() -> Path:
    import os

    env = os.environ.get("TSODE_PHYSIONET_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared/data/physionet2012"


def prepare_batches(args: argparse.Namespace, path: Path) -> dict:
    """Load PhysioNet, draw the benchmark batches, save them to ``path``; return data facts."""
    from tsode.data import LoaderConfig, PhysioNet2012DataModule

    dm = PhysioNet2012DataModule(
        root=str(args.root), sets=tuple(args.sets), task="interpolation",
        loader=LoaderConfig(batch_size=BATCH_SIZE, bucketing=False), progress=False, seed=0,
    )
    dm.setup()
    loader = dm.train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= args.steps + 1:
            break
    torch.save(batches, path)
    union = [int(torch.unique(b.context.times[b.context.time_mask]).numel()) for b in batches]
    return {
        "num_channels": dm.num_channels,
        "train_batches_per_epoch": len(loader),
        "mean_context_length": float(statistics.mean(float(b.context.lengths.float().mean()) for b in batches)),
        "max_context_length": int(max(int(b.context.lengths.max()) for b in batches)),
        "mean_union_grid": float(statistics.mean(union)),
    }


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def current_rss_kib() -> int:
    """Current resident set size of this process in KiB."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size of this process in KiB (``VmHWM``; unlike ``ru_maxrss`` it is not
    inherited from the parent across fork + exec)."""
    return _status_kib("VmHWM")


def run_config(batch_file: str, name: str, grid: str, adjoint: bool, steps: int, solver: str) -> dict:
    """One configuration (in a subprocess): train ``steps`` steps after a warm-up step."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from tsode.models import MODELS
    from tsode.solvers import SolverConfig

    batches = torch.load(batch_file, weights_only=False)
    kwargs = dict(MODEL_KW[name])
    adaptive = SolverConfig(**SOLVERS["dopri5"], adjoint=adjoint)
    chosen = SolverConfig(**SOLVERS[solver], adjoint=adjoint)
    if name == "latent_ode":
        kwargs["solver"] = adaptive
        kwargs["encoder_solver"] = chosen
    elif name == "odernn":
        kwargs["solver"] = chosen
    elif name == "ncde":
        kwargs["solver"] = chosen
    cls = MODELS[name]
    if grid == "union":  # the reference's batching: benchmarks/union_grid.py (next to this file)
        from union_grid import UNION_MODELS

        cls = UNION_MODELS[name]
    model = cls(num_channels=batches[0].context.num_channels, **kwargs)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rss_before = current_rss_kib()
    times, nfe_f, nfe_b = [], [], []
    for i, batch in enumerate(batches[: steps + 1]):
        start = time.perf_counter()
        model.reset_nfe()
        loss = model.compute_loss(batch).loss
        forward_nfe = model.total_nfe()
        opt.zero_grad()
        loss.backward()
        backward_nfe = model.total_nfe() - forward_nfe
        opt.step()
        elapsed = time.perf_counter() - start
        if i > 0 or steps == 0:
            times.append(elapsed)
            nfe_f.append(forward_nfe)
            nfe_b.append(backward_nfe)
    rss_after = peak_rss_kib()
    return {
        "model": name,
        "solver": solver if name in ("odernn", "latent_ode", "ncde") else "-",
        "grid": grid,
        "gradients": "adjoint" if adjoint else "backprop",
        "s_per_step": statistics.median(times),
        "nfe_forward": statistics.mean(nfe_f),
        "nfe_backward": statistics.mean(nfe_b),
        "peak_rss_mb": rss_after / 1024.0,
        "train_mem_mb": max(0, rss_after - rss_before) / 1024.0,
        "steps_timed": len(times),
    }


def configs(args: argparse.Namespace) -> list[tuple[str, str, bool, int, str]]:
    """(model, grid, adjoint, steps, solver) for every row of the table."""
    out = []
    for name in args.models:
        if name in ("odernn", "latent_ode"):
            for solver in args.solvers:
                out.append((name, "per_sample", False, args.steps, solver))
                out.append((name, "per_sample", True, args.steps, solver))
                if args.union_steps > 0:
                    out.append((name, "union", False, args.union_steps, solver))
        elif name == "ncde":
            for solver in args.ncde_solvers:
                for adjoint in NCDE_GRADIENTS.get(solver, (False, True)):
                    out.append((name, "per_sample", adjoint, args.steps, solver))
        else:
            out.append((name, "per_sample", False, args.steps, "dopri5"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=default_physionet_dir())
    parser.add_argument("--sets", nargs="+", default=["a", "b"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--union-steps", type=int, default=1, help="timed steps in union mode")
    parser.add_argument("--models", nargs="+", default=["odernn", "latent_ode", "gru_dt", "ncde"])
    parser.add_argument("--solvers", nargs="+", default=["euler", "dopri5"], choices=sorted(SOLVERS))
    parser.add_argument(
        "--ncde-solvers", nargs="+", default=["rk4", "dopri5", "rk4-0.25h"], choices=sorted(SOLVERS)
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--_worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._worker:
        batch_file, name, grid, adjoint, steps, solver = args._worker
        print(json.dumps(run_config(batch_file, name, grid, adjoint == "1", int(steps), solver)))
        return

    if not args.root.exists():
        sys.exit(f"PhysioNet 2012 data not found at {args.root} (set TSODE_PHYSIONET_DIR)")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = str(Path(tmp) / "batches.pt")
        facts = prepare_batches(args, Path(batch_file))
        print(f"# PhysioNet 2012 sets {'+'.join(args.sets)}, interpolation task, batch {BATCH_SIZE}, "
              f"minute resolution: {facts}", flush=True)
        rows = []
        for name, grid, adjoint, steps, solver in configs(args):
            cmd = [sys.executable, __file__, "--_worker", batch_file, name, grid,
                   "1" if adjoint else "0", str(steps), solver]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"# {name} {grid} adjoint={adjoint} FAILED:\n{proc.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["s_per_epoch"] = row["s_per_step"] * facts["train_batches_per_epoch"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    union = {(r["model"], r["solver"]): r for r in rows if r["grid"] == "union"}
    print()
    print(f"# load average after the runs (1/5/15 min): {os.getloadavg()}")
    print("| model | sizes | solver | grid | gradients | s/step | s/epoch (est.) | NFE fwd | NFE bwd | peak RSS (MB) "
          "| training mem (MB) | vs reference | vs own union | targets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = REFERENCE.get(r["model"])
        vs_ref = f"{ref / r['s_per_step']:.1f}x" if ref and r["grid"] == "per_sample" else ""
        vs_union = ""
        missed = []
        if r["peak_rss_mb"] >= TARGET_PEAK_MB:
            missed.append("memory")
        if r["grid"] == "per_sample" and ref:
            if ref / r["s_per_step"] < TARGET_VS_REFERENCE[r["model"]]:
                missed.append(f"< {TARGET_VS_REFERENCE[r['model']]:.0f}x reference")
            u = union.get((r["model"], r["solver"]))
            if u is not None:
                ratio = u["s_per_step"] / r["s_per_step"]
                vs_union = f"{ratio:.1f}x faster"
                if ratio < TARGET_VS_UNION:
                    missed.append(f"< {TARGET_VS_UNION:.0f}x union")
        # per-sample rows: speed targets (ODE-RNN, latent ODE) and memory (every model)
        targets = ("MISSED: " + ", ".join(missed)) if missed else ("met" if r["grid"] == "per_sample" else "")
        print(f"| {r['model']} | {SIZES[r['model']]} | {r['solver']} | {r['grid']} | {r['gradients']} | {r['s_per_step']:.3f} "
              f"| {r['s_per_epoch']:.0f} | {r['nfe_forward']:.0f} | {r['nfe_backward']:.0f} "
              f"| {r['peak_rss_mb']:.0f} | {r['train_mem_mb']:.0f} | {vs_ref} | {vs_union} | {targets} |")
    if args.json:
        args.json.write_text(json.dumps({"data": facts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
