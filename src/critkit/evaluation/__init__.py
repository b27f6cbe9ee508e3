"""Evaluation: declarative benchmark specs, generating and grading answers (direct, n samples,
self-critique), per-sample outputs and scores, and checkpoint selection on a validation split
that shares no question with any test set."""
