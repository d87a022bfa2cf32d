"""Typed exceptions. Library code raises these; the CLI turns them into one line and exit 2."""


class FastflowError(Exception):
    """Base class of every error fastflow raises on bad input."""


class ConfigError(FastflowError, ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


class CheckpointError(FastflowError):
    """A checkpoint is missing, truncated, corrupted, or does not match its config."""


class DataError(FastflowError):
    """A dataset is missing, malformed, or holds non-finite values."""


class ShapeError(FastflowError, ValueError):
    """A tensor has the wrong shape for the operation it was given to."""


class DTypeError(FastflowError, TypeError):
    """A tensor has a dtype the operation does not take (e.g. integers where it computes in floats)."""


class SolverError(FastflowError):
    """An ODE solve produced non-finite values or could not reach the end time."""


class TrainingError(FastflowError):
    """Training diverged (non-finite loss) or cannot continue."""


class MissingBackendError(FastflowError):
    """An operation needs a package or a device that is not there: a GPU, TensorRT, onnxruntime,
    Triton (CLI exit 2 with the install hint)."""


class ArtifactError(FastflowError):
    """An exported artefact (``.pt2``, engine, sidecar JSON) is missing, unreadable, or its
    metadata is malformed or does not fit the runtime (wrong device, newer format)."""


class LockedError(FastflowError):
    """An output directory is being written by another live process (its lock is held)."""
