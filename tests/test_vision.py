"""Vision encoders, MAE, context encoder and image classification: literal re-implementations, invariances that
define each method (the MAE encoder never sees removed patches; the context encoder never sees the hole; the
losses ignore what they must ignore), and save/load."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gentune import registry
from gentune.errors import GentuneError
from gentune.models.checkpoint import load_encoder, save_encoder
from gentune.models.vision import (ConvDecoder, ConvEncoder, VisionTransformer, create_encoder, drop_path, patchify,
                                   sincos_pos_embed, unpatchify)
from gentune.objectives.context_encoder import (ContextEncoder, Discriminator, block_mask, center_mask,
                                                context_encoder_model, context_loss, region_mask)
from gentune.objectives.image_classification import ImageClassification, ImageClassifier, param_groups
from gentune.objectives.mae import MAE, MaskedAutoencoder, mae_flops, mae_loss, random_masking


def tiny_vit(**kw):
    torch.manual_seed(0)
    return VisionTransformer(**{"dim": 32, "depth": 2, "heads": 2, **kw})


def images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_patchify_layout_and_round_trip():
    x = images(2)
    p = patchify(x, 4)
    assert p.shape == (2, 64, 48)
    # patch i*8+j is the (row i, col j) 4x4 square, laid out (row, col, channel)
    assert torch.equal(p[:, 8 * 3 + 5], x[:, :, 12:16, 20:24].permute(0, 2, 3, 1).reshape(2, 48))
    assert torch.equal(unpatchify(p, 4), x)
    assert torch.equal(tiny_vit().unpatchify(tiny_vit().patchify(x)), x)


def _mae_reference_pos_embed(embed_dim, grid_size):
    """MAE's util/pos_embed.py, verbatim in numpy (with cls_token=True)."""

    def one_d(embed_dim, pos):
        omega = np.arange(embed_dim // 2, dtype=np.float64)
        omega /= embed_dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


def test_sincos_pos_embed_equals_mae_reference():
    got = sincos_pos_embed(32, 8).numpy()
    np.testing.assert_allclose(got, _mae_reference_pos_embed(32, 8), atol=1e-6)
    with pytest.raises(ValueError):
        sincos_pos_embed(30, 8)


@pytest.mark.parametrize("ratio,keep", [(0.75, 16), (0.3, 45), (0.0, 64)])
def test_random_masking(ratio, keep):
    ids_keep, ids_restore, mask = random_masking(5, 64, ratio, torch.Generator().manual_seed(1))
    assert ids_keep.shape == (5, keep) and mask.shape == ids_restore.shape == (5, 64)
    assert (mask.sum(1) == 64 - keep).all()
    ids_shuffle = ids_restore.argsort(1)  # the shuffle that ids_restore undoes
    assert torch.equal(ids_shuffle[:, :keep], ids_keep)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(64).expand(5, 64))
    assert (torch.gather(mask, 1, ids_keep) == 0).all()  # kept patches are the visible ones
    again = random_masking(5, 64, ratio, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], ids_keep)
    if keep < 64:
        other = random_masking(5, 64, ratio, torch.Generator().manual_seed(2))[2]
        assert not torch.equal(other, mask)


def test_encoder_sees_only_visible_patches():
    enc = tiny_vit().eval()
    x = images(3)
    ids_keep, _, mask = random_masking(3, 64, 0.75, torch.Generator().manual_seed(0))
    tokens = enc.forward_encoder(x, ids_keep)
    assert tokens.shape == (3, 1 + 16, 32)
    noise = patchify(images(3, seed=9), 4)
    scrambled = unpatchify(torch.where(mask.bool()[..., None], noise, patchify(x, 4)), 4)
    assert not torch.equal(scrambled, x)
    assert torch.equal(enc.forward_encoder(scrambled, ids_keep), tokens)
    # ... while a change in a visible patch does reach the tokens
    p = patchify(x, 4)
    p[0, ids_keep[0, 0]] += 1.0
    assert not torch.allclose(enc.forward_encoder(unpatchify(p, 4), ids_keep), tokens)
    # keeping every patch in order is the plain forward
    assert torch.allclose(enc.forward_encoder(x, torch.arange(64).expand(3, 64)), enc.forward_encoder(x))


