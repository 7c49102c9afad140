"""normdrop: what do BatchNorm and Dropout really do to training? A reference pipeline.

Modules: data (download, prepare, on-device batches), models, config (run settings), train
(one run), metrics, aggregate, tables, hypotheses, plots, gpu_lease, storage, provenance.
"""

__version__ = "0.1.0"
