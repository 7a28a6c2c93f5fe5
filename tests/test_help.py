"""``mamlrun --help`` opens with mamlrun's own usage, not Hydra's generic banner."""

from __future__ import annotations

from tests.conftest import run_mamlrun


def test_help_shows_mamlruns_usage_and_groups(tmp_path):
    out = run_mamlrun("--help", cwd=tmp_path).stdout
    assert out.startswith("mamlrun: train and evaluate MAML-family meta-learners")
    assert "Powered by Hydra" not in out and "mamlrun dataset=omniglot" in out
    assert "algorithm: anil, bmaml, emaml, fomaml, fomaml_l2l, leo, maml, maml_l2l, mamlpp" in out  # the groups
    assert "schedule: constant, cosine, exponential" in out and "learner: rl, supervised" in out
    assert "debug: quick" in out
    assert not list(tmp_path.iterdir())  # asking for help writes nothing
