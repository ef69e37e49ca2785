"""Pretrained GPT-2 backbones (specroute/model/pretrained.py, model/convert_gpt2.py): parity with transformers
on a small random GPT-2 saved with ``save_pretrained`` (no network), the model section read from the
checkpoint's config, the lookup order (local folder, hub cache, download), offline errors, the tokenizer from
the checkpoint and the checkpoint's identity in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from helpers import SPECS, assert_exit_2, tokens, write
from specroute.cli import app
from specroute.data.tokenizer import Gpt2Tokenizer, load_tokenizer
from specroute.model.decoder import Decoder
from specroute.model.pretrained import (TINY_RANDOM_GPT2, CheckpointUnavailable, load_backbone_state,
                                        resolve_checkpoint, write_tiny_random_gpt2)
from specroute.spec import load_study
from specroute.spec.errors import SpecError
from specroute.store import sha256_file

transformers = pytest.importorskip("transformers")

SHARED_GPT2 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gpt2" / "tokenizer.json"
#: A small GPT-2: 3 blocks x 48 wide, 4 heads, 40 positions, 101 ids; every parameter drawn at random.
CONFIG = {"n_layer": 3, "n_embd": 48, "n_head": 4, "n_positions": 40, "vocab_size": 101, "resid_pdrop": 0.0,
          "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def hf_gpt2(folder: Path, seed: int = 0, safe: bool = True, **config) -> torch.nn.Module:
    """A GPT2LMHeadModel with random weights (LayerNorms and biases too), saved into ``folder``."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**CONFIG, **config})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    if not safe:  # the older pickle format (torch.save of the state dict, as transformers once wrote it)
        (folder / "model.safetensors").unlink()
        torch.save({k: v for k, v in model.state_dict().items() if k != "lm_head.weight" or not
                    model.config.tie_word_embeddings}, folder / "pytorch_model.bin")
    return model


def spec_file(folder: Path, pretrained: str, model: str = "", extra: str = "") -> Path:
    return write(folder, "s.yaml", f"""
backbone: {{pretrained: {pretrained}, train: {{seq_len: 16, batch_size: 2}}}}
routing: {{controlled_layers: [0, 2], cheap_ffn_hidden: 8, execution: masked}}
gate: {{kind: G1, hidden: 8}}
train: {{seq_len: 16, batch_size: 2}}
{model}
{extra}
""")


def loaded(folder: Path, ckpt: Path, routed: bool = False) -> Decoder:
    spec = load_study(spec_file(folder, str(ckpt))).arm_spec("default")
    model = Decoder(spec, routed=routed).eval()
    model.load_backbone(load_backbone_state(resolve_checkpoint(str(ckpt)), spec.model))
    return model


