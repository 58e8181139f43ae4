"""Negative distillation (Li et al., NAACL 2022): D_N, the losses, the α schedule and the job."""
