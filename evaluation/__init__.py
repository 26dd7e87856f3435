"""Evaluation: metrics, the eval job, comparison runs and reports."""
