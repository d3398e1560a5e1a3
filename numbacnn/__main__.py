"""``python -m numbacnn``: the same as the ``numbacnn`` command."""

from numbacnn.cli import main

main()
