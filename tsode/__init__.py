"""tsode: forecasting irregularly sampled time series with continuous-time neural models.

Sub-packages (see docs/architecture.md):
    tsode.solvers  -- batched ODE solvers with per-sample time grids and adjoint gradients
    tsode.data     -- irregular tables -> validated, normalized, padded batches
    tsode.models   -- LightningModules (ODE-RNN, latent ODE, Neural CDE, baselines)
"""

__version__ = "0.1.0"
