"""Evaluation: STS scoring and reports."""
