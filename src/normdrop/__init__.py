"""normdrop: what do BatchNorm and Dropout really do to training? A reference pipeline.

Modules, by job:
- a run's settings: config (RunConfig, one run's frozen settings), workflow_config (loading,
  command-line typing and schema checks of the workflow config), grid (select, sweep, cells);
- one run: data (download, prepare, on-device batches), models, train (the training loop and
  its CLI), execution (device, precision, CUDA graphs), checkpoints, tracking (TensorBoard),
  gpu_lease, metrics, storage (atomic writes), provenance, cli (argument parsing, progress);
- the grid: layout (where each run's files live; the grid's runs), aggregate (the summary
  files, the learning-rate pick), status;
- reports from the summary: summary_data (its contract, names and order), seed_stats
  (statistics over seeds), render (tables as Markdown, LaTeX, HTML), tables, hypotheses,
  figure_style, curves, plots, study, report.
"""

__version__ = "0.1.0"
