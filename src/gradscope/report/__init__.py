"""The analysis side's renderings: text/markdown/JSON reports (``text``), plots, TensorBoard export."""

from gradscope.report.text import (
    counts,
    dumps,
    layer_summary,
    layer_table,
    render_markdown,
    render_text,
    report_json,
    scalar_summary,
    scalar_table,
    verdict,
)

__all__ = [
    "counts", "dumps", "layer_summary", "layer_table", "render_markdown", "render_text", "report_json",
    "scalar_summary", "scalar_table", "verdict",
]
