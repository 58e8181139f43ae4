python -m benchmarks.optimizer_step --presets small base --steps 20 --out reports/optimizer_step
