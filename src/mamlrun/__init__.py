"""mamlrun: a command-line experiment runner for MAML-family meta-learning."""

__version__ = "0.1.0"
