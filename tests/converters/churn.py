"""A Telco-like churn table generated here (no download): text categories, missing numbers,
a boolean, and a churn label that depends on all of them."""

from __future__ import annotations

import functools

import numpy as np

CONTRACTS = ["month-to-month", "one-year", "two-year"]
INTERNET = ["dsl", "fiber", "none"]
PAYMENT = ["bank-transfer", "credit-card", "electronic-check", "mailed-check"]
TEXT = ["contract", "internet", "payment"]
NUMBERS = ["tenure", "monthly_charges", "total_charges"]
FEATURES = [*NUMBERS, *TEXT, "senior"]


@functools.cache
def churn_frame(n: int = 1500, seed: int = 7):
    import pandas as pd

    rng = np.random.default_rng(seed)
    contract = rng.choice(CONTRACTS, n, p=[0.55, 0.25, 0.2])
    internet = rng.choice(INTERNET, n, p=[0.35, 0.45, 0.2])
    payment = rng.choice(PAYMENT, n)
    tenure = rng.integers(0, 73, n).astype(float)
    monthly = np.round(rng.uniform(18, 120, n), 2)
    total = np.round(tenure * monthly * rng.uniform(0.9, 1.1, n), 2)
    senior = rng.random(n) < 0.16
    z = (-1.0 + 1.6 * (contract == "month-to-month") - 0.9 * (contract == "two-year")
         + 0.8 * (internet == "fiber") + 0.6 * (payment == "electronic-check")
         - 0.04 * tenure + 0.012 * monthly + 0.5 * senior)
    churn = rng.random(n) < 1 / (1 + np.exp(-z))
    tenure[rng.random(n) < 0.05] = np.nan  # missing numbers
    total[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"tenure": tenure, "monthly_charges": monthly, "total_charges": total,
                         "contract": contract, "internet": internet, "payment": payment,
                         "senior": senior, "churn": np.where(churn, "yes", "no")})


def churn_pipeline(head: str = "gboost", sparse: bool = False):
    """ColumnTransformer selecting columns by name → a classifier, fitted on churn_frame()
    (``sparse``: OneHotEncoder's sparse output)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = churn_frame()
    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                          ("scale", StandardScaler())]), NUMBERS),
        ("text", OneHotEncoder(handle_unknown="ignore", sparse_output=sparse), TEXT),
        ("flag", "passthrough", ["senior"]),
    ])
    if head == "gboost":
        from sklearn.ensemble import GradientBoostingClassifier

        clf = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0)
    elif head == "lightgbm":
        import lightgbm

        clf = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0)
    elif head == "xgboost":
        import xgboost

        clf = xgboost.XGBClassifier(n_estimators=30, max_depth=3, random_state=0)
    else:
        raise KeyError(head)
    x, y = df[FEATURES], df["churn"]
    if head == "xgboost":
        y = (y == "yes").astype(int)
    return Pipeline([("pre", pre), ("model", clf)]).fit(x, y)
