"""Neuron grouping (Yoo, Fan, Boddeti, Kitani, "Efficient K-Shot Learning with Regularized Deep Networks", AAAI
2018): the filters of a layer that respond alike on the training images are grouped, and every filter of a group is
updated with the group's mean gradient, so fine-tuning on k examples per class searches a space of dimension G per
layer instead of one per filter.

For each chosen convolution (output channels = filters):

1. the activation vector of filter f is its spatially averaged response on each of the n training images,
   a_f in R^n, centred and scaled to unit norm (so that filters are compared by the shape of their response, the
   Pearson correlation, not its scale);
2. k-means (scikit-learn) clusters the vectors into G groups;
3. after backward, the gradient of every filter's weights, its bias and the affine parameters of the BatchNorm
   that normalises its output are replaced by their group's mean.

G per layer is a fraction of its filters or a count; groups are computed once before the first step, or again
every ``regroup_every`` steps. With G equal to the number of filters this is plain fine-tuning.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import GentuneError
from ..registry import register
from ..tensors import unwrap
from .base import Context, Regularizer


def tie_gradient(grad: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Replace each row of ``grad`` (filters along dim 0) by the mean of the rows of its group.

    Args:
        grad: (F, ...) a parameter's gradient, one row per filter.
        labels: (F,) group ids in [0, G).

    Returns:
        A tensor like ``grad``: row f is the mean of rows {f' : labels[f'] == labels[f]}.
    """
    flat = grad.reshape(grad.shape[0], -1)
    labels = labels.to(grad.device)
    groups = int(labels.max()) + 1 if labels.numel() else 0
    sums = torch.zeros(groups, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=groups).to(flat.dtype).clamp_min(1)
    return (sums / counts[:, None])[labels].reshape(grad.shape)


def normalise_activations(acts: torch.Tensor) -> torch.Tensor:
    """(F, n) activation vectors -> centred over the images and scaled to unit norm (a constant vector stays 0)."""
    acts = acts.double() - acts.double().mean(1, keepdim=True)
    return acts / acts.norm(dim=1, keepdim=True).clamp_min(1e-12)


def group_filters(acts: torch.Tensor, groups: int, seed: int = 0) -> torch.Tensor:
    """k-means of a layer's normalised activation vectors into ``groups`` groups.

    Args:
        acts: (F, n) activation vectors (one row per filter), normalised or not (see :func:`normalise_activations`).
        groups: G, clipped to [1, F]; G = F gives every filter its own group (no k-means run).
        seed: k-means' initialisation.

    Returns:
        (F,) int64 group ids in [0, G'), G' <= G the number of non-empty groups, numbered by first appearance.
    """
    f = acts.shape[0]
    groups = max(1, min(int(groups), f))
    if groups == f:
        return torch.arange(f)
    if groups == 1:
        return torch.zeros(f, dtype=torch.int64)
    from sklearn.cluster import KMeans

    x = acts.detach().double().cpu().numpy()
    distinct = len(np.unique(np.round(x, 12), axis=0))
    km = KMeans(n_clusters=min(groups, distinct), n_init=4, random_state=seed).fit(x)
    _, first = np.unique(km.labels_, return_index=True)  # renumber by first appearance: deterministic ids
    order = {int(km.labels_[i]): j for j, i in enumerate(sorted(first))}
    return torch.tensor([order[int(c)] for c in km.labels_], dtype=torch.int64)


def groups_for(filters: int, fraction: float | None = None, count: int | None = None) -> int:
    """G of a layer with ``filters`` filters: ``count`` (clipped to [1, filters]) or ceil(fraction x filters)."""
    if count is not None:
        return max(1, min(int(count), filters))
    return max(1, min(filters, math.ceil(float(fraction) * filters)))


def grouped_convs(model: nn.Module, patterns=("*",)) -> list[str]:
    """Names of the convolutions neuron grouping can act on: ``nn.Conv2d`` modules matching one of ``patterns``
    (fnmatch on the module name), not depthwise (groups == 1), with trainable weights and at least 2 filters, in
    the model's order."""
    names = []
    for name, m in unwrap(model).named_modules():
        if (isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 1 and m.weight.requires_grad
                and any(fnmatch.fnmatchcase(name, p) for p in patterns)):
            names.append(name)
    return names