def _mae_loss_literal(pred, target, mask, norm):
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if mask[b, n] == 1:
                t = target[b, n]
                if norm:
                    t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
                total += np.mean((pred[b, n] - t) ** 2)
                count += 1
    return total / count


@pytest.mark.parametrize("norm", [False, True])
def test_mae_loss_literal_and_ignores_visible_patches(norm):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 16, 12, generator=g, dtype=torch.float64), torch.randn(3, 16, 12, generator=g,
                                                                                         dtype=torch.float64)
    mask = random_masking(3, 16, 0.5, g)[2].double()
    got = mae_loss(pred, target, mask, norm).item()
    assert got == pytest.approx(_mae_loss_literal(pred.numpy(), target.numpy(), mask.numpy(), norm), rel=1e-6)
    moved = pred + 5.0 * (1 - mask)[..., None]  # visible patches only
    assert mae_loss(moved, target, mask, norm).item() == pytest.approx(got, rel=1e-12)
    moved = pred + 0.5 * mask[..., None]
    assert mae_loss(moved, target, mask, norm).item() != pytest.approx(got, rel=1e-3)


def test_norm_pix_target_is_per_patch_standardised():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 8, 48, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 8, dtype=torch.float64)
    standardised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert mae_loss(standardised, target, mask, True).item() == pytest.approx(0.0, abs=1e-12)
    # a per-patch affine change of the target (scale > 0) leaves the normalised loss unchanged
    a, b = torch.rand(2, 8, 1, generator=g, dtype=torch.float64) + 0.5, torch.randn(2, 8, 1, generator=g)
    pred = torch.randn(2, 8, 48, generator=g, dtype=torch.float64)
    assert mae_loss(pred, a * target + b, mask, True).item() == pytest.approx(
        mae_loss(pred, target, mask, True).item(), rel=1e-5)
    assert mae_loss(pred, a * target + b, mask, False).item() != pytest.approx(
        mae_loss(pred, target, mask, False).item(), rel=1e-3)


