"""fastflow: one-step generators from rectified flows.

Convention (one for the whole project): t = 0 is noise ``x0 ~ N(0, I)``, t = 1 is data
``x1``; ``x_t = t·x1 + (1 − t)·x0`` and the velocity target is ``x1 − x0``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - lazy: `import fastflow` stays light (no torch)
    if name == "FlowPipeline":
        from fastflow.pipeline import FlowPipeline

        return FlowPipeline
    raise AttributeError(f"module 'fastflow' has no attribute {name!r}")
