"""The umT5 text encoder (transformers' ``UMT5EncoderModel``) as Wan uses it.

Prompts are cleaned (HTML entities, runs of whitespace), tokenized to ``text_len`` tokens with the
EOS token, padded; the encoder runs with the padding mask and the embeddings past each prompt's
length are set to zero, as Wan's ``T5EncoderModel`` + LongLive's ``WanTextEncoder`` do. Encoded
prompts are kept in a small LRU cache, so switching back to a prompt costs nothing.

Sources: a diffusers ``text_encoder/`` + ``tokenizer/`` pair, Wan's original
``models_t5_umt5-xxl-enc-bf16.pth`` (Wan names, converted here) + a tokenizer directory
(``google/umt5-xxl/`` in Wan's repository), or a tiny random encoder with a byte-level tokenizer
built locally (the ``tiny`` preset: no files at all).
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from pathlib import Path

import torch

from .checkpoint import state_dict_mismatch, torch_load
from .optional import require

PLACEMENTS = ("device", "cpu", "offload")

# Wan's T5 names -> transformers' UMT5 names (wan/modules/t5.py: T5Encoder with shared_pos=False,
# i.e. one relative-position embedding per block, which UMT5 has too).
_WAN_T5_TO_HF: list[tuple[str, str]] = [
    (r"^blocks\.(\d+)\.attn\.(q|k|v|o)\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
]


def wan_t5_to_umt5_state_dict(state_dict: dict[str, torch.Tensor], source: str | Path = "state dict"):
    """Rename Wan's umT5 encoder weights to transformers' ``UMT5EncoderModel`` names.

    ``token_embedding.weight`` becomes both ``shared.weight`` and ``encoder.embed_tokens.weight``
    (tied in transformers). An unknown key is an error naming ``source``.
    """
    out = {}
    for key, value in state_dict.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
            continue
        for pattern, repl in _WAN_T5_TO_HF:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise ValueError(f"{source}: unexpected key {key!r} for Wan's umT5 encoder")
    return out


def umt5_config_from_wan_state_dict(state_dict: dict[str, torch.Tensor], source: str | Path = "state dict"):
    """A ``UMT5Config`` read off the shapes of Wan's umT5 encoder weights (Wan's ``.pth`` has no config).

    The fixed parts are Wan's ``T5Encoder`` constants: gated tanh-GELU FFN (``gelu_new``), RMSNorm
    eps 1e-6, bidirectional relative positions with max distance 128.
    """
    UMT5Config = require("transformers", "UMT5Config", purpose="the umT5 text encoder")

    try:
        vocab, dim = state_dict["token_embedding.weight"].shape
        buckets, heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
        dim_attn = state_dict["blocks.0.attn.q.weight"].shape[0]
        dim_ffn = state_dict["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"{source}: missing key {e.args[0]!r} of Wan's umT5 encoder") from None
    layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    return UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=dim_attn // heads,
        d_ff=dim_ffn,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: unescape HTML entities, collapse whitespace, strip. (Wan also runs
    ``ftfy.fix_text`` first; that only changes mis-encoded text and is not applied here.)"""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def tiny_tokenizer():
    """A byte-level tokenizer built in memory (no files, no training): ids 0-2 are ``<pad>``, ``</s>``,
    ``<unk>`` as in T5, then one token per byte; ``</s>`` is appended like T5's tokenizer does."""
    Tokenizer, decoders, models, pre_tokenizers, processors = require(
        "tokenizers", "Tokenizer", "decoders", "models", "pre_tokenizers", "processors", purpose="the umT5 tokenizer"
    )
    PreTrainedTokenizerFast = require("transformers", "PreTrainedTokenizerFast", purpose="the umT5 tokenizer")

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


