"""Networks, token index and losses on tiny tensors: shapes, ranges, masking and the gradient penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import TokenIndex, lab_to_unit
from model.losses import gradient_penalty
from model.networks import Critic, Generator, TagEncoder
from pipeline.core.color import ab_to_unit, l_to_unit
from pipeline.core.contract import PAD_ID

VOCAB = 50


def _tokens(batch: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Dense ids: ``lengths[i]`` tokens in 1 … VOCAB − 1, then pads (0)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, 20, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, :length] = torch.randint(1, VOCAB, (length,), generator=generator)
    return tokens


@pytest.mark.parametrize(("size", "depth"), [(32, 2), (64, 3), (224, 3)])
def test_generator_and_critic_shapes_and_ranges(size: int, depth: int) -> None:
    torch.manual_seed(0)
    generator = Generator(VOCAB, base_channels=4, depth=depth, token_dim=8)
    critic = Critic(VOCAB, base_channels=4, depth=depth, token_dim=8)
    lightness = torch.rand(2, 1, size, size) * 2 - 1
    tokens = _tokens(2, [3, 0])
    assert not generator(lightness, tokens).any()
    torch.nn.init.normal_(generator.out.weight, std=10.0)
    ab = generator(lightness, tokens)
    assert ab.shape == (2, 2, size, size)
    assert ab.abs().max() <= 1.0
    assert ab.abs().max() > 0.99
    scores = critic(ab, lightness, tokens)
    assert scores.shape == (2,)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_tag_encoder_ignores_pad_embeddings_and_handles_no_tags(pool: str) -> None:
    torch.manual_seed(0)
    encoder = TagEncoder(VOCAB, 8, pool=pool)
    if pool == "attention":
        torch.nn.init.normal_(encoder.query)
    tokens = _tokens(3, [5, 20, 0])
    before = encoder(tokens)
    with torch.no_grad():
        encoder.embed.weight[0] = torch.randn(8) * 100
    after = encoder(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(before[2], encoder.mlp(encoder.no_tags))
    changed = tokens.clone()
    changed[0, 0] = (changed[0, 0] % (VOCAB - 1)) + 1
    assert not torch.allclose(encoder(changed)[0], before[0])
    torch.testing.assert_close(encoder(changed)[1:], before[1:])


def test_mean_pool_is_the_masked_mean() -> None:
    torch.manual_seed(0)
    encoder = TagEncoder(VOCAB, 8, pool="mean")
    tokens = _tokens(1, [4])
    expected = encoder.mlp(encoder.embed(tokens[0, :4]).mean(dim=0, keepdim=True))
    torch.testing.assert_close(encoder(tokens), expected)


def test_film_starts_as_identity_so_the_untrained_generator_ignores_tags() -> None:
    torch.manual_seed(0)
    generator = Generator(VOCAB, base_channels=4, depth=2, token_dim=8)
    torch.nn.init.normal_(generator.out.weight)
    lightness = torch.rand(2, 1, 32, 32) * 2 - 1
    first = generator(lightness, _tokens(2, [3, 7], seed=1))
    second = generator(lightness, _tokens(2, [0, 12], seed=2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.nn.init.normal_(generator.middle.film.proj.weight)
    assert not torch.allclose(generator(lightness, _tokens(2, [3, 7], seed=1)), first)


def test_token_index_maps_known_pad_and_unknown() -> None:
    corpus = np.array([[7, 3, 3, PAD_ID], [1000, 7, PAD_ID, PAD_ID]], dtype=np.int32)
    index = TokenIndex.build(corpus)
    assert index.vocabulary.tolist() == [3, 7, 1000]
    assert index.size == 5
    raw = np.array([[3, 7, 1000, 5, PAD_ID, -1, PAD_ID + 1]])
    assert index.dense(raw).tolist() == [[1, 2, 3, 4, 0, 4, 4]]
    assert TokenIndex.build(corpus, min_count=2).vocabulary.tolist() == [3, 7]
    restored = TokenIndex.from_state(index.state())
    assert np.array_equal(restored.dense(raw), index.dense(raw))


def test_lab_to_unit_matches_model_color() -> None:
    lab = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    lightness, ab = lab_to_unit(torch.from_numpy(lab).float())
    np.testing.assert_allclose(lightness.numpy(), l_to_unit(lab[:, :1]), atol=1e-6)
    np.testing.assert_allclose(ab.numpy(), ab_to_unit(lab[:, 1:]), atol=1e-6)


def test_gradient_penalty_of_a_linear_critic_is_analytic() -> None:
    torch.manual_seed(0)
    w = torch.randn(2, 4, 4)

    def critic(x: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1) + lightness.flatten(1).sum(1)

    real, fake, lightness = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 1, 4, 4)
    penalty = gradient_penalty(critic, real, fake, (lightness,), weight=10.0)
    expected = 10.0 * (w.norm() - 1) ** 2
    torch.testing.assert_close(penalty, expected)


def test_gradient_penalty_of_a_nonlinear_critic_matches_manual_autograd() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(2, 4, 4) * 0.5)

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (w * x**2).flatten(1).sum(1)

    real, fake = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    torch.manual_seed(1)
    penalty = gradient_penalty(critic, real, fake, (), weight=10.0)
    (penalty_grad,) = torch.autograd.grad(penalty, w)

    torch.manual_seed(1)
    eps = torch.rand(3, 1, 1, 1)
    x = eps * real + (1 - eps) * fake
    norms = (2 * w * x).flatten(1).norm(dim=1)
    expected = 10.0 * ((norms - 1) ** 2).mean()
    (expected_grad,) = torch.autograd.grad(expected, w)
    torch.testing.assert_close(penalty, expected)
    torch.testing.assert_close(penalty_grad, expected_grad)


def test_gradient_penalty_is_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    critic = Critic(VOCAB, base_channels=4, depth=2, token_dim=8)
    torch.nn.init.normal_(critic.linear.weight, std=100.0)
    real, fake = torch.rand(2, 2, 32, 32), torch.rand(2, 2, 32, 32)
    cond = (torch.rand(2, 1, 32, 32), _tokens(2, [2, 5]))
    torch.manual_seed(3)
    plain = gradient_penalty(critic, real, fake, cond)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_penalty(critic, real, fake, cond)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=0)
