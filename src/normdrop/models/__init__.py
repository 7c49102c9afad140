"""The three architectures of the study (Table 1 of the paper) and the two of its future work (a
vision transformer, an LSTM), with a norm and a dropout switch.

Every constructor takes the same arguments, so that a factory can build any of them from a run's
settings: ``(in_shape, num_classes, width, norm, dropout_rate, init)``, where ``in_shape`` is
``(C, H, W)``, ``norm`` is one of ``MODEL_NORMS[name]``, ``dropout_rate`` is the dropout rate (0
turns dropout off) and ``init`` one of ``INITS``.

Placement (docs/protocol.md): a norm layer follows each conv / hidden linear layer and precedes its
ReLU; without a norm that layer keeps its bias (with one, the norm's shift makes the bias
redundant). Dropout follows each hidden activation of the MLP, each pooling block and the hidden
linear layer of the CNN, and sits between the two convolutions of each ResNet basic block (as in
wide residual networks).

Initialization (docs/protocol.md, "Initialization"): every variant starts from a stable network,
i.e. its first-batch loss is close to ln(classes). ``init="stable"`` (the default) is PyTorch's
default init for the MLP and the CNN; for the ResNets, He init for the convolutions, the head with
``nn.Linear``'s default init and, without a norm, the last conv of every residual branch at zero,
so that each block starts as the identity (Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020).
``init="he"`` is He's normal init for every conv and linear weight (the code before that rule):
without a norm it makes the ResNets' logits explode, for whoever wants to see that. The ViT and
the LSTM are described in their classes (docs/protocol.md, "Transformers and recurrent networks").

One family a file: `mlp`, `cnn`, `resnet`, `vit`, `lstm`; the norm layers they share in `norms`.
"""

from __future__ import annotations

from torch import nn

from normdrop.catalog import INITS, MODEL_NORMS, NORMS, PATCH, allowed_norms_text, check_input
from normdrop.models.cnn import CNN
from normdrop.models.lstm import LSTMClassifier, NormLSTMLayer, StepBatchNorm
from normdrop.models.mlp import MLP
from normdrop.models.norms import he_init_, norm_layer, token_norm
from normdrop.models.resnet import ResNet, resnet20, resnet32, resnet44, resnet56
from normdrop.models.vit import ViT

# The constructor of each of catalog.MODELS (a test checks that the names agree). resnet20 is the
# paper's model; the deeper members of the 6n+2 family are for the depth study; vit and lstm
# answer the paper's future work (transformers and recurrent networks).
MODELS = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "vit": ViT,
    "lstm": LSTMClassifier,
}


def build_model(
    name, in_shape, num_classes, width, norm="none", dropout_rate=0.0, init="stable", **lstm
) -> nn.Module:
    """`lstm`: the LSTM's `lstm_input` and `permutation_seed` (models.lstm), for it only."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if norm not in MODEL_NORMS[name]:
        raise ValueError(
            f"norm {norm!r} is not defined for {name}; allowed: {', '.join(MODEL_NORMS[name])}"
        )
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    if lstm and name != "lstm":
        raise ValueError(f"{', '.join(lstm)}: for the lstm only, not {name}")
    check_input(name, in_shape)
    return MODELS[name](
        tuple(in_shape), num_classes, width=width, norm=norm, dropout_rate=dropout_rate,
        init=init, **lstm,
    )  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CNN",
    "INITS",
    "MLP",
    "MODELS",
    "MODEL_NORMS",
    "NORMS",
    "PATCH",
    "LSTMClassifier",
    "NormLSTMLayer",
    "ResNet",
    "StepBatchNorm",
    "ViT",
    "allowed_norms_text",
    "build_model",
    "check_input",
    "count_parameters",
    "he_init_",
    "norm_layer",
    "token_norm",
]