class TextEncoder:
    """umT5 encoder + tokenizer -> prompt embeddings ``[B, text_len, d_model]``, zero past each prompt.

    Parameters
    ----------
    model : a transformers ``UMT5EncoderModel`` (its weights may be anywhere; they are moved here).
    tokenizer : its tokenizer.
    text_len : tokens per prompt (512 for Wan).
    device : where the embeddings are returned (and the encoder runs, for ``placement="device"``).
    placement : ``"device"`` keeps the encoder on ``device``; ``"cpu"`` runs it on the CPU;
        ``"offload"`` keeps it on the CPU and moves it to ``device`` only while encoding (for cards
        that cannot hold the DiT and umT5-XXL at once).
    cache_size : prompts kept in the LRU cache.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        text_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        placement: str = "device",
        cache_size: int = 32,
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown text encoder placement {placement!r}; choose one of {list(PLACEMENTS)}")
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.device = torch.device(device)
        self.placement = placement
        home = self.device if placement == "device" else torch.device("cpu")
        self.model = model.to(device=home, dtype=dtype).eval().requires_grad_(False)
        self.dim = model.config.d_model
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, text_encoder_dir: str | Path, tokenizer_dir: str | Path, **kwargs) -> TextEncoder:
        """A diffusers-layout ``text_encoder/`` (transformers ``UMT5EncoderModel``) + ``tokenizer/``."""
        UMT5EncoderModel = require("transformers", "UMT5EncoderModel", purpose="the umT5 text encoder")

        path = Path(text_encoder_dir)
        if not (path / "config.json").is_file():
            raise ValueError(f"text encoder directory {path} has no config.json")
        dtype = kwargs.get("dtype", torch.float32)
        try:
            model = UMT5EncoderModel.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: cannot load the umT5 encoder ({e})") from None
        return cls(model, load_tokenizer(tokenizer_dir), **kwargs)

    @classmethod
    def from_wan_checkpoint(cls, path: str | Path, tokenizer_dir: str | Path, **kwargs) -> TextEncoder:
        """Wan's original ``models_t5_umt5-xxl-enc-bf16.pth``, renamed to transformers' names at load
        (built on the meta device, weights assigned from the memory-mapped file)."""
        UMT5EncoderModel = require("transformers", "UMT5EncoderModel", purpose="the umT5 text encoder")

        path = Path(path)
        tokenizer = load_tokenizer(tokenizer_dir)  # fail fast, before reading gigabytes
        sd = torch_load(path)
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: does not hold a state dict")
        config = umt5_config_from_wan_state_dict(sd, path)
        hf = wan_t5_to_umt5_state_dict(sd, path)
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        problems = state_dict_mismatch(model.state_dict(), hf, unexpected=False)
        if problems:
            raise ValueError(f"{path}: does not match the umT5 encoder; " + "; ".join(problems))
        model.load_state_dict(hf, assign=True)
        model.encoder.embed_tokens = model.shared  # keep the tie transformers expects
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def tiny_random(cls, text_dim: int, *, seed: int = 0, **kwargs) -> TextEncoder:
        """A small random umT5 encoder (2 layers, ``d_model = text_dim``) and the byte-level tokenizer:
        real code path, no files."""
        UMT5Config, UMT5EncoderModel = require(
            "transformers", "UMT5Config", "UMT5EncoderModel", purpose="the umT5 text encoder"
        )

        tokenizer = tiny_tokenizer()
        heads = 4 if text_dim % 4 == 0 else 1
        config = UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=text_dim // heads,
            d_ff=2 * text_dim,
            num_layers=2,
            num_heads=heads,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = UMT5EncoderModel(config)
        return cls(model, tokenizer, **kwargs)

    # -- encoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> torch.Tensor:
        """Embeddings ``[B, text_len, d_model]`` on ``device``; rows past each prompt's tokens are zero."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for p, e in zip(todo, self._run(todo).unbind(0), strict=True):
                self._cache[p] = e
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out)

    __call__ = encode

    def _run(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        run_on = torch.device("cpu") if self.placement == "cpu" else self.device
        if self.placement == "offload":
            self.model.to(run_on)
        try:
            mask = tok.attention_mask.to(run_on)
            hidden = self.model(input_ids=tok.input_ids.to(run_on), attention_mask=mask).last_hidden_state
        finally:
            if self.placement == "offload":
                self.model.to("cpu")
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # zero past the prompt, as Wan does
        return hidden.to(self.device)


def load_tokenizer(path: str | Path):
    """``AutoTokenizer`` from a local directory (google/umt5-xxl's files), never the network."""
    AutoTokenizer = require("transformers", "AutoTokenizer", purpose="the umT5 tokenizer")

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer directory {path} does not exist")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: cannot load the tokenizer ({e})") from None
