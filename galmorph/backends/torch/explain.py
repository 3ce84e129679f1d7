"""PyTorch side of galmorph.workflows.explain: what a network's convolutions see, as numpy arrays.

Mirrors galmorph/backends/keras/explain.py function for function. Convolutions are counted
in network order (0 = the first, -1 = the last); outputs are taken after the ReLU and
returned NHWC, like Keras's. In a zoo network (ZooNet) a convolution's own output is
taken, and -1 is the last stage's feature map before pooling (Grad-CAM's usual layer). The Grad-CAM arithmetic itself is neutral
(galmorph.workflows.explain.grad_cam).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from galmorph.backends.torch.model import ZooNet, logged_network
from galmorph.backends.torch.model import unwrap as _net
from galmorph.core.errors import GalmorphError


def _relu_after_conv(net: nn.Module, layer_index: int) -> int:
    """Position in net.body of the ReLU that follows convolution `layer_index`."""
    convs = [i for i, m in enumerate(net.body) if isinstance(m, nn.Conv2d)]
    try:
        return convs[layer_index] + 1
    except IndexError:
        raise GalmorphError(f"the network has {len(convs)} convolutions; layer_index {layer_index} is out of range") from None


def _forward(net: nn.Module, x: np.ndarray, stop: int | None):
    """Run net.body in inference mode; (output of module `stop`, logits or None)."""
    dev = next(net.parameters()).device
    h = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(dev).permute(0, 3, 1, 2).contiguous()
    act = None
    for i, module in enumerate(net.body):
        h = module(h)
        if i == stop:
            act = h
    return act, h


def _zoo_forward(net: ZooNet, x: np.ndarray, layer_index: int):
    """A zoo network's (activation, logits): convolution `layer_index`'s output (hooked), or for
    -1 the last stage's feature map before pooling, as the Keras side takes its "pool" input."""
    dev = next(net.parameters()).device
    h = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(dev).permute(0, 3, 1, 2).contiguous()
    if layer_index == -1:
        act = net.features(h)
        return act, net.head(act)
    convs = [m for m in net.body.modules() if isinstance(m, nn.Conv2d)]
    try:
        conv = convs[layer_index]
    except IndexError:
        raise GalmorphError(f"the network has {len(convs)} convolutions; layer_index {layer_index} is out of range") from None
    seen = []
    handle = conv.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        logits = net.body(h)
    finally:
        handle.remove()
    return seen[0], logits


def feature_maps(model: nn.Module, x: np.ndarray, layer_index: int = 0) -> np.ndarray:
    """float32 (B, h, w, filters): the output of convolution `layer_index` for images x (B, H, W, C)."""
    net = _net(model)
    if isinstance(net, ZooNet):
        with torch.no_grad():
            was_training = net.training
            net.eval()
            try:
                h = _zoo_forward(net, x, layer_index)[0]
            finally:
                net.train(was_training)
        return h.permute(0, 2, 3, 1).float().cpu().numpy()
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            pos = _relu_after_conv(net, layer_index)
            dev = next(net.parameters()).device
            h = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(dev).permute(0, 3, 1, 2).contiguous()
            for module in net.body[: pos + 1]:
                h = module(h)
    finally:
        net.train(was_training)
    return h.permute(0, 2, 3, 1).float().cpu().numpy()


def conv_gradients(model: nn.Module, x: np.ndarray, class_index, layer_index: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(activations, gradients), float32 (B, h, w, filters): convolution `layer_index`'s output
    and the gradient of each image's `class_index` logit (before the softmax) with respect to it."""
    net = _net(model)
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            act, logits = (_zoo_forward(net, x, layer_index) if isinstance(net, ZooNet)
                           else _forward(net, x, _relu_after_conv(net, layer_index)))
            index = torch.as_tensor(np.broadcast_to(np.asarray(class_index, dtype=np.int64), (x.shape[0],)).copy(),
                                    device=logits.device)
            score = logits.float().gather(1, index[:, None]).sum()
            (grads,) = torch.autograd.grad(score, act)
    finally:
        net.train(was_training)
    to_np = lambda t: t.detach().permute(0, 2, 3, 1).float().cpu().numpy()  # noqa: E731
    return to_np(act), to_np(grads)


def load_logged_model(uri: str) -> nn.Module:
    """The network a galmorph run logged (its `model_uri` tag), on the CPU (model.logged_network)."""
    return logged_network(uri)
