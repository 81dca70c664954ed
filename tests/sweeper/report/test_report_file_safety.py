"""The report's machine-readable files are safe to open: JSON without the non-standard
Infinity/NaN, CSV text cells that a spreadsheet will not run as formulas."""

from __future__ import annotations

import json
import math

import pandas as pd

from sweeper.report.page import csv_safe, strict_json


def test_non_finite_floats_become_null_and_the_rest_is_kept():
    obj = [{"epsilon_rdp": math.inf, "epsilon_pld": None, "sigma": 0.025,
            "nested": {"nan": math.nan, "list": [1.5, -math.inf, "x"]}}]
    text = strict_json(obj)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == [{"epsilon_rdp": None, "epsilon_pld": None, "sigma": 0.025,
                                 "nested": {"nan": None, "list": [1.5, None, "x"]}}]
    # a strict parser (no NaN/Infinity constants) reads it
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_formula_like_text_is_quoted_numbers_are_not():
    df = pd.DataFrame({"cell": ["PGD, ε=3.3%", "=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)",
                                "\tx"],
                       "backdoor_avg": [0.5, -0.25, 0.0, 1.0, 0.1, 0.2]})
    out = csv_safe(df)
    assert list(out["cell"]) == ["PGD, ε=3.3%", "'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx"]
    assert list(out["backdoor_avg"]) == [0.5, -0.25, 0.0, 1.0, 0.1, 0.2]  # numbers untouched
    assert list(df["cell"])[1].startswith("=")  # the frame itself is not changed
