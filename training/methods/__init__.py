"""One package or module per paper or method; each builds on training.core (docs/papers.md)."""
