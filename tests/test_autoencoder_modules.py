"""Encoder/decoder shapes, Gaussian posterior and vector quantiser against hand computations."""
import math

import pytest
import torch

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage, VQModel, VQModelInterface
from ldm.modules.autoencoder import DiagonalGaussianDistribution, VectorQuantizer


def ddconfig(f: int, z: int, double_z: bool = True, res: int = 32) -> dict:
    mult = [1] + [2] * int(math.log2(f)) if f > 1 else [1]
    return dict(double_z=double_z, z_channels=z, resolution=res, in_channels=3, out_ch=3, ch=8, ch_mult=mult,
                num_res_blocks=1, attn_resolutions=[res // f], dropout=0.0, num_groups=4)


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16])
def test_kl_encode_decode_shapes(f):
    model = AutoencoderKL(ddconfig(f, z=3), lossconfig=None, embed_dim=3).eval()
    x = torch.randn(2, 3, 32, 32)
    posterior = model.encode(x)
    assert posterior.sample().shape == posterior.mode().shape == (2, 3, 32 // f, 32 // f)
    assert posterior.kl().shape == (2,)
    assert model.decode(posterior.mode()).shape == x.shape
    mean, std = model.latent_moments(x)
    assert torch.equal(mean, posterior.mean) and torch.allclose(std, posterior.std) and (std > 0).all()
    assert model.decode_latent(mean).shape == x.shape


@pytest.mark.parametrize("f", [4, 8])
def test_vq_encode_decode_shapes_and_interfaces(f):
    kwargs = dict(ddconfig=ddconfig(f, z=4, double_z=False), lossconfig=None, n_embed=16, embed_dim=4)
    vq = VQModel(**kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    quant, loss, info = vq.encode(x)
    assert quant.shape == (2, 4, 32 // f, 32 // f) and loss.dim() == 0
    assert info[2].shape == (2 * (32 // f) ** 2,) and 1.0 <= float(info.perplexity) <= 16.0
    assert vq.decode(quant).shape == x.shape
    h, std = vq.latent_moments(x)
    assert torch.equal(std, torch.zeros_like(h))
    assert torch.allclose(vq.decode_latent(h), vq.decode(quant), atol=1e-5)  # decode_latent quantises

    iface = VQModelInterface(**kwargs).eval()
    iface.load_state_dict(vq.state_dict())
    h2 = iface.encode(x)
    assert torch.allclose(h2, h)  # no quantisation in encode
    assert torch.allclose(iface.decode(h2), vq.decode(quant), atol=1e-5)
    unquantised = iface.decode(h2, force_not_quantize=True)
    assert not torch.allclose(unquantised, vq.decode(quant))
    codes = vq.encode(x)[2].indices.reshape(2, 32 // f, 32 // f)
    assert torch.allclose(vq.decode_code(codes), vq.decode(quant), atol=1e-5)


def test_identity_first_stage():
    stage = IdentityFirstStage(vq_interface=True)
    x = torch.randn(2, 3, 8, 8)
    assert stage.encode(x) is x and stage.decode(x) is x and stage.decode_latent(x) is x
    mean, std = stage.latent_moments(x)
    assert mean is x and torch.equal(std, torch.zeros_like(x))
    assert stage.quantize(x)[0] is x


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(ddconfig(4, 3, double_z=False), lossconfig=None, embed_dim=3)
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderKL({**ddconfig(4, 3), "num_groups": 3}, lossconfig=None, embed_dim=3)
    with pytest.raises(ValueError, match="attn_type"):
        AutoencoderKL({**ddconfig(4, 3), "attn_type": "linear"}, lossconfig=None, embed_dim=3)
    with pytest.raises(TypeError, match="unknown parameters"):
        AutoencoderKL(ddconfig(4, 3), lossconfig=None, embed_dim=3, embed_dimm=4)
    with pytest.raises(ValueError, match="channels"):
        VectorQuantizer(8, 4)(torch.randn(1, 3, 2, 2))


# -- diagonal Gaussian ---------------------------------------------------------------------------------
def test_gaussian_kl_and_nll_match_hand_computation():
    mu, var = 0.5, 0.25
    params = torch.cat([torch.full((1, 2, 1, 3), mu), torch.full((1, 2, 1, 3), math.log(var))], dim=1)
    q = DiagonalGaussianDistribution(params)
    per_element_kl = 0.5 * (mu ** 2 + var - 1.0 - math.log(var))
    assert q.kl().item() == pytest.approx(6 * per_element_kl, rel=1e-6)
    x = torch.full((1, 2, 1, 3), 1.5)
    per_element_nll = 0.5 * (math.log(2 * math.pi) + math.log(var) + (1.5 - mu) ** 2 / var)
    assert q.nll(x).item() == pytest.approx(6 * per_element_nll, rel=1e-6)
    # against torch.distributions (independent implementation)
    ref = torch.distributions.Normal(mu, math.sqrt(var))
    assert q.nll(x).item() == pytest.approx(-6 * ref.log_prob(torch.tensor(1.5)).item(), rel=1e-6)
    other = DiagonalGaussianDistribution(
        torch.cat([torch.zeros(1, 2, 1, 3), torch.full((1, 2, 1, 3), math.log(4.0))], 1))
    expected = torch.distributions.kl_divergence(ref, torch.distributions.Normal(0.0, 2.0)).item() * 6
    assert q.kl(other).item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_sampling_statistics_and_deterministic_mode():
    params = torch.cat([torch.full((4000, 1, 1, 1), 2.0), torch.full((4000, 1, 1, 1), math.log(9.0))], dim=1)
    q = DiagonalGaussianDistribution(params)
    s = q.sample(generator=torch.Generator().manual_seed(0))
    assert s.mean().item() == pytest.approx(2.0, abs=0.15) and s.std().item() == pytest.approx(3.0, abs=0.15)
    d = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(d.sample(), d.mode()) and torch.equal(d.kl(), torch.zeros(4000))


# -- vector quantiser ----------------------------------------------------------------------------------
def codebook_quantizer(codes, **kwargs) -> VectorQuantizer:
    codes = torch.tensor(codes, dtype=torch.float32)
    vq = VectorQuantizer(codes.shape[0], codes.shape[1], **kwargs)
    with torch.no_grad():
        vq.embedding.weight.copy_(codes)
    if vq.use_ema:
        vq.ema_embed_sum.copy_(codes)
    return vq


def as_map(values) -> torch.Tensor:
    """N vectors of dim C -> a 1×C×1×N map."""
    return torch.tensor(values, dtype=torch.float32).t()[None, :, None, :].clone()


def test_vq_nearest_code_and_straight_through_gradient():
    vq = codebook_quantizer([[0.0, 0.0], [1.0, 1.0], [-2.0, 3.0]])
    z = as_map([[0.1, -0.2], [0.8, 1.4], [-1.0, 2.0]]).requires_grad_()
    z_q, _, info = vq(z)
    assert info.indices.tolist() == [0, 1, 2]
    assert torch.equal(z_q.detach(), as_map([[0.0, 0.0], [1.0, 1.0], [-2.0, 3.0]]))
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # identity Jacobian: straight-through
    assert info.usage.item() == pytest.approx(1.0) and info.perplexity.item() == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_commitment_and_codebook_loss_placement(legacy):
    beta = 0.25
    vq = codebook_quantizer([[0.0], [10.0]], beta=beta, legacy=legacy)
    z = as_map([[1.0], [8.0]]).requires_grad_()
    _, loss, _ = vq(z)
    sq = ((1.0 - 0.0) ** 2 + (8.0 - 10.0) ** 2) / 2  # mean squared distance to the chosen codes
    commit_w, codebook_w = (1.0, beta) if legacy else (beta, 1.0)
    assert loss.item() == pytest.approx((commit_w + codebook_w) * sq)
    loss.backward()
    # d/dz of commit_w·mean((z − sg(e))²) = commit_w·2(z − e)/N
    assert z.grad.flatten().tolist() == pytest.approx([commit_w * 2 * 1.0 / 2, commit_w * 2 * -2.0 / 2])
    # d/de of codebook_w·mean((e − sg(z))²) = codebook_w·2(e − z)/N
    assert vq.embedding.weight.grad.flatten().tolist() == pytest.approx([codebook_w * -1.0, codebook_w * 2.0])


def test_vq_ema_update_matches_hand_computation():
    decay, eps = 0.5, 1e-3
    vq = codebook_quantizer([[0.0], [10.0], [100.0]], use_ema=True, decay=decay, eps=eps).train()
    z = as_map([[1.0], [2.0], [9.0]])
    _, loss, info = vq(z)
    assert info.indices.tolist() == [0, 0, 1]
    size = [decay * 1 + (1 - decay) * n for n in (2, 1, 0)]            # [1.5, 1.0, 0.5]
    total_sum = [decay * e + (1 - decay) * s for e, s in zip((0.0, 10.0, 100.0), (3.0, 9.0, 0.0))]
    total = sum(size)
    smoothed = [(s + eps) / (total + 3 * eps) * total for s in size]
    expected = [m / n for m, n in zip(total_sum, smoothed)]
    assert vq.embedding.weight.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    assert vq.ema_cluster_size.tolist() == pytest.approx(size)
    assert not vq.embedding.weight.requires_grad
    # only the commitment term remains (legacy placement: weight 1), measured against the old codes
    assert loss.item() == pytest.approx(((1 - 0) ** 2 + (2 - 0) ** 2 + (9 - 10) ** 2) / 3)
    vq.eval()
    before = vq.embedding.weight.clone()
    vq(z)
    assert torch.equal(before, vq.embedding.weight)  # no EMA update outside training


def test_vq_dead_code_restart():
    vq = codebook_quantizer([[0.0], [10.0], [100.0]], use_ema=True, decay=0.5, dead_code_threshold=0.9).train()
    z = as_map([[1.0], [2.0], [9.0]])
    vq(z)  # code 2 got no assignment: cluster size 0.5 < 0.9 -> restarted at an encoder output
    assert vq.embedding.weight[2].item() in (1.0, 2.0, 9.0)
    assert vq.ema_cluster_size[2].item() == 1.0


def test_vq_remap_with_extra_and_int_unknown_index(tmp_path):
    import numpy as np

    np.save(tmp_path / "used.npy", np.array([1, 2]))
    vq = codebook_quantizer([[0.0], [10.0], [20.0]], remap=str(tmp_path / "used.npy"), unknown_index="extra",
                            sane_index_shape=True)
    assert vq.re_embed == 3
    _, _, info = vq(as_map([[11.0], [19.0], [0.5]]))
    assert info.indices.tolist() == [[[0, 1, 2]]]  # code 1 -> 0, code 2 -> 1, code 0 unknown -> extra (2)
    entry = vq.get_codebook_entry(torch.tensor([0, 1]), shape=(1, 1, 2, 1))
    assert entry.flatten().tolist() == [10.0, 20.0]
    vq_int = codebook_quantizer([[0.0], [10.0], [20.0]], remap=str(tmp_path / "used.npy"), unknown_index=0)
    assert vq_int(as_map([[0.5]]))[2].indices.tolist() == [0]
    with pytest.raises(ValueError, match="unknown_index"):
        codebook_quantizer([[0.0]], remap=str(tmp_path / "used.npy"), unknown_index="bogus")
