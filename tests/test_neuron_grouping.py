"""Neuron grouping (Yoo et al., AAAI 2018): the tied update is the group's mean gradient, one group per filter is
plain fine-tuning, filters that start equal in one group stay equal, k-means finds planted groups, and the
BatchNorm after each convolution is the one found."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn

from gentune.errors import GentuneError
from gentune.regularizers.base import Context
from gentune.regularizers.neuron_grouping import (NeuronGrouping, filter_activations, following_norms, group_filters,
                                                  grouped_convs, groups_for, normalise_activations, tie_gradient)


def test_tie_gradient_is_the_group_mean():
    g = torch.randn(7, 3, 2, 2, dtype=torch.float64)
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 3])
    tied = tie_gradient(g, labels)
    for f in range(7):  # literal: the mean over the members of f's group
        members = [j for j in range(7) if labels[j] == labels[f]]
        torch.testing.assert_close(tied[f], sum(g[j] for j in members) / len(members))
    torch.testing.assert_close(tie_gradient(g, torch.arange(7)), g)  # singletons: unchanged
    one = tie_gradient(g, torch.zeros(7, dtype=torch.int64))
    torch.testing.assert_close(one, g.mean(0, keepdim=True).expand_as(g))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1),
                         nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def _train(model, reg=None, steps: int = 4, seed: int = 1) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 6, 6, generator=gen), torch.randint(3, (8,), generator=gen)
    if reg is not None and not reg.labels:
        reg.setup(Context(steps, model))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if reg is not None:
            reg.before_step(model)
        opt.step()
        if reg is not None:
            reg.after_step(model)
    return model


def _images():
    return torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(5))


def test_one_group_per_filter_is_plain_finetuning():
    plain = _train(_net())
    grouped = _train(_net(), NeuronGrouping(fraction=[1.0], images=_images()))
    for (name, a), b in zip(plain.state_dict().items(), grouped.state_dict().values()):
        assert torch.equal(a, b), name
    # and fewer groups do change the run (the comparison above can fail)
    fewer = _train(_net(), NeuronGrouping(fraction=[0.5], images=_images()))
    assert not torch.equal(fewer[0].weight, plain[0].weight)


def test_filters_that_start_equal_in_one_group_stay_equal():
    def start():
        net = _net()
        with torch.no_grad():
            for p in (net[0].weight, net[0].bias, net[1].weight, net[1].bias):
                p[1] = p[0]
        return net

    reg = NeuronGrouping(fraction=[1.0], layers=["0"], images=_images())
    reg.setup(Context(4, start()))
    reg.labels = {"0": torch.tensor([0, 0, 1, 2, 3, 4])}  # filters 0 and 1 tied, the rest alone
    tied = _train(start(), reg)
    for p in (tied[0].weight, tied[0].bias, tied[1].weight, tied[1].bias):
        assert torch.equal(p[0], p[1])
    moved = _train(start())  # without the tie the next layer's different weights pull them apart
    assert not torch.equal(moved[0].weight[0], moved[0].weight[1])
    assert not torch.equal(tied[0].weight[0], start()[0].weight[0])  # and they did move


def test_kmeans_recovers_planted_groups_whatever_the_scale():
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(3, 20, generator=gen)
    planted = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0, 1, 1, 0, 2])
    scale = torch.rand(12, 1, generator=gen) * 5 + 0.2  # filters of one group differ in gain and offset
    acts = scale * prototypes[planted] + torch.randn(12, 1, generator=gen) + 0.01 * torch.randn(12, 20, generator=gen)
    labels = group_filters(normalise_activations(acts), 3, seed=0)

    def same(lab):
        return [(int(lab[i]) == int(lab[j])) for i, j in itertools.combinations(range(12), 2)]

    assert same(labels) == same(planted)
    assert labels[0] == 0 and set(labels.tolist()) == {0, 1, 2}  # numbered by first appearance
    assert group_filters(acts, 12).tolist() == list(range(12))
    assert group_filters(acts, 1).tolist() == [0] * 12
    # without the normalisation the gains dominate and the planted groups are not what k-means finds
    assert same(group_filters(acts * torch.arange(1, 13.0)[:, None] ** 2, 3)) != same(planted)


def test_groups_for_fractions_and_counts():
    assert groups_for(10, fraction=0.25) == 3 and groups_for(10, fraction=1.0) == 10
    assert groups_for(10, count=4) == 4 and groups_for(10, count=40) == 10 and groups_for(3, fraction=0.01) == 1
    with pytest.raises(ValueError):
        NeuronGrouping(fraction=[0.0])
    with pytest.raises(ValueError):
        NeuronGrouping(groups=[0])
    reg = NeuronGrouping(fraction=[0.5, 0.5, 0.5], images=_images())
    with pytest.raises(GentuneError, match="3 values for 2 layers"):
        reg.setup(Context(1, _net()))
    reg = NeuronGrouping(groups=[2, 3], images=_images())
    reg.setup(Context(1, _net()))
    assert reg.layer_groups() == [2, 3] and reg.convs == ["0", "3"]


def test_following_norms_and_activations():
    net = _net()
    assert following_norms(net, ["0", "3"], _images()[:2]) == {"0": "1", "3": "4"}
    acts = filter_activations(net, ["0"], _images(), batch_size=3)
    with torch.no_grad():
        expected = net[0](_images()).mean((2, 3)).T
    torch.testing.assert_close(acts["0"], expected)
    frozen = _net()
    frozen[3].requires_grad_(False)
    assert grouped_convs(frozen) == ["0"]  # frozen convolutions are never grouped
    with pytest.raises(GentuneError, match="no trainable convolution"):
        NeuronGrouping(layers=["nothing*"], images=_images()).setup(Context(1, _net()))


def test_state_round_trip_and_regrouping():
    reg = NeuronGrouping(fraction=[0.5], regroup_every=2, images=_images())
    model = _net()
    _train(model, reg, steps=3)
    assert reg.steps == 3
    fresh = NeuronGrouping(fraction=[0.5], regroup_every=2, images=_images())
    fresh.load_state_dict(copy.deepcopy(reg.state_dict()))
    fresh.setup(Context(3, model))
    assert {k: v.tolist() for k, v in fresh.labels.items()} == {k: v.tolist() for k, v in reg.labels.items()}
    assert reg.log()["neuron_grouping/groups"] == sum(reg.layer_groups())


def test_efficientnet_norms_follow_their_convolutions():
    from gentune.models.efficientnet import EfficientNetLite

    enc = EfficientNetLite(resolution=32)
    convs = grouped_convs(enc)
    norms = following_norms(enc, convs, torch.zeros(1, 3, 32, 32))
    assert "_blocks.0._depthwise_conv" not in convs  # depthwise: not grouped
    assert norms["_conv_stem"] == "_bn0" and norms["_conv_head"] == "_bn1"
    assert norms["_blocks.3._expand_conv"] == "_blocks.3._bn0" and norms["_blocks.3._project_conv"] == "_blocks.3._bn2"
    assert len(norms) == len(convs)
