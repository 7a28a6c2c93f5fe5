"""Where mamlrun finds its configs, sweeps and data sets.

Data sets are looked up by name. With ``MAMLRUN_DATA`` set, ``$MAMLRUN_DATA/<dataset>`` is the only
place; otherwise the first of these that exists (else the first):

1. ``data/<dataset>`` in the working directory,
2. ``data/<dataset>`` in the checkout,
3. the shared data folder beside the checkout, ``../shared/data/<name>``, where ``<name>`` may
   differ from the dataset's (the complete Omniglot release lies in ``omniglot_full``).

Configs reach this through the ``${mamlrun_data:<dataset>[,<shared name>...]}`` resolver, so the
resolved config of every run records the folder it read.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE = Path(__file__).resolve().parent
CONF_DIR = (PACKAGE / "conf").resolve()
CHECKOUT = CONF_DIR.parent
SWEEPS_DIR = CHECKOUT / "sweeps"
SHARED_DATA = CHECKOUT.parent / "shared" / "data"


def data_candidates(name: str, *shared_names: str) -> list[Path]:
    """The folders searched for data set ``name``, in order."""
    env = os.environ.get("MAMLRUN_DATA")
    if env:
        return [Path(env).expanduser() / name]
    local = [Path("data") / name, CHECKOUT / "data" / name]
    return local + [SHARED_DATA / n for n in (shared_names or (name,))]


def data_root(name: str, *shared_names: str) -> str:
    """The first folder of :func:`data_candidates` that exists, else the first candidate."""
    candidates = data_candidates(name, *shared_names)
    return str(next((p for p in candidates if p.is_dir()), candidates[0]))


def small_omniglot() -> Path | None:
    """The official small Omniglot background sets (for quick runs), wherever they are found."""
    names = ("omniglot_small", "omniglot")
    env = os.environ.get("MAMLRUN_DATA")
    places = [Path(env).expanduser() / n for n in names] if env else []
    places += [SHARED_DATA / "omniglot", Path("data") / "omniglot_small", CHECKOUT / "data" / "omniglot_small"]
    for place in places:
        if place.is_dir() and any(place.glob("images_background_small*")):
            return place
    return None


if not OmegaConf.has_resolver("mamlrun_data"):
    OmegaConf.register_new_resolver("mamlrun_data", data_root)
