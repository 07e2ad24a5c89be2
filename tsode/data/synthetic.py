"""Synthetic datasets generated from known dynamics (deterministic given a seed).

``SyntheticICUDataModule`` (the embedded default dataset): two diffusively coupled
FitzHugh-Nagumo oscillators (states v1, w1, v2, w2) driving a slow first-order variable z,

    dv_i/dτ = v_i - v_i³/3 - w_i + I_i + k (v_j - v_i)
    dw_i/dτ = (v_i + a - b w_i) / τ_w                    (a = 0.7, b = 0.8, τ_w = 12.5)
    dz/dt   = ((v1 + v2) / 2 - z) / τ_z                  (t in hours, τ_z = 6 h)

with τ = speed · t (``speed`` per series, oscillation period roughly 6-10 h) and per-series
random drive ``I_i``, coupling ``k`` and initial state. The five states are observed through
fixed affine maps and given ICU-flavoured names (the system is synthetic; the names carry no
physiological meaning): heart_rate, resp_rate, map, temp, lactate. Each series is observed at
a random number of random times (on a 3-minute grid over ``span`` hours), every channel
missing independently with its own rate, with Gaussian noise.

``PeriodicToyDataModule`` is the irregularly sampled periodic toy of the latent ODE paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tsode.data.config import LoaderConfig
from tsode.data.module import IrregularDataModule
from tsode.data.series import SeriesTable

ICU_CHANNELS = ("heart_rate", "resp_rate", "map", "temp", "lactate")
# original units = ICU_CENTER + ICU_SCALE * state
ICU_CENTER = np.array([85.0, 18.0, 80.0, 37.0, 2.0])
ICU_SCALE = np.array([12.0, 4.0, 10.0, 0.5, 0.8])
ICU_MISSING = (0.1, 0.3, 0.2, 0.4, 0.6)
DEFAULT_CUTOFF = 24.0  # hours observed when a forecast names neither cutoff nor cutoff_fraction


@dataclass
class SyntheticTrajectories:
    """Noise-free ground truth on the simulation grid.

    Attributes:
        grid: (G,) hours.
        states: (S, G, 5) states (v1, w1, v2, w2, z) in model units.
        values: (S, G, 5) noise-free observations in original units.
    """

    grid: np.ndarray
    states: np.ndarray
    values: np.ndarray


def _icu_rhs(y: np.ndarray, speed: np.ndarray, drive: np.ndarray, coupling: np.ndarray):
    """Vector field; ``y`` is (5, S) (state-major for speed), returns (5, S) per hour."""
    v1, w1, v2, w2, z = y
    a, b, tau_w, tau_z = 0.7, 0.8, 12.5, 6.0
    out = np.empty_like(y)
    diff = coupling * (v2 - v1)
    out[0] = speed * (v1 - v1**3 / 3 - w1 + drive[0] + diff)
    out[1] = speed * ((v1 + a - b * w1) / tau_w)
    out[2] = speed * (v2 - v2**3 / 3 - w2 + drive[1] - diff)
    out[3] = speed * ((v2 + a - b * w2) / tau_w)
    out[4] = (0.5 * (v1 + v2) - z) / tau_z
    return out


def simulate_icu(
    num_series: int, span: float = 48.0, grid_step: float = 0.05, seed: int = 0
) -> tuple[SyntheticTrajectories, np.random.Generator]:
    """Integrate the synthetic ICU system for all series at once (classic RK4, one step per
    grid step of ``grid_step`` hours; the RK4 trajectory *is* the ground truth).

    Returns the trajectories and the generator (so observation sampling continues the stream).
    """
    rng = np.random.default_rng(seed)
    speed = rng.uniform(3.7, 6.2, num_series)  # FHN period ≈ 37 τ-units -> 6-10 h
    drive = rng.uniform(0.4, 0.8, (2, num_series))
    coupling = rng.uniform(0.0, 0.3, num_series)
    y = np.stack(
        [
            rng.uniform(-2.0, 2.0, num_series),
            rng.uniform(-0.5, 1.5, num_series),
            rng.uniform(-2.0, 2.0, num_series),
            rng.uniform(-0.5, 1.5, num_series),
            rng.uniform(-1.0, 1.0, num_series),
        ],
        axis=0,
    )
    num_grid = int(round(span / grid_step)) + 1
    grid = np.arange(num_grid) * grid_step
    states = np.empty((num_grid, 5, num_series))
    states[0] = y
    h = grid_step
    for g in range(1, num_grid):
        k1 = _icu_rhs(y, speed, drive, coupling)
        k2 = _icu_rhs(y + (0.5 * h) * k1, speed, drive, coupling)
        k3 = _icu_rhs(y + (0.5 * h) * k2, speed, drive, coupling)
        k4 = _icu_rhs(y + h * k3, speed, drive, coupling)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        states[g] = y
    states = states.transpose(2, 0, 1)
    values = ICU_CENTER + ICU_SCALE * states
    return SyntheticTrajectories(grid=grid, states=states, values=values), rng


def _sample_observations(
    clean: np.ndarray,
    grid: np.ndarray,
    rng: np.random.Generator,
    min_obs: int,
    max_obs: int,
    missing: Sequence[float],
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick irregular times per series, apply channel-wise missingness and noise.

    Returns (offsets (S+1,), times (N,), values (N, C) with NaN).
    """
    num_series, num_grid, num_c = clean.shape
    counts = rng.integers(min_obs, max_obs + 1, num_series)
    keys = rng.random((num_series, num_grid))
    order = np.argsort(keys, axis=1)
    rank_ok = np.arange(num_grid)[None, :] < counts[:, None]
    chosen = np.zeros((num_series, num_grid), dtype=bool)
    np.put_along_axis(chosen, order, rank_ok, axis=1)
    series_idx, grid_idx = np.nonzero(chosen)  # row-major: sorted by series then time
    vals = clean[series_idx, grid_idx] + rng.normal(size=(len(series_idx), num_c)) * noise
    miss = rng.random(vals.shape) < np.asarray(missing)[None, :]
    empty = miss.all(1)
    miss[empty, 0] = False  # every time point observes at least one channel
    vals[miss] = np.nan
    offsets = np.zeros(num_series + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, grid[grid_idx], vals


class SyntheticICUDataModule(IrregularDataModule):
    """The embedded default dataset: synthetic multichannel ICU-like series (see module doc).

    Defaults: 300 series over 48 h with 20-60 time points each, forecast task observing the
    first 24 h and predicting the rest. Everything is deterministic given ``seed``.

    Args:
        num_series: number of series.
        span: hours simulated per series.
        min_obs / max_obs: range of time points per series (uniform).
        missing_rates: per-channel probability that a channel is unobserved at a time point.
        noise_std: observation noise std in state units (scaled per channel to original units).
        data_seed: seeds the simulation and sampling (default: ``seed``).
        base: ``task``, ``loader``, ``split_fractions``, ``splits``, ``min_time_points``,
            ``normalize``, ``seed``: see :class:`IrregularDataModule`. A forecast task naming
            neither ``cutoff`` nor ``cutoff_fraction`` observes the first
            :attr:`default_cutoff` (24) hours; any cutoff given is used as given.
    """

    default_cutoff: ClassVar[float | None] = DEFAULT_CUTOFF

    def __init__(
        self,
        num_series: int = 300,
        span: float = 48.0,
        min_obs: int = 20,
        max_obs: int = 60,
        missing_rates: tuple[float, ...] = ICU_MISSING,
        noise_std: float = 0.05,
        data_seed: int | None = None,
        **base: Any,
    ):
        super().__init__(**base)
        if len(missing_rates) != len(ICU_CHANNELS):
            raise ValueError(f"missing_rates needs {len(ICU_CHANNELS)} values (one per channel)")
        if not 1 <= min_obs <= max_obs:
            raise ValueError(f"need 1 <= min_obs <= max_obs, got {min_obs}, {max_obs}")
        if num_series < 3:
            raise ValueError("num_series must be >= 3 (train/val/test)")
        self.num_series = num_series
        self.span = span
        self.min_obs = min_obs
        self.max_obs = max_obs
        self.missing_rates = tuple(missing_rates)
        self.noise_std = noise_std
        self.data_seed = self.seed if data_seed is None else data_seed
        self.trajectories: SyntheticTrajectories | None = None

    @property
    def channels(self) -> list[str]:
        return list(ICU_CHANNELS)

    @property
    def static_names(self) -> list[str]:
        return []

    def load_table(self) -> SeriesTable:
        traj, rng = simulate_icu(self.num_series, self.span, seed=self.data_seed)
        num_grid = len(traj.grid)
        if self.max_obs > num_grid:
            raise ValueError(f"max_obs={self.max_obs} exceeds the {num_grid} grid points")
        self.trajectories = traj
        offsets, times, values = _sample_observations(
            traj.values,
            traj.grid,
            rng,
            self.min_obs,
            self.max_obs,
            self.missing_rates,
            self.noise_std * ICU_SCALE,
        )
        return SeriesTable(
            series_ids=[f"icu{i:04d}" for i in range(self.num_series)],
            offsets=offsets,
            times=times,
            values=values,
            channels=list(ICU_CHANNELS),
            time_offset=np.zeros(self.num_series),
            info={"time_origin": "absolute", "generator": "synthetic_icu"},
            source="synthetic ICU data",
        )


class PeriodicToyDataModule(IrregularDataModule):
    """Irregularly sampled periodic toy of the latent ODE paper (Rubanova et al., 2019).

    Each series is ``a · sin(2π f t + φ)`` (one channel "x") with per-series random amplitude
    ``a ~ U(0.5, 1.5)``, frequency ``f ~ U(f_min, f_max)`` cycles per hour and phase
    ``φ ~ U(0, 2π)``, observed at ``num_obs`` random distinct times drawn from a regular grid
    of ``grid_size`` points over ``[0, span]`` hours, plus Gaussian noise. Default task:
    extrapolation (first half of the window observed, second half predicted); batches of 50;
    values not normalized (``normalize=False``).

    ``base``: ``task``, ``loader``, ``split_fractions``, ``splits``, ``min_time_points``,
    ``seed``: see :class:`IrregularDataModule`.
    """

    default_task: ClassVar[str] = "extrapolation"
    default_loader: ClassVar[LoaderConfig] = LoaderConfig(batch_size=50)

    def __init__(
        self,
        num_series: int = 500,
        span: float = 5.0,
        grid_size: int = 100,
        num_obs: int = 50,
        freq_range: tuple[float, float] = (0.5, 1.5),
        noise_std: float = 0.01,
        data_seed: int | None = None,
        normalize: bool = False,
        **base: Any,
    ):
        super().__init__(normalize=normalize, **base)
        if not 1 <= num_obs <= grid_size:
            raise ValueError(f"need 1 <= num_obs <= grid_size, got {num_obs}, {grid_size}")
        self.num_series = num_series
        self.span = span
        self.grid_size = grid_size
        self.num_obs = num_obs
        self.freq_range = tuple(freq_range)
        self.noise_std = noise_std
        self.data_seed = self.seed if data_seed is None else data_seed

    @property
    def channels(self) -> list[str]:
        return ["x"]

    @property
    def static_names(self) -> list[str]:
        return []

    def load_table(self) -> SeriesTable:
        rng = np.random.default_rng(self.data_seed)
        s = self.num_series
        amp = rng.uniform(0.5, 1.5, s)
        freq = rng.uniform(*self.freq_range, s)
        phase = rng.uniform(0.0, 2 * np.pi, s)
        grid = np.linspace(0.0, self.span, self.grid_size)
        keys = rng.random((s, self.grid_size))
        chosen = np.zeros((s, self.grid_size), dtype=bool)
        np.put_along_axis(chosen, np.argsort(keys, 1)[:, : self.num_obs], True, axis=1)
        series_idx, grid_idx = np.nonzero(chosen)
        t = grid[grid_idx]
        x = amp[series_idx] * np.sin(2 * np.pi * freq[series_idx] * t + phase[series_idx])
        x = x + self.noise_std * rng.normal(size=x.shape)
        offsets = np.arange(s + 1, dtype=np.int64) * self.num_obs
        return SeriesTable(
            series_ids=[f"toy{i:04d}" for i in range(s)],
            offsets=offsets,
            times=t,
            values=x[:, None],
            channels=["x"],
            time_offset=np.zeros(s),
            info={"time_origin": "absolute", "generator": "periodic_toy"},
            source="periodic toy data",
        )
