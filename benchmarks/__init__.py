"""Benchmarks that print ratio tables; results go under reports/."""
