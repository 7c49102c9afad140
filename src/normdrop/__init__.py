"""normdrop: what do BatchNorm and Dropout really do to training? A reference pipeline.

Modules: data (download, prepare, on-device batches), models, config (run settings), layout
(where each run's files live; the grid's runs), train (one run), metrics, gpu_lease, storage,
provenance, aggregate (the summary files), status; reports from the summary: summary_data (its
contract, names and order), seed_stats (statistics over seeds), render (tables as Markdown,
LaTeX, HTML), tables, hypotheses, figure_style, curves, plots, study, report.
"""

__version__ = "0.1.0"
