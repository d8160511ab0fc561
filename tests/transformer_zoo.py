"""Small random-weight transformers built from `transformers` configs (no download), with example
inputs and what each input is to relevance, exported to ONNX by either torch exporter.

Loaded by path through the ``zoo`` fixture in ``conftest.py``.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lrpir.coverage_models import legacy_masks

B, T, T_DEC = 2, 7, 4
VOCAB = 96


@dataclass
class Built:
    model: torch.nn.Module
    args: tuple            # torch tensors, in input order
    names: list[str]
    kinds: list[str]       # "ids", "positions", "mask" or "float" per input


def _ids(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=gen)


def _positions(n: int) -> torch.Tensor:
    return torch.arange(n).expand(B, n).contiguous()


def _randomize(model: torch.nn.Module, gen: torch.Generator, zero_bias: bool) -> None:
    """Weights large enough to matter (the configs' init is tiny), norm scales around 1, and
    biases random or exactly zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or name.endswith("_bias"):
                p.copy_(torch.zeros_like(p) if zero_bias else 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:  # norm scales
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else int(np.prod(p.shape[1:]))
                table = any(k in name for k in ("embed", "wte", "wpe", "cls_token"))
                std = 1.0 if table else fan_in ** -0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))


def bert(gen: torch.Generator):
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
                        num_labels=3, attn_implementation="eager")
    model = tf.BertForSequenceClassification(cfg)
    ids = _ids(gen, B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0  # item 1 is padded
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 4:] = 1
    return model, (ids, mask, types, _positions(T)), \
        ["input_ids", "attention_mask", "token_type_ids", "position_ids"], ["ids", "mask", "ids", "positions"]


def gpt2(gen: torch.Generator):
    import transformers as tf

    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                        attn_implementation="eager")
    model = tf.GPT2LMHeadModel(cfg)
    return model, (_ids(gen, B, T), torch.ones(B, T, dtype=torch.long), _positions(T)), \
        ["input_ids", "attention_mask", "position_ids"], ["ids", "mask", "positions"]


def llama(gen: torch.Generator):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                         attn_implementation="eager")
    model = tf.LlamaForCausalLM(cfg)
    return model, (_ids(gen, B, T),), ["input_ids"], ["ids"]


def t5(gen: torch.Generator):
    import transformers as tf

    cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, relative_attention_num_buckets=8)
    model = tf.T5ForConditionalGeneration(cfg)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, -3:] = 0
    return model, (_ids(gen, B, T), mask, _ids(gen, B, T_DEC)), \
        ["input_ids", "attention_mask", "decoder_input_ids"], ["ids", "mask", "ids"]


def vit(gen: torch.Generator):
    import transformers as tf

    cfg = tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=5,
                       attn_implementation="eager")
    model = tf.ViTForImageClassification(cfg)
    return model, (torch.randn(B, 3, 16, 16, generator=gen),), ["pixel_values"], ["float"]


def whisper(gen: torch.Generator):
    import transformers as tf

    cfg = tf.WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, d_model=32,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
                           max_target_positions=16, decoder_start_token_id=1, pad_token_id=0,
                           attn_implementation="eager")
    model = tf.WhisperForConditionalGeneration(cfg)
    return model, (torch.randn(B, 8, 32, generator=gen), _ids(gen, B, T_DEC)), \
        ["input_features", "decoder_input_ids"], ["float", "ids"]


MODELS = {"bert": bert, "gpt2": gpt2, "llama": llama, "t5": t5, "vit": vit, "whisper": whisper}

# -- more architectures, for breadth: each brings something the six above do not ----------------
_SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")


def _text(model) -> tuple:
    return model, None, ["input_ids"], ["ids"]


def deberta(gen):  # disentangled relative attention (gathers into relative-position tables)
    import transformers as tf

    return _text(tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**_SMALL)))


def bloom(gen):  # ALiBi position biases
    import transformers as tf

    return _text(tf.BloomForCausalLM(tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2,
                                                    n_head=4, attn_implementation="eager")))


def gemma(gen):  # tanh-GELU gate, RMS norm scaled by (1 + w), grouped-query attention
    import transformers as tf

    return _text(tf.GemmaForCausalLM(tf.GemmaConfig(**_SMALL, num_key_value_heads=2, head_dim=8)))


def bart(gen):  # encoder-decoder with learned positions (the dynamo exporter fails on it)
    import transformers as tf

    cfg = tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=32, attn_implementation="eager")
    return tf.BartForConditionalGeneration(cfg), (_ids(gen, B, T), _ids(gen, B, T_DEC)), \
        ["input_ids", "decoder_input_ids"], ["ids", "ids"]


def swin(gen):  # shifted-window attention, patch merging
    import transformers as tf

    cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                        window_size=4, num_labels=5, attn_implementation="eager")
    return tf.SwinForImageClassification(cfg), (torch.randn(B, 3, 32, 32, generator=gen),), \
        ["pixel_values"], ["float"]


def convnext(gen):  # layer norm over channels (written out, not trailing), depthwise convolutions
    import transformers as tf

    cfg = tf.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                            num_labels=5, image_size=32)
    return tf.ConvNextForImageClassification(cfg), (torch.randn(B, 3, 32, 32, generator=gen),), \
        ["pixel_values"], ["float"]


def wav2vec2(gen):  # group norm (exported as InstanceNormalization), convolutional positions
    import transformers as tf

    cfg = tf.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                            conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, num_labels=3, attn_implementation="eager")
    return tf.Wav2Vec2ForSequenceClassification(cfg), (torch.randn(B, 400, generator=gen),), \
        ["input_values"], ["float"]


MORE = {"deberta": deberta, "bloom": bloom, "gemma": gemma, "bart": bart, "swin": swin,
        "convnext": convnext, "wav2vec2": wav2vec2}


def build(name: str, dtype: torch.dtype = torch.float32, zero_bias: bool = False) -> Built:
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    model, args, names, kinds = {**MODELS, **MORE}[name](gen)
    if args is None:  # a text model fed token ids only
        args = (_ids(gen, B, T),)
    _randomize(model, gen, zero_bias)
    model = model.to(dtype).eval()
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    return Built(_Logits(model, names).eval(), args, names, kinds)


class _Logits(torch.nn.Module):
    """Calls the Hugging Face model with keyword inputs and returns its logits only."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        kwargs = dict(zip(self.names, args))
        if "use_cache" in inspect.signature(self.model.forward).parameters:
            kwargs["use_cache"] = False
        return self.model(**kwargs, return_dict=True).logits


def export(built: Built, exporter: str, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            with legacy_masks():
                torch.onnx.export(built.model, built.args, str(path), dynamo=False, opset_version=18,
                                  input_names=built.names, output_names=["logits"])
        else:
            torch.onnx.export(built.model, built.args, str(path), dynamo=True, input_names=built.names,
                              output_names=["logits"], verbose=False)
            _repair_float64_min(path)
    built.model.eval()
    return path


def _repair_float64_min(path: Path) -> None:
    """The dynamo exporter (torch 2.13) writes ``torch.finfo(torch.float64).min``, the additive
    mask value of transformers, as −inf, so a float64 model computes ``0 · −inf = NaN`` in every
    attention mask; put the real minimum back."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    changed = False
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.DOUBLE:
            data = numpy_helper.to_array(init)
            if np.any(np.isneginf(data)):
                data = np.where(np.isneginf(data), np.finfo(np.float64).min, data)
                init.CopyFrom(numpy_helper.from_array(data, init.name))
                changed = True
    if changed:
        onnx.save(model, str(path))
