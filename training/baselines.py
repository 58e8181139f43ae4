"""Old path of :mod:`training.methods.baselines`, kept only for the ``base`` build that was started
before the move (its pipeline imports ``training.baselines`` lazily at the NT stage). Delete it once
``runs-base`` has finished or been restarted."""

from training.methods.baselines import train_nt_generator, train_ul_generator

__all__ = ["train_nt_generator", "train_ul_generator"]
