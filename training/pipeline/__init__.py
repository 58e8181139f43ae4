"""``python -m training build``: the whole pipeline of a preset, its progress display and the
choice of the served generator and retriever."""
