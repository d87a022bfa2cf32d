"""Teacher pair generation (sharded, resumable) and the memory-mapped pair dataset."""

from fastflow.pairs.dataset import PairDataset
from fastflow.pairs.teacher import CallableTeacher, FlowTeacher
from fastflow.pairs.writer import generate_pairs

__all__ = ["CallableTeacher", "FlowTeacher", "PairDataset", "generate_pairs"]
