"""Stage 4c, the review page (`python -m bmc_data.report`): where the rows come from (`source`), one compact
record per row with its diff spans (`records`), the figures (`charts`), the λ preview (`weights`), the HTML page
itself (`page`) and its command line (`cli`)."""

from .page import ReportConfig, render_report

__all__ = ["ReportConfig", "render_report"]
