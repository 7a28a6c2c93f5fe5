"""mamlrun: a command-line experiment runner for MAML-family meta-learning."""

from mamlrun import paths as _paths  # noqa: F401  (registers the config resolvers)

__version__ = "0.1.0"
