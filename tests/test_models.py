import pytest
import torch
from torch import nn

from normdrop.models import MODELS, NORMS, build_model, count_parameters

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)


def params(name, shape, classes, width, norm="none"):
    return count_parameters(build_model(name, shape, classes, width, norm))


def test_table1_parameter_counts():
    # Table 1 of the paper: MLP 1.2M (MNIST), CNN 2.5M (CIFAR-10), ResNet-20 1.1M (width 32).
    assert params("mlp", MNIST, 10, 768) == 1_201_162
    assert params("cnn", CIFAR, 10, 64) == 2_536_394
    assert params("resnet20", CIFAR, 10, 32, "batch") == 1_073_962
    # The original ResNet-20 (width 16): 0.27M, as in He et al. (2016) and akamaster's resnet.py.
    assert params("resnet20", CIFAR, 10, 16, "batch") == 269_722
    for got, paper in [
        (params("mlp", MNIST, 10, 768), 1.2e6),
        (params("cnn", CIFAR, 10, 64), 2.5e6),
        (params("resnet20", CIFAR, 10, 32, "batch"), 1.1e6),
    ]:
        assert abs(got - paper) / paper < 0.05


@pytest.mark.parametrize("name,width", [("mlp", 768), ("cnn", 64), ("resnet20", 32)])
@pytest.mark.parametrize("dataset,shape,classes", [
    ("mnist", MNIST, 10), ("cifar10", CIFAR, 10), ("cifar100", CIFAR, 100)
])  # fmt: skip
def test_every_model_on_every_dataset(name, width, dataset, shape, classes):
    model = build_model(name, shape, classes, width, "batch", 0.3)
    assert model(torch.randn(2, *shape)).shape == (2, classes)
    # Only the input layer and the classifier depend on the dataset.
    if name == "mlp":
        expected = params("mlp", MNIST, 10, 768, "batch") + 768 * (
            shape[0] * shape[1] * shape[2] - 784
        ) + 769 * (classes - 10)  # fmt: skip
        assert count_parameters(model) == expected


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_norm_and_dropout_switches(name, norm, dropout):
    model = build_model(name, CIFAR, 10, 16, norm, dropout)
    kinds = {type(m) for m in model.modules()}
    assert (nn.BatchNorm1d in kinds or nn.BatchNorm2d in kinds) == (norm == "batch")
    assert (nn.GroupNorm in kinds or nn.LayerNorm in kinds) == (norm in ("group", "layer"))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert bool(drops) == (dropout > 0)
    assert all(d.p == dropout for d in drops)
    # Without a norm the layer before it keeps its bias; with one, the norm's shift replaces it.
    first = next(m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    assert (first.bias is not None) == (norm == "none")


def test_dropout_placement():
    mlp = build_model("mlp", MNIST, 10, 64, "batch", 0.5)
    assert sum(isinstance(m, nn.Dropout) for m in mlp.modules()) == 2  # after each hidden layer
    cnn = build_model("cnn", CIFAR, 10, 8, "none", 0.3)
    assert sum(isinstance(m, nn.Dropout) for m in cnn.modules()) == 5  # 4 pool blocks + hidden fc
    resnet = build_model("resnet20", CIFAR, 10, 8, "batch", 0.3)
    assert sum(isinstance(m, nn.Dropout) for m in resnet.modules()) == 9  # one per basic block


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="allowed: mlp, cnn, resnet20"):
        build_model("vgg", CIFAR, 10, 8)
    with pytest.raises(ValueError, match="allowed: none, batch, group, layer"):
        build_model("mlp", CIFAR, 10, 8, norm="instance")
