"""Teacher pair generation (sharded, resumable); the pairs' format and dataset are ``fastflow.data.pairs``."""

from fastflow.data.pairs import PairDataset
from fastflow.pairs.teacher import CallableTeacher, FlowTeacher
from fastflow.pairs.writer import generate_pairs

__all__ = ["CallableTeacher", "FlowTeacher", "PairDataset", "generate_pairs"]
