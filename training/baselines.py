"""Old path of the NT and UL jobs (now training/methods/nt.py and ul.py), kept only for the
``base`` build started before the move: its pipeline imports ``training.baselines`` lazily at the
NT stage. Delete it once ``runs-base`` has finished or been restarted."""

from training.methods.nt import train_nt_generator
from training.methods.ul import train_ul_generator

__all__ = ["train_nt_generator", "train_ul_generator"]
