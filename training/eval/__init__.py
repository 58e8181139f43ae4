"""Evaluation: generation metrics, bundle comparison and the safety evaluation."""