def following_norms(model: nn.Module, convs: list[str], example: torch.Tensor) -> dict[str, str]:
    """conv name -> name of the BatchNorm whose input is that conv's output, found by one forward pass on
    ``example`` (convs whose output no BatchNorm takes are left out)."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    outputs: dict[int, str] = {}
    found: dict[str, str] = {}
    keep = []  # the tensors stay alive during the pass, so their ids are not reused
    hooks = []

    def on_conv(name):
        def hook(module, inputs, output):
            outputs[id(output)] = name
            keep.append(output)
        return hook

    def on_norm(name):
        def hook(module, inputs):
            conv = outputs.get(id(inputs[0]))
            if conv is not None and conv not in found:
                found[conv] = name
        return hook

    for name in convs:
        hooks.append(modules[name].register_forward_hook(on_conv(name)))
    for name, m in modules.items():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(on_norm(name)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return found


def filter_activations(model: nn.Module, convs: list[str], inputs: torch.Tensor,
                       batch_size: int = 64) -> dict[str, torch.Tensor]:
    """conv name -> (F, n): each filter's spatially averaged output on each of the n ``inputs`` (model in eval
    mode, no gradients)."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in convs}
    hooks = [modules[n].register_forward_hook(
        lambda m, i, out, n=n: acts[n].append(out.detach().float().mean((2, 3)))) for n in convs]
    was = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                model(inputs[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: torch.cat(v).T.cpu() for n, v in acts.items()}


@register("regularizer", "neuron-grouping")
class NeuronGrouping(Regularizer):
    """Neuron grouping: tie the gradients of filters that respond alike on the training images (Yoo et al., AAAI
    2018).

    Args:
        fraction: G per layer as a fraction of its filters (ceil), one value for every layer or one per layer; 1
            is plain fine-tuning.
        groups: G per layer as counts instead (one value for every layer, or one per layer); overrides fraction.
        layers: fnmatch patterns of the convolutions to group (module names, e.g. ``encoder._blocks.1[0-5].*``);
            depthwise and frozen convolutions are never grouped.
        regroup_every: recompute the groups every this many optimizer steps (0: once, before the first step).
        max_images: training images the activation vectors are computed on (a seeded subset when there are more).
        seed: k-means' initialisation and the image subset.
        images: the model's inputs to compute activations on (a float tensor), instead of the task's training
            images.
    """

    def __init__(self, fraction: list[float] = (0.5,), groups: list[int] | None = None,
                 layers: list[str] = ("*",), regroup_every: int = 0, max_images: int = 512, seed: int = 0, *,
                 images: torch.Tensor | None = None):
        fraction = [float(f) for f in (fraction if isinstance(fraction, (list, tuple)) else [fraction])]
        if groups is not None:
            groups = [int(g) for g in (groups if isinstance(groups, (list, tuple)) else [groups])]
            if not groups or min(groups) < 1:
                raise ValueError(f"neuron-grouping: groups must be positive counts, got {groups}")
        if not fraction or any(not 0 < f <= 1 for f in fraction):
            raise ValueError(f"neuron-grouping: fraction must be in (0, 1], got {fraction}")
        if regroup_every < 0 or max_images < 2:
            raise ValueError("neuron-grouping: regroup_every must be >= 0 and max_images >= 2")
        self.fraction, self.groups, self.layers = fraction, groups, [str(p) for p in layers]
        self.regroup_every, self.max_images, self.seed = int(regroup_every), int(max_images), int(seed)
        self._images = images
        self.convs: list[str] = []
        self.norms: dict[str, str] = {}
        self.labels: dict[str, torch.Tensor] = {}
        self.steps = 0

    def _inputs(self, context: Context) -> torch.Tensor:
        if self._images is not None:
            x = torch.as_tensor(self._images)
        elif "train_inputs" in context.data:
            x = context.data["train_inputs"]()
        else:
            raise GentuneError("neuron-grouping: this task gives no training images to group filters on (it groups "
                               "the filters of image models; in Python give images=)")
        if len(x) > self.max_images:
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[:self.max_images]
            x = x[pick.sort().values]
        if len(x) < 2:
            raise GentuneError("neuron-grouping: needs at least 2 training images to compare filters on")
        return x

    def layer_groups(self) -> list[int]:
        """G of each grouped layer, in order."""
        return [int(self.labels[n].max()) + 1 for n in self.convs]

    def _targets(self, model) -> list[int]:
        modules = dict(unwrap(model).named_modules())
        per = self.groups if self.groups is not None else self.fraction
        if len(per) not in (1, len(self.convs)):
            raise GentuneError(f"neuron-grouping: {len(per)} values for {len(self.convs)} layers (give one, or one "
                               f"per layer: {', '.join(self.convs[:4])}{', ...' if len(self.convs) > 4 else ''})")
        per = per * len(self.convs) if len(per) == 1 else per
        return [groups_for(modules[n].out_channels, count=v) if self.groups is not None else
                groups_for(modules[n].out_channels, fraction=v) for n, v in zip(self.convs, per)]

    def regroup(self, model) -> None:
        """Group every chosen layer's filters on the training images (k-means of the activation vectors)."""
        acts = filter_activations(model, self.convs, self.inputs)
        for name, g in zip(self.convs, self._targets(model)):
            self.labels[name] = group_filters(normalise_activations(acts[name]), g, self.seed)

    def setup(self, context: Context) -> None:
        model = context.model
        self.convs = grouped_convs(model, self.layers)
        if not self.convs:
            raise GentuneError(f"neuron-grouping: no trainable convolution matches layers={self.layers} (it groups "
                               "the filters of convolutions: an image model)")
        self.inputs = self._inputs(context)
        self.norms = following_norms(model, self.convs, self.inputs[:2].to(next(model.parameters()).device))
        self.steps = 0
        if not self.labels or set(self.labels) != set(self.convs):  # a resumed run keeps its groups
            self.regroup(model)

    def __call__(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        return {}  # no loss term: the method acts on the gradients (before_step)

    def before_step(self, model) -> None:
        modules = dict(unwrap(model).named_modules())
        for name in self.convs:
            labels = self.labels[name]
            params = [modules[name].weight, modules[name].bias]
            if name in self.norms:
                params += [modules[self.norms[name]].weight, modules[self.norms[name]].bias]
            for p in params:
                if p is not None and p.grad is not None:
                    p.grad.copy_(tie_gradient(p.grad, labels))

    def after_step(self, model) -> None:
        self.steps += 1
        if self.regroup_every and self.steps % self.regroup_every == 0:
            self.regroup(model)

    def log(self) -> dict[str, float]:
        if not self.labels:
            return {}
        filters = sum(len(v) for v in self.labels.values())
        return {"neuron_grouping/groups": float(sum(self.layer_groups())), "neuron_grouping/filters": float(filters)}

    def state_dict(self) -> dict:
        return {"labels": {k: v.clone() for k, v in self.labels.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.labels = {k: torch.as_tensor(v) for k, v in state.get("labels", {}).items()}
        self.steps = int(state.get("steps", 0))


NeuronGroupingConfig = NeuronGrouping.Config
