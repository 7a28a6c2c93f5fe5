"""Published numbers that mamlrun's tables print beside their own.

References:
    Finn, Abbeel, Levine. ICML 2017: Figure 2/3 (sinusoid MSE after 1/5/10 steps, K = 5) and
    Table 1 (few-shot classification, mean and 95 % CI); section 5.3 (RL: average return after
    0 / 1 / 2 / 3 policy-gradient steps).
    Antoniou, Edwards, Storkey. "How to train your MAML." ICLR 2019 (MAML++, Omniglot; the values
    of ../shared/PAPER.md; its ablation's intermediate rows are not in the sources used here).
    Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse?" ICLR 2020, Table 2 (ANIL;
    mean ± std over three seeds, not a confidence interval).
    Rusu et al. "Meta-Learning with Latent Embedding Optimization." ICLR 2019, Table 1 (LEO; and
    PLATIPUS's MiniImagenet 5-way 1-shot number as it quotes it, from Finn, Xu, Levine 2018).
"""

from __future__ import annotations

# MSE after 1 / 5 / 10 inner steps with K = 5 support points.
SINUSOID = {
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrain": {1: 2.41, 5: 2.23, 10: 2.19},
}

# Table 1: test accuracy in % (mean, 95 % CI or None) per experiment file and algorithm.
TABLE1 = {
    "omniglot_5w1s": {"maml": (98.7, 0.4), "fomaml": (98.3, None)},
    "omniglot_5w5s": {"maml": (99.9, 0.1), "fomaml": (99.2, None)},
    "omniglot_20w1s": {"maml": (95.8, 0.3), "fomaml": (89.4, None)},
    "omniglot_20w5s": {"maml": (98.9, 0.2), "fomaml": (97.9, None)},
    "omniglot_noconv_5w1s": {"maml": (89.7, 1.1)},
    "omniglot_noconv_5w5s": {"maml": (97.5, 0.6)},
    "miniimagenet_5w1s": {"maml": (48.70, 1.84), "fomaml": (48.07, 1.75)},
    "miniimagenet_5w5s": {"maml": (63.11, 0.92), "fomaml": (63.15, 0.91)},
}

# RL: MAML's average return after 0 / 1 / 2 / 3 policy-gradient steps, per experiment file.
RL = {
    "rl_navigation2d": {"maml": {0: -40.41, 1: -11.68, 2: -3.33, 3: -3.23}},
    "rl_halfcheetah_dir": {"maml": {0: -50.69, 1: 293.19, 2: 313.48, 3: 315.65}},
}

# The algorithms built on the engine's hooks, beside their own papers: test accuracy in % (mean,
# spread or None) per Table 1 cell and algorithm; the run's experiment file is ``<algorithm>_<cell>``.
# (None, None): the paper has no number for the cell (the row is measured for comparison).
# LEO's MiniImagenet numbers are on pretrained WRN-28-10 features, mamlrun's rows on the conv net's.
ALGORITHMS = {
    "omniglot_5w1s": {"mamlpp": (99.47, None), "anil": (None, None), "leo": (None, None)},
    "omniglot_5w5s": {"mamlpp": (99.93, None)},
    "omniglot_20w1s": {"mamlpp": (97.65, None), "anil": (96.2, 0.5)},
    "omniglot_20w5s": {"mamlpp": (99.33, None), "anil": (98.0, 0.3)},
    "miniimagenet_5w1s": {"platipus": (50.13, 1.86), "leo": (61.76, 0.08)},
    "miniimagenet_5w5s": {"leo": (77.59, 0.12)},
}

# MAML++'s ablation (Antoniou et al. 2019) on Omniglot 20-way: the rows of ``conf/ablation/`` in the paper's
# order, with their names, and the published numbers the sources used here hold: MAML's own (Finn et al. 2017,
# Table 1, mean and 95 % CI) and MAML++'s. The rows with a single fix are measured for comparison only.
MAMLPP_ABLATION_ROWS = {
    "maml": "MAML",
    "msl": "MAML + MSL",
    "da": "MAML + DA",
    "bn": "MAML + BNWB + BNRS",
    "lslr": "MAML + LSLR",
    "ca": "MAML + CA",
    "all": "MAML++",
}
MAMLPP_ABLATION = {
    "mamlpp_omniglot_20w1s": {"maml": (95.8, 0.3), "all": (97.65, None)},
    "mamlpp_omniglot_20w5s": {"maml": (98.9, 0.2), "all": (99.33, None)},
}
