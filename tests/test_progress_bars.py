"""Progress bars: visible on a terminal, rare plain lines in a log, off when asked.

Reference: tqdm's own output written to an in-memory stream, with and without a TTY.
"""
import io

import numpy as np
import torch

from symm.evaluation import evaluate
from symm.progress import progress_bar
from symm.data.trial import embed_tensors as embed


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_one_final_line_not_one_per_item():
    log = io.StringIO()
    for _ in progress_bar(range(5000), desc="work", file=log):
        pass
    text = log.getvalue()
    assert text.count("\r") <= 2 and "5000/5000" in text  # first draw + final, nothing per item


def test_terminal_bar_and_auto_mode():
    tty, log = Terminal(), io.StringIO()
    for _ in progress_bar(range(3), desc="work", file=tty, enabled=None):
        pass
    for _ in progress_bar(range(3), desc="work", file=log, enabled=None):
        pass
    assert "work" in tty.getvalue() and "3/3" in tty.getvalue()
    assert log.getvalue() == ""  # auto: nothing in a log


def test_embed_and_evaluate_are_unchanged_by_their_bars():
    """Reference: the same calls with the bars off."""
    model = torch.nn.Linear(8, 4)
    x = torch.randn(50, 8)
    assert torch.equal(embed(model, x, 16, progress=True), embed(model, x, 16, progress=False))
    emb, labels = np.random.default_rng(0).normal(size=(40, 4)), np.repeat(np.arange(10), 4)
    assert evaluate(emb, labels, progress=True) == evaluate(emb, labels, progress=False)
