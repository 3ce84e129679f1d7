"""PyTorch translation of a galmorph NetworkSpec.

The network takes float32 NHWC images, like the Keras one, and returns logits. With
channels_last (the `auto` default on a GPU) it runs in channels-last memory (the permute of
NHWC input is then a free view); on the CPU contiguous NCHW measured faster (126 vs 91 img/s
for C2 at 63x63, 2 threads), so auto keeps it there. `Probabilities` wrapped it in
the mlflow.pytorch models galmorph logged before its models became pyfuncs (kept so that
those still unpickle). Weights start like Keras's (Glorot-uniform,
zero biases) so both backends start from the same distribution.

The one import up the layers, `galmorph.inference.pyfunc.network_dir` inside
`logged_network`, is deliberate: where a network lies inside a logged galmorph model
(artifacts/member<k>) is the pyfunc module's to say, once, and the backend needs it to load
a logged network for --init-from and explain. It is imported inside the function (importing
the backend loads no MLflow pyfunc code), and pyfunc reaches a backend only by name, through
the registry at run time (galmorph.backends.get), so the two never import each other.
"""

from __future__ import annotations

import torch
from torch import nn

from galmorph.core import acceleration, training
from galmorph.core.errors import GalmorphError
from galmorph.core.specs import NetworkSpec


class _Network(nn.Module):
    """What every galmorph network is: float32 NHWC images in, logits out, through `body`, in
    channels-last memory or contiguous NCHW, with the spec's name, input shape and class count."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.channels_last = False
        self.precision = "fp32"  # set by fit(): inference runs in the precision the network trained in
        self.spec_name = spec.name
        self.input_shape = spec.input_shape
        self.n_classes = spec.n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        return self.body(x if self.channels_last else x.contiguous())


class Net(_Network):
    """A network of galmorph's own specs (C1, C2), layer by layer."""

    def __init__(self, spec: NetworkSpec):
        super().__init__(spec)
        layers: list[nn.Module] = []
        for layer in spec.layers:
            if layer.type == "conv":
                layers += [nn.Conv2d(layer.in_shape[-1], layer.filters, layer.kernel), nn.ReLU(inplace=True)]
            elif layer.type == "bn":
                layers.append(nn.BatchNorm2d(layer.in_shape[-1], eps=training.BN_EPSILON, momentum=1 - training.BN_MOMENTUM))
            elif layer.type == "maxpool":
                layers.append(nn.MaxPool2d(layer.size))
            elif layer.type == "flatten":
                layers.append(_FlattenNHWC())
            elif layer.type == "dropout":
                layers.append(nn.Dropout(layer.rate))
            elif layer.type == "dense":
                layers += [nn.Linear(layer.in_shape[0], layer.units), nn.ReLU(inplace=True)]
            elif layer.type == "output":
                layers.append(nn.Linear(layer.in_shape[0], layer.units))
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)


class ZooNet(_Network):
    """A network of timm's zoo (a NetworkSpec with `zoo`), built from scratch by
    timm.create_model with the spec's bands as input channels, classes and classifier dropout;
    `body` is the timm model."""

    def __init__(self, spec: NetworkSpec, pretrained: bool = False):
        super().__init__(spec)
        builder = spec.builder("torch")
        # with weights: timm's tagged name (resnet18.a1_in1k) picks them, from the Hugging Face
        # cache or hub; its classifier is left out (another class count) and built fresh
        name = spec.pretrained_name("torch") if pretrained else builder["name"]
        try:
            self.body = _timm().create_model(name, pretrained=pretrained, num_classes=spec.n_classes,
                                             in_chans=spec.input_shape[-1], drop_rate=spec.layers[-1].rate,
                                             **builder.get("args", {}))
        except (OSError, ValueError, RuntimeError) as exc:  # no hub and no cached copy, or a broken one
            if not pretrained:
                raise
            raise GalmorphError(f"could not load the ImageNet weights timm/{name} from the Hugging Face cache or hub "
                                f"({type(exc).__name__}); connect to the internet once (they are cached in "
                                "$HF_HOME), or drop --pretrained") from None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW input -> the last stage's feature map, before pooling (what Grad-CAM weighs)."""
        return self.body.forward_features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(features)


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise GalmorphError(f"the zoo networks need timm ({exc}); install it with `pip install timm`") from None
    return timm


