"""The paper's analyses as named experiments (README "The paper's analyses").

    python -m pipelines.analyses <name> [--smoke-test] [--dataset NAME] [--out DIR]

Names: alpha_beta, hardness, synthetic_labels, feature_ratio, embedding_maps, training_cost
(or ``all``). Settings: params.yaml ``analyses.<name>``; outputs: reports/analyses/<name>/ and
one MLflow parent run per analysis. DVC: ``dvc repro analyses/dvc.yaml`` (not part of the
default ``dvc repro``).
"""
from __future__ import annotations

from pipelines.analyses import alpha_beta, embedding_maps, feature_ratio, hardness, synthetic_labels, training_cost
from symm.registry import Registry

ANALYSES: Registry = Registry("analysis")
for _name, _module in {"alpha_beta": alpha_beta, "hardness": hardness, "synthetic_labels": synthetic_labels,
                       "feature_ratio": feature_ratio, "embedding_maps": embedding_maps,
                       "training_cost": training_cost}.items():
    ANALYSES.register(_name)(_module)
