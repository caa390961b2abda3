"""Library parts of the paper's analyses (pure PyTorch/numpy; the entry points are pipelines.analyses).

- ``synthetic_recall``: how well mirror images keep their class (Recall@1 of synthetic queries);
- ``loss_stats``: per-step statistics of every metric loss called inside a block (synthetic share);
- ``cost``: time, matmul FLOPs and memory held for backward of a training step and of a loss.
"""
