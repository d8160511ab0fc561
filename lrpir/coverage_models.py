"""The architectures of ``lrpir coverage``: small random-weight models, built with no download.

Each builder fixes a tiny configuration (so the whole suite runs in minutes on a CPU) and returns
a :class:`Built`: a module in eval mode whose forward returns the one tensor to explain, example
inputs, and their names. Hugging Face models come from ``transformers`` configs; VGG16 and
ResNet-50 are written here in plain torch with their real layer structure (narrower channels), since
torchvision is not a dependency. Weights are re-drawn from a per-model seed, larger than the
configs' tiny init so relevance does not vanish, with norm scales away from 1 and random biases.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

B, T, T_DEC, VOCAB = 2, 7, 4, 96


@dataclass
class Built:
    """A model ready for every route: ``module(*inputs)`` is the tensor to explain."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    names: list[str]
    # ONNX exporters to try, in this order: both export all the models here, the legacy one in
    # a fraction of the dynamo exporter's time
    exporters: tuple[str, ...] = ("legacy", "dynamo")


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    build: Callable[[torch.Generator], Built]
    needs_transformers: bool = True


# -- weights ----------------------------------------------------------------------------------
_TABLE_WORDS = ("embed", "token", "position")


def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Re-draw every weight: fan-in scaled matrices, unit-scale embedding tables, norm scales
    1 ± 0.2, biases ±0.1 and batch-norm statistics away from (0, 1), so that folding and every
    rule see non-trivial numbers."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                p.copy_(_draw(module, name, p, gen))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.75 + 0.5 * torch.rand(module.running_var.shape, generator=gen))


def _draw(module: nn.Module, name: str, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(p.shape, generator=gen)
    if isinstance(module, nn.Embedding):
        return noise
    if name == "bias" or name.endswith("_bias"):
        return 0.1 * noise
    if p.ndim <= 1:  # norm scales, Mamba's D, CLIP's logit scale
        return 1.0 + 0.2 * noise
    weighted = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
    if not weighted and any(w in name.lower() for w in _TABLE_WORDS):
        return 0.5 * noise  # class tokens and position tables
    fan_in = p.shape[-1] if p.ndim == 2 else int(np.prod(p.shape[1:]))
    return fan_in ** -0.5 * noise


# -- inputs -----------------------------------------------------------------------------------
def _ids(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=gen)


def _image(gen: torch.Generator, size: int) -> torch.Tensor:
    return torch.randn(B, 3, size, size, generator=gen)


def _padded_mask(pad: int) -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - pad:] = 0  # item 1 is padded on the right
    return mask


class Output(nn.Module):
    """Calls a Hugging Face model with keyword inputs and returns one output (``logits``, ...)."""

    def __init__(self, model: nn.Module, names: list[str], field: str = "logits") -> None:
        super().__init__()
        self.model, self.names, self.field = model, list(names), field
        self.use_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.names, args))
        if self.use_cache:
            kwargs["use_cache"] = False
        return getattr(self.model(**kwargs, return_dict=True), self.field)


def _hf(model: nn.Module, inputs: tuple, names: list[str], field: str = "logits",
        exporters: tuple[str, ...] = ("legacy", "dynamo")) -> Built:
    return Built(Output(model, names, field), inputs, names, exporters)


def _tf():
    import transformers

    return transformers


# -- CNNs -------------------------------------------------------------------------------------
def resnet(gen: torch.Generator) -> Built:
    tf = _tf()
    cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                          layer_type="bottleneck", num_labels=5)
    return _hf(tf.ResNetForImageClassification(cfg), (_image(gen, 32),), ["pixel_values"])


def convnext(gen: torch.Generator) -> Built:
    tf = _tf()
    cfg = tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5,
                            image_size=32)
    return _hf(tf.ConvNextForImageClassification(cfg), (_image(gen, 32),), ["pixel_values"])


