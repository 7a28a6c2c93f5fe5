"""Published numbers that mamlrun's tables print beside their own.

References:
    Finn, Abbeel, Levine. ICML 2017: Figure 2/3 (sinusoid MSE after 1/5/10 steps, K = 5) and
    Table 1 (few-shot classification, mean and 95 % CI).
"""

from __future__ import annotations

# MSE after 1 / 5 / 10 inner steps with K = 5 support points.
SINUSOID = {
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrain": {1: 2.41, 5: 2.23, 10: 2.19},
}
