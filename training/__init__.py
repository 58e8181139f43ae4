"""Offline training jobs: data, tokenizer, generators, retrievers, evaluation; one CLI (`python -m training`)."""