def efficientnet(gen: torch.Generator) -> Built:
    tf = _tf()
    # hidden_dim is the channels of the head convolution: round_filters(1280) at this width
    cfg = tf.EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.5,
                                kernel_sizes=[3, 5, 3], in_channels=[32, 16, 24],
                                out_channels=[16, 24, 40], depthwise_padding=[2], strides=[1, 2, 2],
                                num_block_repeats=[1, 2, 1], expand_ratios=[1, 6, 6], hidden_dim=320,
                                num_labels=5)
    return _hf(tf.EfficientNetForImageClassification(cfg), (_image(gen, 32),), ["pixel_values"])


def mobilenet_v2(gen: torch.Generator) -> Built:
    tf = _tf()
    cfg = tf.MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=5)
    return _hf(tf.MobileNetV2ForImageClassification(cfg), (_image(gen, 32),), ["pixel_values"])


class VGG16(nn.Module):
    """VGG16 (configuration D): 13 3×3 convolutions in five max-pooled stages, then three dense
    layers. ``width`` scales the channels (64 is the original); the pooled grid is 2×2 for 64×64
    images, where the original pools to 7×7 for 224×224."""

    STAGES = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))  # (channels / width, convolutions)

    def __init__(self, width: int = 16, hidden: int = 256, classes: int = 10, grid: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for mult, n in self.STAGES:
            for _ in range(n):
                layers += [nn.Conv2d(c_in, mult * width, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = mult * width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(grid)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * grid * grid, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1×1, 3×3 (strided), 1×1 ×4, each with batch norm, plus the shortcut."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        out = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50: a 7×7 stem with max pooling, stages of 3, 4, 6 and 3 bottlenecks, global average
    pooling and a dense layer. ``width`` scales the channels (64 is the original)."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        c_in, stages = width, []
        for k, (n, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2))):
            planes = width * 2 ** k
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(c_in, planes, stride if i == 0 else 1))
                c_in = 4 * planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg16(gen: torch.Generator) -> Built:
    return Built(VGG16(), (_image(gen, 64),), ["image"])


def resnet50(gen: torch.Generator) -> Built:
    return Built(ResNet50(), (_image(gen, 64),), ["image"])


# -- vision transformers ----------------------------------------------------------------------
_VIT = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, attn_implementation="eager")


def vit(gen: torch.Generator) -> Built:
    tf = _tf()
    model = tf.ViTForImageClassification(tf.ViTConfig(**_VIT, num_labels=5))
    return _hf(model, (_image(gen, 16),), ["pixel_values"])


def deit(gen: torch.Generator) -> Built:  # class and distillation tokens, two heads averaged
    tf = _tf()
    model = tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**_VIT, num_labels=5))
    return _hf(model, (_image(gen, 16),), ["pixel_values"])


def swin(gen: torch.Generator) -> Built:  # shifted windows, patch merging
    tf = _tf()
    cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                        window_size=4, num_labels=5, attn_implementation="eager")
    return _hf(tf.SwinForImageClassification(cfg), (_image(gen, 32),), ["pixel_values"])


_CLIP_VISION = dict(hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
                    num_attention_heads=4, image_size=16, patch_size=4, attn_implementation="eager")
_CLIP_TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, projection_dim=16,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager")


def clip_vision(gen: torch.Generator) -> Built:  # quick-GELU, pre-norm, projected class token
    tf = _tf()
    model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**_CLIP_VISION))
    return _hf(model, (_image(gen, 16),), ["pixel_values"], "image_embeds")


def clip_text(gen: torch.Generator) -> Built:  # causal mask, pooled at the end-of-text token
    tf = _tf()
    model = tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**_CLIP_TEXT))
    ids = _ids(gen, B, T)
    ids[:, -1] = 2  # end of text
    return _hf(model, (ids,), ["input_ids"], "text_embeds")


def siglip(gen: torch.Generator) -> Built:  # image-text logits; attention-pooling head
    tf = _tf()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=16, patch_size=4)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=T)
    model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision,
                                           attn_implementation="eager"))
    return _hf(model, (_ids(gen, B, T), _image(gen, 16)), ["input_ids", "pixel_values"],
               "logits_per_image")