@pytest.mark.parametrize(("safe", "tied"), [(True, True), (False, True), (True, False)])
def test_dense_logits_equal_transformers_and_all_full_equals_dense(tmp_path, safe, tied):
    hf = hf_gpt2(tmp_path / "ckpt", safe=safe, tie_word_embeddings=tied)
    assert (tmp_path / "ckpt" / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    dense, routed = loaded(tmp_path, tmp_path / "ckpt"), loaded(tmp_path, tmp_path / "ckpt", routed=True)
    for B, T in [(1, 1), (2, 7), (3, 40)]:
        idx = tokens(B, T, seed=T, vocab=101)
        with torch.no_grad():
            want = hf(idx).logits
            got = dense(idx).logits_BTV
            assert_close(got, want, rtol=0, atol=1e-5)
            assert_close(routed(idx, all_full=True).logits_BTV, got, rtol=0, atol=1e-6)
    assert want.abs().max() > 0.5  # logits of a size where a wrong transpose or bias would show


def test_the_model_section_comes_from_the_config_and_a_contradiction_names_both(tmp_path):
    hf_gpt2(tmp_path / "ckpt")
    spec = load_study(spec_file(tmp_path, "ckpt")).arm_spec("default")  # relative to the spec's folder
    m = spec.model
    assert (m.n_layers, m.d_model, m.n_heads, m.context_length, m.vocab_size, m.ffn_hidden) == (3, 48, 4, 40, 101, 192)
    assert spec.data.tokenizer == "pretrained"
    agree = load_study(spec_file(tmp_path, "ckpt", "model: {n_layers: 3, d_model: 48}")).arm_spec("default")
    assert agree.model == m
    with pytest.raises(SpecError) as info:
        load_study(spec_file(tmp_path, "ckpt", "model: {n_layers: 4}"))
    e = info.value
    assert (e.field, e.line) == ("model.n_layers", 6)  # the line that sets it
    assert "n_layers=4" in e.reason and str(tmp_path / "ckpt" / "config.json") in e.reason and "n_layers=3" in e.reason
    with pytest.raises(SpecError) as info:  # the data's tokenizer must be the checkpoint's
        load_study(spec_file(tmp_path, "ckpt", extra="data: {kind: embedded, tokenizer: bytes}"))
    assert info.value.field == "data.tokenizer"


def test_an_arm_that_contradicts_the_checkpoint_is_an_error(tmp_path):
    hf_gpt2(tmp_path / "ckpt")
    path = spec_file(tmp_path, "ckpt", extra="arms:\n  small:\n    overrides: {model: {d_model: 32}}")
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert info.value.field == "model.d_model" and "d_model=48" in info.value.reason


def test_an_architecture_the_decoder_cannot_run_is_refused(tmp_path):
    hf_gpt2(tmp_path / "ckpt", activation_function="relu")
    with pytest.raises(SpecError) as info:
        load_study(spec_file(tmp_path, "ckpt"))
    assert info.value.field == "backbone.pretrained" and "activation_function 'relu'" in info.value.reason


def hub_cache(home: Path, repo: str, src: Path, commit: str = "a" * 40) -> Path:
    """A Hugging Face hub cache under ``home`` holding ``src``'s files as ``repo`` at ``commit`` (blobs named
    by their sha256, snapshot links, refs/main), the layout huggingface_hub writes."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for f in src.iterdir():
        blob = root / "blobs" / sha256_file(f)
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snap


def test_a_hub_model_is_found_in_the_cache_offline_and_reports_its_revision(tmp_path, monkeypatch):
    hf_gpt2(tmp_path / "ckpt")
    write_tiny_random_gpt2(tmp_path / "cache")
    shutil.copy(tmp_path / "cache" / "pretrained" / "tiny-random-gpt2" / "tokenizer.json", tmp_path / "ckpt")
    hub_cache(tmp_path / "hf", "someone/small-gpt2", tmp_path / "ckpt")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_study(spec_file(tmp_path, "someone/small-gpt2")).arm_spec("default").model.n_layers == 3
    ckpt = resolve_checkpoint("someone/small-gpt2")
    ident = ckpt.identity()
    assert (ident["repo_id"], ident["revision"]) == ("someone/small-gpt2", "a" * 40)
    assert ident["weights_sha256"] == sha256_file(tmp_path / "ckpt" / "model.safetensors")


def test_offline_without_a_cached_copy_exits_2_at_once_naming_the_model_and_the_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointUnavailable) as info:
        resolve_checkpoint("someone/not-here")
    for words in ("someone/not-here", "huggingface-cli download someone/not-here", "HF_HOME", "local copy"):
        assert words in str(info.value)
    # the GPT-2 family's sizes are known without its config (validate and flops work offline) ...
    path = spec_file(tmp_path, "openai-community/gpt2", extra="data: {kind: embedded}")
    assert load_study(path).arm_spec("default").model.d_model == 768
    # ... but a run needs the weights, and says so before touching data or the output folder
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--cache-dir",
                                      str(tmp_path / "cache"), "--yes"])
    assert_exit_2(result, "openai-community/gpt2", "huggingface-cli download", prefix="error: ")
    assert not (tmp_path / "cache" / "tokens").exists()
    result = CliRunner().invoke(app, ["validate", str(spec_file(tmp_path, "someone/not-here"))])
    assert_exit_2(result, "backbone.pretrained", "someone/not-here", "huggingface-cli download")


def test_the_tokenizer_is_the_checkpoints(tmp_path):
    folder = write_tiny_random_gpt2(tmp_path)
    tok = load_tokenizer("pretrained", pretrained=folder / "tokenizer.json")
    assert (tok.name, tok.vocab_size, tok.eot) == ("pretrained", 257, 256)
    text = "routing é"
    ids = tok.encode_batch([text])[0]
    assert len(ids) == len(text.encode()) and tok._tok.decode(ids.tolist()) == text  # one id per byte
    if SHARED_GPT2.is_file():  # GPT-2's own tokenizer read as a checkpoint's: the gpt2 tokenizer's hash and ids
        gpt2 = load_tokenizer("pretrained", pretrained=SHARED_GPT2)
        assert (gpt2.sha256, gpt2.vocab_size, gpt2.eot) == (Gpt2Tokenizer(SHARED_GPT2).sha256, 50257, 50256)
        assert gpt2.encode_batch(["Hello world"])[0].tolist() == [15496, 995]


def test_the_tiny_random_checkpoint_is_written_once_in_gpt2s_layout(tmp_path):
    folder = write_tiny_random_gpt2(tmp_path)
    first = sha256_file(folder / "model.safetensors")
    shutil.rmtree(folder)
    assert sha256_file(write_tiny_random_gpt2(tmp_path) / "model.safetensors") == first  # same seed, same file
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()  # transformers reads it as GPT-2
    spec = load_study(SPECS / "gpt2.yaml", "smoke", [f"backbone.pretrained={folder}"]).arm_spec("G1_lm")
    model = Decoder(spec, routed=False).eval()
    model.load_backbone(load_backbone_state(resolve_checkpoint(str(folder)), spec.model))
    idx = tokens(2, 9, vocab=257)
    with torch.no_grad():
        assert_close(model(idx).logits_BTV, hf(idx).logits, rtol=0, atol=1e-5)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 257
    assert resolve_checkpoint(TINY_RANDOM_GPT2, cache=tmp_path).folder == folder


def test_validate_and_flops_show_gpt2_smalls_real_sizes_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the sizes come without the network
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["flops", str(SPECS / "gpt2.yaml"), "--profile", "full", "--json"])
    assert result.exit_code == 0, result.output
    params = json.loads(result.stdout)["arms"]["G1_lm"]["params"]
    with torch.device("meta"):  # GPT-2 small's architecture, no weights
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    assert params["backbone"] == sum(p.numel() for p in hf.parameters())  # 124,439,808 (tied head counted once)
    result = CliRunner().invoke(app, ["validate", str(SPECS / "gpt2.yaml"), "--profile", "full"])
    assert result.exit_code == 0, result.output
    assert "12 layers x d_model 768" in result.stdout and "pretrained openai-community/gpt2" in result.stdout


@pytest.mark.parametrize(("backbone", "words"), [
    ("{pretrained: specroute/tiny-random-gpt2, checkpoint: b.safetensors}", "keep one"),
    ("{revision: main}", "needs backbone.pretrained"),
])
def test_one_backbone_source_and_a_revision_only_with_a_repo(tmp_path, backbone, words):
    with pytest.raises(SpecError) as info:
        load_study(write(tmp_path, "s.yaml", f"backbone: {backbone}\n"))
    assert words in str(info.value)
