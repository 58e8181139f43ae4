"""Offline training jobs: data, tokenizer, generators, retrievers, evaluation; one CLI (`python -m training`)."""

from models.runtime import prefer_passive_openmp

prefer_passive_openmp()  # before any training module imports torch
