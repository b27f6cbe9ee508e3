"""critkit: Critique Fine-Tuning and Critique-Guided Distillation, end to end.

The public surface is small on purpose; everything else is reachable through its module.
"""

from .grading.answers import extract_answer, grade
from .training.methods import METHODS, build_pairs
from .data.records import Record, RecordError, read_records, write_records
from .data.sources import SOURCES, load_source

__all__ = [
    "extract_answer",
    "grade",
    "Record",
    "RecordError",
    "read_records",
    "write_records",
    "load_source",
    "SOURCES",
    "METHODS",
    "build_pairs",
]
__version__ = "0.1.0"