def test_mae_decoder_puts_tokens_back_in_place():
    """Decoder without blocks: visible patch n predicts from its own encoded token, a removed one from the mask
    token; both with the decoder position of n (a literal re-implementation of MAE's unshuffle)."""
    mae = MaskedAutoencoder(tiny_vit(), decoder_dim=16, decoder_depth=0, decoder_heads=2).eval()
    x = images(2)
    out = mae(x, 0.75, torch.Generator().manual_seed(3))
    ids_keep, _, mask = random_masking(2, 64, 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(out["mask"], mask)
    latent = mae.encoder.forward_encoder(x, ids_keep)
    pos = mae.decoder_pos_embed[0]
    head = lambda v: mae.decoder_pred(mae.decoder_norm(v))  # noqa: E731
    for b in range(2):
        for j, n in enumerate(ids_keep[b].tolist()):
            assert torch.allclose(out["pred"][b, n], head(mae.decoder_embed(latent[b, 1 + j]) + pos[n + 1]), atol=1e-6)
        for n in torch.nonzero(mask[b]).flatten().tolist():
            assert torch.allclose(out["pred"][b, n], head(mae.mask_token[0, 0] + pos[n + 1]), atol=1e-6)


def test_mae_objective_and_flops():
    mae = MaskedAutoencoder(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    x = images(1)
    objective = registry.create("objective", "mae", mask_ratio=0.75)
    objective.generator = torch.Generator().manual_seed(0)
    result = objective(mae, {"pixel_values": x})
    out = result["output"]
    assert out["pred"].shape == (1, 64, 48) and out["mask"].sum() == 48
    assert result["loss"].item() == pytest.approx(mae_loss(out["pred"], patchify(x, 4), out["mask"], True).item())
    # the analytic count equals torch's count of every matmul and conv (math attention, so it is counted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        mae(x, 0.75)
    assert mae_flops(mae.encoder, 16, 1, 0.75) == counter.get_total_flops()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        mae.encoder(x)
    assert mae.encoder.flops() == counter.get_total_flops()
    with pytest.raises(GentuneError, match="mask_ratio"):
        registry.create("objective", "mae", mask_ratio=1.0)


def test_mae_overfits_eight_images():
    """Same masks every step on 8 smooth images: after 20 steps the loss has fallen (mostly the output scale);
    after 120 it is far below 47/48, the loss of the best per-patch constant under norm_pix (the decoder really
    fills removed patches in from their context)."""
    x = torch.nn.functional.interpolate(images(8)[:, :, :4, :4], size=(32, 32), mode="bilinear")
    mae = MaskedAutoencoder(tiny_vit(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        objective = MAE(0.75, norm_pix_loss=True, generator=torch.Generator().manual_seed(0))
        loss = objective(mae, {"pixel_values": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[19] < 0.7 * losses[0], losses[:20]
    assert losses[-1] < 0.6 * 47 / 48, losses[::10]


def test_center_mask_exact():
    m = center_mask(2, 32, 32)
    assert m.shape == (2, 1, 32, 32) and m.sum() == 2 * 16 * 16
    assert (m[:, :, 8:24, 8:24] == 1).all()
    assert center_mask(1, 32, 32, size=10)[0, 0, 11:21, 11:21].sum() == 100


def test_block_and_region_masks_cover_about_ratio():
    g = torch.Generator().manual_seed(0)
    blocks = block_mask(64, 32, 32, ratio=0.25, generator=g)
    cover = blocks.mean((1, 2, 3))
    assert blocks.shape == (64, 1, 32, 32) and set(blocks.unique().tolist()) <= {0.0, 1.0}
    assert (cover - 0.25).abs().max() <= 0.0625 / 2 + 1e-6  # closest union: within half an 8x8 square
    assert (cover - 0.25).abs().mean() < 0.02
    regions = region_mask(64, 32, 32, ratio=0.3, generator=g)
    assert (regions.sum((1, 2, 3)) == round(0.3 * 1024)).all()
    # blobs, not scattered pixels: far fewer 0/1 edges between neighbours than an i.i.d. mask of equal coverage
    edges = lambda m: (m[..., 1:] != m[..., :-1]).float().mean()  # noqa: E731
    iid = (torch.rand(64, 1, 32, 32, generator=g) < 0.3).float()
    assert edges(regions) < edges(iid) / 3
    assert not torch.equal(region_mask(2, 32, 32, generator=g), region_mask(2, 32, 32, generator=g))


def _context_loss_literal(recon, target, mask, overlap, weight):
    err = ((recon - target) ** 2).mean(1)
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        hole = mask[b, 0]
        for i in range(32):
            for j in range(32):
                near = hole[max(0, i - overlap):i + overlap + 1, max(0, j - overlap):j + overlap + 1].max()
                if hole[i, j] == 1:
                    total, count = total + err[b, i, j], count + 1
                elif near == 1:
                    total, count = total + weight * err[b, i, j], count + 1
    return total / count


@pytest.mark.parametrize("overlap", [0, 2])
def test_context_loss_literal(overlap):
    g = torch.Generator().manual_seed(0)
    recon, target = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64), images(2).double()
    mask = block_mask(2, 32, 32, 0.25, generator=g).double()
    got = context_loss(recon, target, mask, overlap, 10.0).item()
    want = _context_loss_literal(recon.numpy(), target.numpy(), mask.numpy(), overlap, 10.0)
    assert got == pytest.approx(want, rel=1e-6)
    if overlap == 0:  # only the hole counts
        assert context_loss(recon + 3 * (1 - mask), target, mask).item() == pytest.approx(got, rel=1e-12)
        assert context_loss(recon + 0.5 * mask, target, mask).item() != pytest.approx(got, rel=1e-3)


def test_context_encoder_never_sees_the_hole():
    torch.manual_seed(0)
    model = context_encoder_model("conv-tiny").eval()
    x, mask = images(2), center_mask(2, 32, 32)
    recon = model(x, mask)["recon"]
    assert recon.shape == x.shape
    assert torch.equal(model(x + 7.0 * mask, mask)["recon"], recon)
    assert not torch.allclose(model(x + 0.5 * (1 - mask), mask)["recon"], recon)


def test_context_encoder_adversarial_terms_train_the_right_parameters():
    torch.manual_seed(0)
    model = context_encoder_model("conv-tiny", adversarial=True)
    x = images(4)
    result = ContextEncoder(mask="regions", adv_weight=0.5, generator=torch.Generator().manual_seed(0))(
        model, {"pixel_values": x})
    out = result["output"]
    assert set(result) >= {"loss", "reconstruction", "adversarial", "discriminator"}
    disc, gen = list(model.discriminator.parameters()), list(model.encoder.parameters())

    def bce(logits, target):  # the standard GAN losses, written out
        return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()

    d_loss = bce(out["d_real"], 1.0) + bce(out["d_fake"], 0.0)
    g_loss = context_loss(out["recon"], x, out["mask"]) + 0.5 * bce(out["d_fake_gen"], 1.0)
    assert result["loss"].item() == pytest.approx((d_loss + g_loss).item(), rel=1e-6)
    total = torch.autograd.grad(result["loss"], disc + gen, retain_graph=True)
    want_d = torch.autograd.grad(d_loss, disc, retain_graph=True)
    want_g = torch.autograd.grad(g_loss, gen, retain_graph=True)
    for got, want in zip(total, [*want_d, *want_g]):
        assert torch.allclose(got, want, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in torch.autograd.grad(bce(out["d_fake_gen"], 1.0), gen, retain_graph=True))
    with pytest.raises(GentuneError, match="discriminator"):
        ContextEncoder(adv_weight=0.1)(context_encoder_model("conv-tiny"), {"pixel_values": x})
    with pytest.raises(GentuneError, match="mask"):
        registry.create("objective", "context-encoder", mask="circle")
    assert Discriminator()(x).shape == (4,)


@pytest.mark.parametrize("name", ["vit-micro-p4", "conv-tiny"])
@pytest.mark.parametrize("head", ["linear", "mlp", "bn-linear"])
def test_classifier_shapes_and_linear_probe(name, head):
    torch.manual_seed(0)
    model = ImageClassifier(create_encoder(name, **({"drop_path": 0.1} if "vit" in name else {})), 10, head,
                            linear_probe=True).train()
    batch = {"pixel_values": images(4), "labels": torch.tensor([0, 1, 2, 3])}
    result = registry.create("objective", "image-classification")(model, batch)
    assert result["output"].shape == (4, 10)
    result["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert not model.encoder.training and model.head.training
    # a frozen encoder gives the same features in train mode (no drop-path)
    assert torch.equal(model.encoder.forward_features(batch["pixel_values"]),
                       model.encoder.forward_features(batch["pixel_values"]))


def test_finetuning_trains_the_encoder_and_matches_cross_entropy():
    model = ImageClassifier(tiny_vit(pool="mean"), 3)
    batch = {"pixel_values": images(4), "labels": torch.tensor([0, 1, 2, 0])}
    result = ImageClassification(label_smoothing=0.1)(model, batch)
    logits = result["output"].detach().double()
    q = torch.full((4, 3), 0.1 / 3).scatter_(1, batch["labels"][:, None], 0.9 + 0.1 / 3).double()
    assert result["loss"].item() == pytest.approx(-(q * logits.log_softmax(-1)).sum(1).mean().item(), rel=1e-5)
    result["loss"].backward()
    # the encoder gets the loss's gradient: its directional derivative along the gradient matches finite
    # differences of the loss (a detached or frozen encoder would give None or 0; a wrong one another slope)
    w = model.encoder.blocks[0].qkv.weight
    g = w.grad.detach().clone()
    assert g.abs().sum() > 0
    with torch.no_grad():
        def loss_at(t):
            w.add_(t * g)
            value = ImageClassification(label_smoothing=0.1)(model, batch)["loss"].double()
            w.sub_(t * g)
            return value
        model.eval()  # no dropout or drop-path: the same function at both points
        h = 1e-3 / g.norm()
        slope = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert slope.item() == pytest.approx(g.pow(2).sum().item(), rel=2e-2)


@pytest.mark.parametrize("make", [lambda: tiny_vit(depth=3), lambda: ConvEncoder((4, 8, 8, 8))])
def test_layer_decay_param_groups(make):
    model = ImageClassifier(make(), 5)
    lr, decay = 1e-3, 0.5
    groups = param_groups(model, lr, 0.05, decay)
    seen = [p for g in groups for p in g["params"]]
    assert len(seen) == len(set(map(id, seen))) == len(list(model.parameters()))
    group_of = {id(p): g for g in groups for p in g["params"]}
    n = model.encoder.num_layers
    for name, p in model.named_parameters():
        g = group_of[id(p)]
        if name.startswith("head."):
            layer = n
        elif ".blocks." in name:
            layer = int(name.split(".")[2]) + (1 if isinstance(model.encoder, VisionTransformer) else 0)
        elif "patch_embed" in name or "cls_token" in name:
            layer = 0
        else:
            layer = n  # the final norm
        assert g["lr"] == pytest.approx(lr * decay ** (n - layer)), name
        no_decay = p.ndim == 1 or name.endswith("cls_token")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    probe = ImageClassifier(make(), 5, linear_probe=True)
    assert sum(len(g["params"]) for g in param_groups(probe, lr, 0.05, decay)) == 2


@pytest.mark.parametrize("name", ["vit-micro-p4", "conv-tiny"])
def test_save_load_round_trip(tmp_path, name):
    torch.manual_seed(0)
    enc = create_encoder(name).eval()
    out = save_encoder(enc, tmp_path / "enc", {"epochs": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no .tmp left behind
    loaded, meta = load_encoder(out)
    x = images(2)
    assert torch.equal(loaded.eval().forward_features(x), enc.forward_features(x))
    assert meta["epochs"] == 3 and meta["encoder"] == name and meta["architecture"] == enc.architecture
    if "vit" in name:
        assert load_encoder(out, pool="mean")[0].pool == "mean"


def test_encoder_errors(tmp_path):
    with pytest.raises(GentuneError, match="vit-tiny-p4"):
        create_encoder("vit-huge")
    with pytest.raises(GentuneError, match="no such directory"):
        load_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GentuneError, match="gentune.json"):
        load_encoder(tmp_path / "empty")
    bad = save_encoder(create_encoder("conv-tiny"), tmp_path / "bad")
    (bad / "gentune.json").write_text("{not json")
    with pytest.raises(GentuneError, match="malformed"):
        load_encoder(bad)
    (bad / "gentune.json").write_text(json.dumps({"architecture": "resnet", "config": {}}))
    with pytest.raises(GentuneError, match="architecture"):
        load_encoder(bad)
    (bad / "gentune.json").write_text(json.dumps({"architecture": "conv", "config": {"widths": [8, 16, 16, 64]}}))
    with pytest.raises(GentuneError, match="cannot load"):
        load_encoder(bad)


def test_conv_shapes():
    enc = create_encoder("conv-small")
    x = images(2)
    assert enc.forward_map(x).shape == (2, 256, 2, 2) and enc.forward_features(x).shape == (2, 256)
    assert ConvDecoder(enc.widths)(enc.forward_map(x)).shape == x.shape


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    x = torch.ones(4000, 3, 5)
    torch.manual_seed(0)
    y = drop_path(x, 0.3, training=True)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7)).all(1)).all()
    assert (per_sample[:, 0] > 0).float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert torch.equal(drop_path(x, 0.3, training=False), x)
