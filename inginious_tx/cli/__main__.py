"""``python -m inginious_tx.cli``: the ``inginious-tx`` command."""

from .runner import main

main()
