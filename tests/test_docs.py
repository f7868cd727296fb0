"""Docs generated from code stay equal to the code (one source of truth per fact)."""

from pathlib import Path

from hil import metrics

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_metrics_table_is_current():
    text = (DOCS / "metrics.md").read_text()
    start = text.index("-->", text.index("<!-- metrics-table")) + 3
    end = text.index("<!-- /metrics-table -->")
    assert text[start:end].strip() == metrics.doc_table(), (
        "docs/metrics.md is stale: paste the output of "
        "python -c 'from hil.metrics import doc_table; print(doc_table())'"
    )


def test_vgpu_tables_are_current():
    from hil.vgpu.layout import doc_tables

    text = (DOCS / "vgpu.md").read_text()
    start = text.index("-->", text.index("<!-- vgpu-tables")) + 3
    end = text.index("<!-- /vgpu-tables -->")
    assert text[start:end].strip() == doc_tables().strip(), (
        "docs/vgpu.md is stale: paste the output of "
        "python -c 'from hil.vgpu.layout import doc_tables; print(doc_tables())'"
    )
