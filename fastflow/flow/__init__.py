"""Flow core: paths, time samplers, ODE solvers, guidance, straightness. No nn code here."""

from fastflow.flow.guidance import cfg_velocity
from fastflow.flow.path import interpolate, predict_x1, velocity_target
from fastflow.flow.sample import generate
from fastflow.flow.solvers import SOLVERS, SolveResult, euler, heun, one_step, rk2, rk45, solve
from fastflow.flow.straightness import straightness
from fastflow.flow.time import TimeSampler, build_time_sampler

__all__ = [
    "SOLVERS",
    "SolveResult",
    "TimeSampler",
    "build_time_sampler",
    "cfg_velocity",
    "euler",
    "generate",
    "heun",
    "interpolate",
    "one_step",
    "predict_x1",
    "rk2",
    "rk45",
    "solve",
    "straightness",
    "velocity_target",
]