def n_outputs(net: nn.Module) -> int:
    """The number of classes a galmorph network (Net or ZooNet) predicts."""
    net = unwrap(net)  # a Net pickled before networks knew their class count: its output layer's
    return net.n_classes if hasattr(net, "n_classes") else net.body[-1].out_features


class _FlattenNHWC(nn.Module):
    """Flatten in (H, W, C) order, as Keras does, so flattened features line up across backends."""

    def forward(self, x):
        return torch.flatten(x.permute(0, 2, 3, 1), 1)


class Probabilities(nn.Module):
    """Inference wrapper: NHWC float32 images -> class probabilities."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch normalisation that stays in inference mode (its running statistics fixed) when the
    network trains, as a frozen Keras BatchNormalization does."""

    def train(self, mode: bool = True):
        return super().train(False)


def build(spec: NetworkSpec, hyper=None) -> nn.Module:
    net = ZooNet(spec, getattr(hyper, "pretrained", "none") == "imagenet") if spec.is_zoo else Net(spec)
    wanted = hyper.channels_last if hyper is not None else "auto"
    set_channels_last(net, acceleration.switch(wanted, torch.cuda.is_available()))
    return net


def set_channels_last(net: Net, on: bool) -> Net:
    """Convolutions in channels-last (NHWC) memory, or contiguous NCHW; same numbers either way."""
    net.channels_last = bool(on)
    return net.to(memory_format=torch.channels_last if on else torch.contiguous_format)


def count_params(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    return trainable, trainable + buffers



def unwrap(model: nn.Module) -> nn.Module:
    """The galmorph Net inside wrappers (Probabilities, torch.compile, DistributedDataParallel)."""
    while not hasattr(model, "body"):
        inner = next((getattr(model, a) for a in ("net", "_orig_mod", "module") if hasattr(model, a)), None)
        if inner is None:
            raise GalmorphError(f"{type(model).__name__} is not a galmorph network")
        model = inner
    return model


NETWORK_FILE = "network.pt"


def save_network(model: nn.Module, directory: str) -> list[str]:
    """Write the network inside `model` (unwrapped, a CPU copy) to `directory` as a pickled
    module (its modules stay whole: explain reads their activations); return the pip
    requirements that load it."""
    import copy

    net = copy.deepcopy(unwrap(model)).to("cpu").eval()
    torch.save(net, f"{directory}/{NETWORK_FILE}")
    needs = [f"torch=={torch.__version__.split('+')[0]}"]
    if isinstance(net, ZooNet):  # unpickling imports timm's modules
        needs.append(f"timm=={_timm().__version__}")
    return needs


def load_network(directory: str) -> nn.Module:
    """The network save_network wrote to `directory`, in inference mode on this process's
    device (the GPU where there is one)."""
    from galmorph.backends.torch.device import device

    # a galmorph Net pickled by galmorph itself: the module objects are the point (save_network)
    net = torch.load(f"{directory}/{NETWORK_FILE}", map_location="cpu", weights_only=False)
    return net.to(device()).eval()


def logged_network(uri: str) -> nn.Module:
    """The network of the galmorph model logged at `uri`, on the CPU: from the pyfunc model's
    artifacts (galmorph.inference.pyfunc.network_dir), or from a model logged before galmorph
    models were pyfuncs (mlflow.pytorch, unwrapped from Probabilities)."""
    import tempfile

    import mlflow

    from galmorph.inference.pyfunc import network_dir

    with tempfile.TemporaryDirectory(prefix="galmorph-net-") as tmp:
        folder = network_dir(uri, tmp)
        if folder is None:
            return unwrap(mlflow.pytorch.load_model(uri, map_location="cpu"))
        return load_network(str(folder)).to("cpu")


def load_weights(model: nn.Module, uri: str, freeze: str = "none") -> list[str]:
    """Copy the weights of the network logged at `uri` tensor by tensor (same module names: both
    were built from specs); modules whose shapes differ are left as built and returned.
    freeze "conv": convolutions and batch normalisation get no gradients, BN its running statistics."""
    source = logged_network(uri).state_dict()
    state = model.state_dict()
    kept = sorted({key.rsplit(".", 1)[0] for key, t in state.items()
                   if key not in source or source[key].shape != t.shape})
    with torch.no_grad():
        for key, t in state.items():
            if key.rsplit(".", 1)[0] not in kept:
                t.copy_(source[key])
    if freeze == "conv":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.requires_grad_(False)
            if type(m) is nn.BatchNorm2d:
                m.__class__ = FrozenBatchNorm2d  # same state, only train() differs
                m.eval()
    return kept
