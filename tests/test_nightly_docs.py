"""docs/nightly.md states the regression rules that hil.baseline applies."""

from pathlib import Path

from hil import baseline

DOC = Path(__file__).resolve().parent.parent / "docs" / "nightly.md"


def test_rules_table_is_current():
    text = DOC.read_text()
    start = text.index("-->", text.index("<!-- rules-table")) + 3
    end = text.index("<!-- /rules-table -->")
    assert text[start:end].strip() == baseline.doc_table(), (
        "docs/nightly.md is stale: paste the output of "
        "python -c 'from hil.baseline import doc_table; print(doc_table())'"
    )


def test_documented_constants_match():
    text = DOC.read_text()
    assert f"last {baseline.HISTORY_NIGHTS} passing nightlies" in text
    assert f"if there are at least {baseline.HISTORY_MIN}" in text
