"""``python -m cacnet`` runs the `cac` command."""

from .cli import main

main()