def pix2struct(gen: torch.Generator) -> Built:  # patches with row/column ids, T5-style decoder
    tf = _tf()
    text = dict(vocab_size=VOCAB, hidden_size=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8)
    vision = dict(hidden_size=32, patch_embed_hidden_size=48, d_ff=64, d_kv=8, num_hidden_layers=2,
                  num_attention_heads=4, seq_len=16, relative_attention_num_buckets=8)
    model = tf.Pix2StructForConditionalGeneration(tf.Pix2StructConfig(
        text_config=text, vision_config=vision, attn_implementation="eager"))
    rows, cols = torch.meshgrid(torch.arange(1, 5), torch.arange(1, 5), indexing="ij")
    ids = torch.stack([rows.flatten(), cols.flatten()], -1).float().expand(B, 16, 2)
    patches = torch.cat([ids, torch.randn(B, 16, 48, generator=gen)], -1)
    mask = torch.ones(B, 16)
    return _hf(model, (patches, mask, _ids(gen, B, T_DEC)),
               ["flattened_patches", "attention_mask", "decoder_input_ids"])


# -- audio ------------------------------------------------------------------------------------
def wav2vec2(gen: torch.Generator) -> Built:  # group norm, convolutional positions
    tf = _tf()
    cfg = tf.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                            conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, num_labels=3, attn_implementation="eager")
    model = tf.Wav2Vec2ForSequenceClassification(cfg)
    return _hf(model, (torch.randn(B, 400, generator=gen),), ["input_values"])


def whisper(gen: torch.Generator) -> Built:
    tf = _tf()
    cfg = tf.WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, d_model=32,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
                           max_target_positions=16, decoder_start_token_id=1, pad_token_id=0,
                           attn_implementation="eager")
    model = tf.WhisperForConditionalGeneration(cfg)
    return _hf(model, (torch.randn(B, 8, 32, generator=gen), _ids(gen, B, T_DEC)),
               ["input_features", "decoder_input_ids"])


# -- text encoders ----------------------------------------------------------------------------
_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=32, num_labels=3,
                attn_implementation="eager")


def bert(gen: torch.Generator) -> Built:
    tf = _tf()
    model = tf.BertForSequenceClassification(tf.BertConfig(**_ENCODER, type_vocab_size=2))
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 4:] = 1
    return _hf(model, (_ids(gen, B, T), _padded_mask(2), types),
               ["input_ids", "attention_mask", "token_type_ids"])


def roberta(gen: torch.Generator) -> Built:  # positions counted from the non-padding ids
    tf = _tf()
    model = tf.RobertaForSequenceClassification(tf.RobertaConfig(**_ENCODER, pad_token_id=1))
    ids = _ids(gen, B, T)
    mask = _padded_mask(2)
    ids[mask == 0] = 1
    return _hf(model, (ids, mask), ["input_ids", "attention_mask"])


# -- decoders ---------------------------------------------------------------------------------
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                attn_implementation="eager")


def _causal(model: nn.Module, gen: torch.Generator) -> Built:
    return _hf(model, (_ids(gen, B, T),), ["input_ids"])


def gpt2(gen: torch.Generator) -> Built:
    tf = _tf()
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                        attn_implementation="eager")
    return _causal(tf.GPT2LMHeadModel(cfg), gen)


def llama(gen: torch.Generator) -> Built:
    tf = _tf()
    return _causal(tf.LlamaForCausalLM(tf.LlamaConfig(**_DECODER)), gen)


def gemma(gen: torch.Generator) -> Built:  # tanh-GELU gate, RMS norm scaled by (1 + w)
    tf = _tf()
    return _causal(tf.GemmaForCausalLM(tf.GemmaConfig(**_DECODER, head_dim=8)), gen)


def qwen2(gen: torch.Generator) -> Built:  # biases on q, k, v
    tf = _tf()
    return _causal(tf.Qwen2ForCausalLM(tf.Qwen2Config(**_DECODER)), gen)


