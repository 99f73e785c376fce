"""The agreement statistics of ``cac validate`` against values computed by hand, and the reference
file reader (delimiters, headers, decimal commas, errors that name the line but not the identifier)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connector.infer.agreement import agreement, bland_altman, category_table, linear_weighted_kappa, spearman_rho
from connector.infer.validation import ReferenceFileError, parse_references


def test_linear_weighted_kappa_by_hand() -> None:
    # rows reference, columns model; 20 studies, one ">400" read as "0", one "1-100" read as "101-400"
    table = np.array([[5, 0, 0, 1], [0, 4, 0, 0], [0, 1, 5, 0], [0, 0, 0, 4]])
    # observed weighted disagreement: (1 x 3/3 + 1 x 1/3) / 20 = 1/15
    # expected: row sums 6,4,6,4, column sums 5 each, weight sums per row 2, 4/3, 4/3, 2:
    # 5 x (6 x 2 + 4 x 4/3 + 6 x 4/3 + 4 x 2) / 400 = 5/12; kappa = 1 - (1/15) / (5/12) = 0.84
    assert linear_weighted_kappa(table) == pytest.approx(0.84, abs=1e-12)
    assert linear_weighted_kappa(np.eye(4, dtype=int) * 3) == pytest.approx(1.0)
    assert linear_weighted_kappa(np.zeros((4, 4))) is None
    # complete reversal of two extreme categories: kappa -1
    assert linear_weighted_kappa(np.array([[0, 0, 0, 5], [0, 0, 0, 0], [0, 0, 0, 0], [5, 0, 0, 0]])) == \
        pytest.approx(-1.0)


def test_category_table_rows_are_the_reference() -> None:
    table = category_table(["0", "0", ">400"], ["0", ">400", ">400"])
    assert table.tolist() == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_bland_altman_by_hand() -> None:
    ba = bland_altman([0, 10, 100], [2, 14, 90])
    # differences 2, 4, -10: mean -4/3; SD sqrt(((10/3)^2 + (16/3)^2 + (26/3)^2) / 2) = sqrt(172/3)
    sd = math.sqrt(172 / 3)
    assert ba is not None
    assert ba.bias == pytest.approx(-4 / 3) and ba.sd == pytest.approx(sd)
    assert ba.lower == pytest.approx(-4 / 3 - 1.96 * sd) and ba.upper == pytest.approx(-4 / 3 + 1.96 * sd)
    assert bland_altman([1.0], [2.0]) is None


def test_spearman_by_hand_with_ties() -> None:
    # ranks x 1..5, y 1, 2, 3.5, 5, 3.5 (the tie shares 3 and 4): rho = 8 / sqrt(10 x 9.5)
    assert spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1, 2], [1, 2]) is None
    assert spearman_rho([1, 2, 3], [0, 0, 0]) is None


def test_agreement_categories_from_unrounded_scores() -> None:
    result = agreement([0, 100.0, 100.4, 401], [0.2, 99.6, 400.0, 400.4])
    # reference 0 / 1-100 / 101-400 / >400; model 1-100 / 1-100 / 101-400 / >400
    assert result.table.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert result.exact_agreement == 3 and result.n == 4


def test_reference_file_formats() -> None:
    key = "0123456789abcdef0123"
    rows = parse_references(f"# site reads\nACC1,12.5\n{key.upper()},0\n\nACC 2,401\n")
    assert [(r.line, r.kind, r.agatston) for r in rows] == [(2, "accession", 12.5), (3, "study_key", 0.0),
                                                            (5, "accession", 401.0)]
    assert rows[1].identifier == key
    rows = parse_references("Accession Number;Agatston\nA1;12,5\nA2;0\n")  # spreadsheet export, decimal comma
    assert [(r.kind, r.identifier, r.agatston) for r in rows] == [("accession", "A1", 12.5), ("accession", "A2", 0.0)]
    rows = parse_references("agatston\tstudy_key\n3\tabc\n".replace("abc", key))
    assert rows[0].kind == "study_key" and rows[0].agatston == 3.0
    assert "MRN" not in repr(parse_references("MRN-LIKE-ACC,1\n")[0])  # identifiers stay out of repr


@pytest.mark.parametrize(("text", "needle"), [
    ("SECRET77,abc\n", "line 1: a header row needs"),
    ("SECRET77,12\nSECRET77,-3\n", "line 2: the reference Agatston score is not a number"),
    ("SECRET77,12\nsecret77,13\n", "line 2: the same study as line 1"),
    ("study_key,agatston\nSECRET77,1\n", "line 2: a study key is 20 hexadecimal characters"),
    ("# nothing\n", "no reference rows"),
    ("SECRET77\n", "line 1: expected an identifier"),
])
def test_reference_file_errors_name_the_line_never_the_identifier(text: str, needle: str) -> None:
    with pytest.raises(ReferenceFileError) as info:
        parse_references(text)
    assert needle in str(info.value)
    assert "SECRET77" not in str(info.value).upper()
