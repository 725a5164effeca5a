"""Scripts that make the published numbers and figures: run them from the repository root, ``python -m experiments.NAME`` (see README.md here)."""