def mistral(gen: torch.Generator) -> Built:  # sliding-window causal mask
    tf = _tf()
    return _causal(tf.MistralForCausalLM(tf.MistralConfig(**_DECODER, sliding_window=4)), gen)


def mamba(gen: torch.Generator) -> Built:  # selective state space, unrolled over the sequence
    tf = _tf()
    cfg = tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                         expand=2, conv_kernel=4, time_step_rank=4)
    return _causal(tf.MambaForCausalLM(cfg), gen)


# -- encoder-decoders -------------------------------------------------------------------------
def t5(gen: torch.Generator) -> Built:  # relative position buckets, RMS norm
    tf = _tf()
    cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, relative_attention_num_buckets=8)
    return _hf(tf.T5ForConditionalGeneration(cfg), (_ids(gen, B, T), _padded_mask(3), _ids(gen, B, T_DEC)),
               ["input_ids", "attention_mask", "decoder_input_ids"])


def bart(gen: torch.Generator) -> Built:  # learned positions
    tf = _tf()
    cfg = tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=32, attn_implementation="eager")
    # Both masks are inputs: without them torch.export (and so the dynamo exporter) fails on BART's
    # decoder mask ("Attempting to broadcast a dimension of length 5", transformers 4.57).
    dec = _ids(gen, B, T_DEC)
    return _hf(tf.BartForConditionalGeneration(cfg), (_ids(gen, B, T), _padded_mask(2), dec,
                                                      torch.ones_like(dec)),
               ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"])


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("vgg16", "cnn", vgg16, needs_transformers=False),
    Architecture("resnet50", "cnn", resnet50, needs_transformers=False),
    Architecture("resnet", "cnn", resnet),
    Architecture("convnext", "cnn", convnext),
    Architecture("efficientnet", "cnn", efficientnet),
    Architecture("mobilenet_v2", "cnn", mobilenet_v2),
    Architecture("vit", "vision transformer", vit),
    Architecture("deit", "vision transformer", deit),
    Architecture("swin", "vision transformer", swin),
    Architecture("clip_vision", "vision transformer", clip_vision),
    Architecture("clip_text", "encoder", clip_text),
    Architecture("siglip", "image-text", siglip),
    Architecture("pix2struct", "image-text", pix2struct),
    Architecture("wav2vec2", "audio", wav2vec2),
    Architecture("whisper", "audio", whisper),
    Architecture("bert", "encoder", bert),
    Architecture("roberta", "encoder", roberta),
    Architecture("gpt2", "decoder", gpt2),
    Architecture("llama", "decoder", llama),
    Architecture("gemma", "decoder", gemma),
    Architecture("qwen2", "decoder", qwen2),
    Architecture("mistral", "decoder", mistral),
    Architecture("mamba", "state space", mamba),
    Architecture("t5", "encoder-decoder", t5),
    Architecture("bart", "encoder-decoder", bart),
]}


def build(name: str) -> Built:
    """The model ``name`` with its weights drawn from a seed of its own (the same on every run)."""
    seed = sum(map(ord, name))
    torch.manual_seed(seed)  # the configs' own init, overwritten below, draws from torch's RNG
    gen = torch.Generator().manual_seed(seed)
    built = ARCHITECTURES[name].build(gen)
    randomize(built.module, gen)
    built.module.eval()
    return built


@contextlib.contextmanager
def legacy_masks() -> Iterator[None]:
    """transformers ≥ 4.53 builds attention masks with ``torch.vmap``, which the TorchScript
    exporter cannot trace; its mask builder for torch < 2.6 exports fine."""
    try:
        import transformers.masking_utils as mu
    except ImportError:  # no transformers (the plain torch models), or one without the module
        yield
        return
    saved = mu.sdpa_mask, mu._is_torch_greater_or_equal_than_2_6
    mu.sdpa_mask, mu._is_torch_greater_or_equal_than_2_6 = mu.sdpa_mask_older_torch, False
    try:
        yield
    finally:
        mu.sdpa_mask, mu._is_torch_greater_or_equal_than_2_6 = saved
