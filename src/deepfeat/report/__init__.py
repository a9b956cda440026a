"""The report of one dataset: its result tables (:mod:`~deepfeat.report.tables`), figures
(:mod:`~deepfeat.report.figures`) and findings page (:mod:`~deepfeat.report.findings`), with the display
conventions they share (:mod:`~deepfeat.report.display`). Job entry points: :func:`build_tables` (rule
``tables``), :func:`make_figures` (rule ``figures``) and :func:`write_findings` (rule ``findings``)."""

from deepfeat.report.figures import make_figures
from deepfeat.report.findings import build_findings, write_findings
from deepfeat.report.tables import build_tables

__all__ = ["build_findings", "build_tables", "make_figures", "write_findings"]
