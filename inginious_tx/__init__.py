"""inginious-tx: an INGInious 0.6 compatible grading backend, agents and client on Twisted."""

__version__ = "0.1.0"
