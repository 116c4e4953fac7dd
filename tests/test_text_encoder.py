"""umT5 text encoder: Wan's .pth (converted names) and the diffusers layout, zero padding, LRU cache."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arvid.runtime.text_encoder import (
    TextEncoder,
    clean_prompt,
    tiny_tokenizer,
    umt5_config_from_wan_state_dict,
    wan_t5_to_umt5_state_dict,
)

TEXT_LEN = 16


# -- a small re-statement of Wan's umT5 encoder (wan/modules/t5.py, shared_pos=False), in Wan's names ---
class WanT5Norm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6))


class WanT5Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x, mask, pos_bias):
        b, n, c = x.shape[0], self.heads, x.shape[2] // self.heads
        q, k, v = (f(x).view(b, -1, n, c) for f in (self.q, self.k, self.v))
        bias = pos_bias.expand(b, -1, -1, -1).clone()
        bias.masked_fill_(mask.view(b, 1, 1, -1) == 0, torch.finfo(x.dtype).min)
        attn = torch.einsum("binc,bjnc->bnij", q, k) + bias  # T5: no 1/sqrt(d) scaling
        x = torch.einsum("bnij,bjnc->binc", F.softmax(attn.float(), dim=-1).type_as(attn), v)
        return self.o(x.reshape(b, -1, n * c))


class WanT5FFN(nn.Module):
    def __init__(self, dim, ffn):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, ffn, bias=False)
        self.fc2 = nn.Linear(ffn, dim, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(x) * self.gate(x))


class WanT5RelEmbedding(nn.Module):
    def __init__(self, buckets, heads, max_dist=128):
        super().__init__()
        self.buckets, self.max_dist = buckets, max_dist
        self.embedding = nn.Embedding(buckets, heads)

    def forward(self, lq, lk):
        rel = torch.arange(lk).unsqueeze(0) - torch.arange(lq).unsqueeze(1)
        nb = self.buckets // 2  # bidirectional
        out = (rel > 0).long() * nb
        rel = rel.abs()
        exact = nb // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_dist / exact) * (nb - exact)).long()
        large = torch.minimum(large, torch.full_like(large, nb - 1))
        out = out + torch.where(rel < exact, rel, large)
        return self.embedding(out).permute(2, 0, 1).unsqueeze(0)


class WanT5Block(nn.Module):
    def __init__(self, dim, ffn, heads, buckets):
        super().__init__()
        self.norm1, self.attn = WanT5Norm(dim), WanT5Attention(dim, heads)
        self.norm2, self.ffn = WanT5Norm(dim), WanT5FFN(dim, ffn)
        self.pos_embedding = WanT5RelEmbedding(buckets, heads)

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask, self.pos_embedding(x.shape[1], x.shape[1]))
        return x + self.ffn(self.norm2(x))


class WanT5Encoder(nn.Module):
    def __init__(self, vocab, dim=32, ffn=48, heads=4, layers=2, buckets=8):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(WanT5Block(dim, ffn, heads, buckets) for _ in range(layers))
        self.norm = WanT5Norm(dim)

    def forward(self, ids, mask):
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


@pytest.fixture(scope="module")
def wan_t5(tmp_path_factory):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    ref = WanT5Encoder(len(tok)).eval()
    with torch.no_grad():  # norms away from 1 so a swapped norm weight shows
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("wan_t5")
    torch.save(ref.state_dict(), root / "models_t5_umt5-xxl-enc-bf16.pth")
    tok.save_pretrained(str(root / "google" / "umt5-xxl"))
    return ref, root


def _reference(ref, tok, prompts):
    enc = tok([clean_prompt(p) for p in prompts], padding="max_length", truncation=True, max_length=TEXT_LEN,
              add_special_tokens=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = ref(enc.input_ids, enc.attention_mask)
    for u, n in zip(out, enc.attention_mask.sum(1), strict=True):
        u[n:] = 0  # Wan / LongLive: embeddings past the prompt are zero
    return out


def test_wan_pth_matches_wan_t5_encoder(wan_t5):
    ref, root = wan_t5
    enc = TextEncoder.from_wan_checkpoint(
        root / "models_t5_umt5-xxl-enc-bf16.pth", root / "google" / "umt5-xxl", text_len=TEXT_LEN
    )
    prompts = ["a cat  on a   mat", "a very long prompt that will certainly be cut at sixteen tokens"]
    out = enc.encode(prompts)
    assert out.shape == (2, TEXT_LEN, 32)
    want = _reference(ref, enc.tokenizer, prompts)
    assert torch.allclose(out, want, atol=1e-5, rtol=1e-5), (out - want).abs().max()
    n = len("a cat on a mat") + 1  # byte tokens + </s>
    assert out[0, n:].abs().sum() == 0 and (out[0, :n].abs().sum(-1) > 0).all()
    assert (out[1].abs().sum(-1) > 0).all()  # truncated: no padding


def test_conversion_covers_every_weight(wan_t5):
    ref, _ = wan_t5
    from transformers import UMT5EncoderModel

    sd = ref.state_dict()
    cfg = umt5_config_from_wan_state_dict(sd)
    assert (cfg.d_model, cfg.num_heads, cfg.num_layers, cfg.d_ff, cfg.relative_attention_num_buckets) == (
        32, 4, 2, 48, 8,
    )  # fmt: skip
    assert set(wan_t5_to_umt5_state_dict(sd)) == set(UMT5EncoderModel(cfg).state_dict())


def test_diffusers_layout(tmp_path):
    from transformers import UMT5Config, UMT5EncoderModel

    tok = tiny_tokenizer()
    torch.manual_seed(1)
    cfg = UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0)  # fmt: skip
    model = UMT5EncoderModel(cfg).eval()
    model.save_pretrained(str(tmp_path / "text_encoder"))
    tok.save_pretrained(str(tmp_path / "tokenizer"))
    enc = TextEncoder.from_pretrained(tmp_path / "text_encoder", tmp_path / "tokenizer", text_len=TEXT_LEN)
    ids = tok(["hello"], padding="max_length", max_length=TEXT_LEN, return_tensors="pt")
    with torch.no_grad():
        want = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    want[:, len("hello") + 1 :] = 0
    assert torch.allclose(enc.encode("hello"), want, atol=1e-6)


def test_lru_cache_and_placements():
    enc = TextEncoder.tiny_random(32, text_len=TEXT_LEN, cache_size=2, placement="offload")
    calls = []  # token ids of each batch the umT5 model actually runs on (a cache miss)
    enc.model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"]), with_kwargs=True)
    tok = enc.tokenizer
    ids = {p: tok([p], padding="max_length", truncation=True, max_length=TEXT_LEN, return_tensors="pt").input_ids
           for p in "abc"}  # fmt: skip
    a = enc.encode("a")
    assert torch.equal(enc.encode(["a", "a"])[1], a[0]) and len(calls) == 1 and torch.equal(calls[0], ids["a"])
    enc.encode(["b", "c"])  # evicts "a"
    enc.encode("a")
    assert [c.shape[0] for c in calls] == [1, 2, 1]
    assert torch.equal(calls[1], torch.cat([ids["b"], ids["c"]])) and torch.equal(calls[2], ids["a"])
    assert next(enc.model.parameters()).device.type == "cpu"  # offloaded between prompts
    with pytest.raises(ValueError, match="unknown text encoder placement 'gpu'"):
        TextEncoder.tiny_random(32, text_len=TEXT_LEN, placement="gpu")


def test_tiny_encoder_is_deterministic():
    a = TextEncoder.tiny_random(32, text_len=TEXT_LEN, seed=0).encode("x")
    b = TextEncoder.tiny_random(32, text_len=TEXT_LEN, seed=0).encode("x")
    assert torch.equal(a, b)


def test_bad_files_name_file_and_key(tmp_path, wan_t5):
    ref, root = wan_t5
    sd = dict(ref.state_dict())
    sd["blocks.0.attn.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "t5.pth")
    with pytest.raises(ValueError, match=r"t5\.pth: unexpected key 'blocks\.0\.attn\.extra\.weight'"):
        TextEncoder.from_wan_checkpoint(tmp_path / "t5.pth", root / "google" / "umt5-xxl", text_len=TEXT_LEN)
    sd = dict(ref.state_dict())
    del sd["blocks.1.ffn.fc2.weight"]
    torch.save(sd, tmp_path / "t5b.pth")
    with pytest.raises(ValueError, match=r"t5b\.pth: .*missing keys.*layer\.1\.DenseReluDense\.wo"):
        TextEncoder.from_wan_checkpoint(tmp_path / "t5b.pth", root / "google" / "umt5-xxl", text_len=TEXT_LEN)
    with pytest.raises(ValueError, match=r"tokenizer directory .*nope does not exist"):
        TextEncoder.from_wan_checkpoint(root / "models_t5_umt5-xxl-enc-bf16.pth", tmp_path / "nope", text_len=4)
    with pytest.raises(ValueError, match=r"text encoder directory .* has no config\.json"):
        TextEncoder.from_pretrained(tmp_path, tmp_path, text_len=4)
