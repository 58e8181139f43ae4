"""Command line of the offline jobs (``python -m training``)."""
