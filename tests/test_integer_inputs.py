"""Integer model inputs: token ids into an embedding table, and an integer attention mask.

Contract: an integer input used as indices into a parameter table gets the relevance of the rows
it selected, summed over the embedding dimension; any other integer or boolean input (a mask) gets
zeros. On a purely linear model under LRP-0 (``epsilon=0``) the relevance reaching an embedding
row is ``row ⊙ ∂logit/∂row``, which a float64 numpy reference computes by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import lrpir  # noqa: E402

VOCAB, DIM, LENGTH, CLASSES = 20, 8, 6, 3
EXPORTERS = ["legacy", "dynamo"]


class MaskedMeanWithPositionParameter(torch.nn.Module):
    """ids → token embedding + a learned position parameter → masked mean → linear logits."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(VOCAB, DIM)
        self.position = torch.nn.Parameter(torch.randn(LENGTH, DIM) * 0.5)
        self.head = torch.nn.Linear(DIM, CLASSES, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(ids) + self.position
        m = mask.to(h.dtype).unsqueeze(-1)
        return self.head((h * m).sum(1) / m.sum(1))


class MaskedMeanWithPositionIds(torch.nn.Module):
    """Token and position embeddings both looked up by integer inputs, masked mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(VOCAB, DIM)
        self.positions = torch.nn.Embedding(LENGTH, DIM)
        self.head = torch.nn.Linear(DIM, CLASSES, bias=False)

    def forward(self, ids: torch.Tensor, position_ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(ids) + self.positions(position_ids)
        m = mask.to(h.dtype).unsqueeze(-1)
        return self.head((h * m).sum(1) / m.sum(1))


def _inputs(with_position_ids: bool, mask_dtype: type) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (2, LENGTH)).astype(np.int64)
    ids[0, 1] = ids[0, 4]  # a repeated token: each occurrence gets its own relevance
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]).astype(mask_dtype)
    if not with_position_ids:
        return ids, mask
    positions = np.tile(np.arange(LENGTH, dtype=np.int64), (2, 1))
    return ids, positions, mask


def _export(net: torch.nn.Module, inputs: tuple[np.ndarray, ...], path: str, exporter: str) -> str:
    names = ["ids", "position_ids", "mask"] if len(inputs) == 3 else ["ids", "mask"]
    example = tuple(torch.from_numpy(a) for a in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, path, input_names=names, output_names=["logits"],
                          **({"dynamo": False} if exporter == "legacy" else {}))
    net.eval()
    return path


def _reference(net: torch.nn.Module, inputs: tuple[np.ndarray, ...], target: list[int]):
    """Float64 LRP-0 by hand: per-token row relevance ``Σ_d row[d] · ∂logit/∂row[d]``."""
    ids, mask = inputs[0], inputs[-1]
    table = net.tokens.weight.detach().double().numpy()
    head = net.head.weight.detach().double().numpy()  # (classes, dim)
    m = mask.astype(np.float64)
    weight = m / m.sum(1, keepdims=True)  # ∂pooled/∂h[b, t] per token
    grad = weight[:, :, None] * head[target][:, None, :]  # ∂logit/∂h: (batch, length, dim)
    if len(inputs) == 3:
        position = net.positions.weight.detach().double().numpy()[inputs[1]]
    else:
        position = np.broadcast_to(net.position.detach().double().numpy(), grad.shape)
    h = table[ids] + position
    logits = (h * weight[:, :, None]).sum(1) @ head.T
    return ((table[ids] * grad).sum(-1), (position * grad).sum(-1),
            logits[np.arange(len(ids)), target])


@pytest.mark.parametrize("mask_dtype", [np.int64, np.bool_], ids=["int-mask", "bool-mask"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("with_position_ids", [False, True], ids=["pos-param", "pos-ids"])
def test_token_ids_get_row_relevance(with_position_ids, exporter, mask_dtype, tmp_path):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = (MaskedMeanWithPositionIds() if with_position_ids
           else MaskedMeanWithPositionParameter()).eval()
    inputs = _inputs(with_position_ids, mask_dtype)
    path = _export(net, inputs, str(tmp_path / "text.onnx"), exporter)
    target = [2, 0]

    exp = lrpir.explain(path, *inputs, target=target, rules=lrpir.Rules("epsilon", epsilon=0.0))

    tokens, positions, start = _reference(net, inputs, target)
    with torch.no_grad():
        logits = net(*(torch.from_numpy(a) for a in inputs)).double().numpy()
    np.testing.assert_allclose(exp.output, logits, rtol=1e-5, atol=1e-6)
    assert exp.target.tolist() == target
    assert len(exp.relevance) == len(inputs)
    for r, a in zip(exp.relevance, inputs):
        assert r.shape == a.shape and r.dtype.kind == "f" and np.isfinite(r).all()

    scale = np.abs(tokens).max()
    assert np.abs(exp.relevance[0] - tokens).max() <= 1e-5 * scale
    assert np.all(exp.relevance[-1] == 0)  # the mask
    assert np.all(exp.relevance[0][inputs[-1] == 0] == 0)  # masked tokens get nothing
    c = exp.conservation
    np.testing.assert_allclose(c.start, start, rtol=1e-5)
    if with_position_ids:  # position ids get their rows' relevance too; nothing is absorbed
        assert np.abs(exp.relevance[1] - positions).max() <= 1e-5 * np.abs(positions).max()
        np.testing.assert_allclose(c.inputs, (tokens + positions).sum(1), rtol=1e-5,
                                   atol=1e-5 * scale)
    else:  # the position parameter absorbs its share at the add
        np.testing.assert_allclose(c.inputs, tokens.sum(1), rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(c.absorbed - c.created, positions.sum(1), rtol=1e-5,
                                   atol=1e-5 * scale)
    assert (np.abs(c.inputs + c.absorbed - c.created - c.start) <= 1e-5 * np.abs(c.start)).all()
