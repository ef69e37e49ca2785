"""Pretrained backbones from Hugging Face checkpoints: where a checkpoint is, what its config says, its
weights in :class:`~specroute.model.decoder.Decoder` form, its tokenizer and its identity for reports.

A checkpoint is named by ``backbone.pretrained`` (docs/DESIGN.md, "Pretrained backbones"), one of:

1. a local folder (a path, relative to the spec file, that is a folder): ``config.json``, the weights
   (``model.safetensors`` or ``pytorch_model.bin``) and ``tokenizer.json``;
2. :data:`TINY_RANDOM_GPT2`: a tiny randomly initialised GPT-2 that specroute writes on the fly into
   ``<cache>/pretrained/`` (for offline smoke runs and tests; its tokenizer is byte-level, 257 ids);
3. a Hugging Face repo id (``openai-community/gpt2``, ``gpt2-medium``, ``distilgpt2``, ...): the hub cache
   (``HF_HOME`` / ``HF_HUB_CACHE``) first, then a download through ``huggingface_hub``.

Offline without a cached copy, :class:`CheckpointUnavailable` (exit 2) says at once which model is missing
and the ways to provide it.

The checkpoint's architecture is read by a :class:`Converter` chosen by its config's ``model_type``
(:data:`CONVERTER_MODULES`): ``model_fields`` maps the config to :class:`~specroute.spec.models.ModelSpec`
fields (the spec's model section comes from them: :func:`specroute.spec.loader.load_study`), and
``state_dict`` maps the checkpoint's tensors to the decoder's backbone keys. Only ``huggingface_hub``,
``safetensors``, ``tokenizers`` and torch are needed (not ``transformers``).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specroute.store import UserError, atomic_write_json, cache_dir, publish_dir, sha256_file, temp_dir_beside

#: The tiny random GPT-2 that specroute writes itself (no network, no ``transformers``).
TINY_RANDOM_GPT2 = "specroute/tiny-random-gpt2"
#: Its config (GPT-2's config.json keys): 4 blocks x 128 wide, 4 heads, 128 positions, byte-level vocabulary.
TINY_RANDOM_GPT2_CONFIG = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 4, "n_embd": 128, "n_head": 4,
    "n_positions": 128, "n_inner": None, "vocab_size": 257, "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
    "bos_token_id": 256, "eos_token_id": 256,
}
#: Seed of the tiny checkpoint's weights (the same file on every machine with the same torch).
TINY_RANDOM_SEED = 0
#: Weight files looked for in a checkpoint folder, first hit wins.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Files fetched from the hub: the config, the tokenizer and one of the weight files.
HUB_FILES = ("config.json", "tokenizer.json")
#: Module of each supported ``model_type``'s :class:`Converter` (each exposes ``CONVERTER``).
CONVERTER_MODULES = {
    "gpt2": "specroute.model.convert_gpt2",
    "llama": "specroute.model.convert_llama",
    "qwen2": "specroute.model.convert_llama",
}

HOW_TO_PROVIDE = (
    "Ways to provide it:\n"
    "  - backbone.pretrained: /path/to/folder   (a local copy: config.json, model.safetensors or "
    "pytorch_model.bin, tokenizer.json)\n"
    "  - huggingface-cli download {repo}   (on a machine with network, into the Hugging Face cache; copy the "
    "cache over and point HF_HOME at it)\n"
    "  - HF_HOME=/path/to/hf-home   (a Hugging Face cache that already holds the model)\n"
    f"  - backbone.pretrained: {TINY_RANDOM_GPT2}   (a tiny random GPT-2 written on the fly, for smoke runs)"
)


class CheckpointUnavailable(UserError):
    """A pretrained checkpoint that is neither on this machine nor downloadable; the message names the
    model and the ways to provide it."""


@dataclass(frozen=True)
class Converter:
    """How one ``model_type`` maps to specroute's decoder.

    model_fields(config) -> ModelSpec fields (a dict); raises ValueError naming the config key for an
    architecture the decoder cannot run. state_dict(checkpoint tensors, model spec) -> the decoder's
    backbone state dict (:meth:`Decoder.load_backbone` form); raises ValueError on missing tensors.
    """

    model_type: str
    model_fields: Callable[[Mapping[str, Any]], dict[str, Any]]
    state_dict: Callable[[Mapping[str, Tensor], Any], dict[str, Tensor]]


def converter_for(config: Mapping[str, Any]) -> Converter:
    """The converter of a checkpoint config's ``model_type``. Raises ValueError for an unsupported one."""
    model_type = config.get("model_type")
    if model_type not in CONVERTER_MODULES:
        raise ValueError(f"config.json: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(sorted(CONVERTER_MODULES))})")
    return importlib.import_module(CONVERTER_MODULES[model_type]).CONVERTER


# --------------------------------------------------------------------------------------------------
# where a checkpoint is


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint on this machine: ``source`` as the spec names it, its ``folder``, the hub ``repo_id``
    and ``revision`` (the snapshot's commit hash) when it came from the hub (else None)."""

    source: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text())

    @property
    def weights(self) -> Path:
        """The weight file. Raises CheckpointUnavailable when the folder has none."""
        for name in WEIGHT_FILES:
            if (self.folder / name).is_file():
                return self.folder / name
        raise CheckpointUnavailable(f"backbone.pretrained: {self.folder} has no weights "
                                    f"({' or '.join(WEIGHT_FILES)})")

    @property
    def tokenizer_file(self) -> Path:
        """The checkpoint's ``tokenizer.json``. Raises CheckpointUnavailable when it has none."""
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise CheckpointUnavailable(f"backbone.pretrained: {self.folder} has no tokenizer.json (the data is "
                                        "tokenized with the checkpoint's own tokenizer)")
        return path

    def identity(self) -> dict[str, Any]:
        """What names the weights in a report: source, repo_id, revision, weights file and its sha256 (the
        hub's blob name for a hub file, which is the file's sha256; else hashed here)."""
        weights = self.weights
        blob = weights.resolve().name
        sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else sha256_file(weights)
        return {"source": self.source, "repo_id": self.repo_id, "revision": self.revision,
                "model_type": self.config.get("model_type"), "weights_file": weights.name,
                "weights_sha256": sha, "path": str(self.folder)}


def local_folder(source: str, spec_dir: Path | None) -> Path | None:
    """``source`` as a local folder (relative to ``spec_dir``), or None when it is no folder here."""
    path = Path(source).expanduser()
    if not path.is_absolute() and spec_dir is not None:
        path = spec_dir / path
    return path if path.is_dir() else None


def looks_like_path(source: str) -> bool:
    """Whether ``source`` is written as a path (absolute, ``./``, ``../``, ``~``) rather than a repo id."""
    return source.startswith(("/", "./", "../", "~")) or "\\" in source


def resolve_checkpoint(source: str, revision: str | None = None, spec_dir: Path | None = None,
                       cache: str | Path | None = None) -> Checkpoint:
    """The checkpoint ``source`` names, on this machine: a local folder, the tiny random GPT-2 (written into
    the cache on first use), the hub cache, or downloaded (see the module docstring).

    Raises CheckpointUnavailable: a path that is no folder, or a hub model neither cached nor downloadable
    (offline, unknown repo, no weights), naming the model and the ways to provide it.
    """
    folder = local_folder(source, spec_dir)
    if folder is not None:
        return Checkpoint(source, folder)
    if looks_like_path(source):
        raise CheckpointUnavailable(f"backbone.pretrained: {source} is not a folder (relative paths are "
                                    f"relative to the spec file's folder {spec_dir})")
    if source == TINY_RANDOM_GPT2:
        return Checkpoint(source, write_tiny_random_gpt2(cache))
    return _hub_checkpoint(source, revision)


def _hub_checkpoint(repo: str, revision: str | None) -> Checkpoint:
    from huggingface_hub import snapshot_download

    from specroute.data.tokenizer import hub_cache_dir, hub_reachable

    def snapshot(weights: str, local_only: bool) -> Path | None:
        try:
            got = Path(snapshot_download(repo, revision=revision, cache_dir=hub_cache_dir(),
                                         allow_patterns=[*HUB_FILES, weights], local_files_only=local_only))
        except Exception:  # noqa: BLE001 - not cached (or not found): the caller decides what that means
            return None
        return got if all((got / f).is_file() for f in (*HUB_FILES, weights)) else None

    for weights in WEIGHT_FILES:
        got = snapshot(weights, local_only=True)
        if got is not None:
            return _from_snapshot(repo, got)
    ok, why = hub_reachable()
    if not ok:
        raise CheckpointUnavailable(
            f"backbone.pretrained: {repo}{'@' + revision if revision else ''} is not in the Hugging Face cache "
            f"({hub_cache_dir() or 'the default ~/.cache/huggingface/hub'}) and the hub is unreachable ({why}).\n"
            + HOW_TO_PROVIDE.format(repo=repo))
    for weights in WEIGHT_FILES:
        got = snapshot(weights, local_only=False)
        if got is not None:
            return _from_snapshot(repo, got)
    raise CheckpointUnavailable(
        f"backbone.pretrained: downloading {repo}{'@' + revision if revision else ''} from the hub failed (no such "
        f"repo or revision, or no {' / '.join(WEIGHT_FILES)} with config.json and tokenizer.json).\n"
        + HOW_TO_PROVIDE.format(repo=repo))


def _from_snapshot(repo: str, folder: Path) -> Checkpoint:
    commit = folder.name if folder.parent.name == "snapshots" else None
    return Checkpoint(repo, folder, repo_id=repo, revision=commit)


# --------------------------------------------------------------------------------------------------
# the config alone (for spec resolution: validate and flops need no weights)


#: The GPT-2 family's architecture as its config.json states it, for resolving a spec offline before
#: anything is downloaded (the run still needs the weights). Keys are hub repo ids and their old aliases.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    name: {"model_type": "gpt2", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_positions": 1024,
           "n_inner": None, "vocab_size": 50257, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
           "tie_word_embeddings": True}
    for names, (n_layer, n_embd, n_head) in {
        ("openai-community/gpt2", "gpt2"): (12, 768, 12),
        ("openai-community/gpt2-medium", "gpt2-medium"): (24, 1024, 16),
        ("openai-community/gpt2-large", "gpt2-large"): (36, 1280, 20),
        ("openai-community/gpt2-xl", "gpt2-xl"): (48, 1600, 25),
        ("distilbert/distilgpt2", "distilgpt2"): (6, 768, 12),
    }.items() for name in names
}


def checkpoint_config(source: str, revision: str | None = None, spec_dir: Path | None = None) -> dict[str, Any]:
    """The checkpoint's config.json as a dict, without its weights: from a local folder, the tiny random
    GPT-2's constant, the hub cache, :data:`KNOWN_CONFIGS` (no revision given), or a download of config.json.

    Raises CheckpointUnavailable when none of these has it (offline, unknown model), as resolve_checkpoint.
    """
    folder = local_folder(source, spec_dir)
    if folder is not None:
        if not (folder / "config.json").is_file():
            raise CheckpointUnavailable(f"{folder} has no config.json")
        return json.loads((folder / "config.json").read_text())
    if looks_like_path(source):
        raise CheckpointUnavailable(f"{source} is not a folder (relative paths are relative to the spec file's "
                                    f"folder {spec_dir})")
    if source == TINY_RANDOM_GPT2:
        return dict(TINY_RANDOM_GPT2_CONFIG)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from specroute.data.tokenizer import hub_cache_dir, hub_reachable

    hit = try_to_load_from_cache(source, "config.json", cache_dir=hub_cache_dir(), revision=revision)
    if isinstance(hit, str) and Path(hit).is_file():
        return json.loads(Path(hit).read_text())
    if revision is None and source in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[source])
    ok, why = hub_reachable()
    if not ok:
        raise CheckpointUnavailable(f"{source}: its config.json is not in the Hugging Face cache and the hub is "
                                    f"unreachable ({why}).\n" + HOW_TO_PROVIDE.format(repo=source))
    try:
        return json.loads(Path(hf_hub_download(source, "config.json", revision=revision,
                                               cache_dir=hub_cache_dir())).read_text())
    except Exception as e:  # noqa: BLE001 - any download failure is the same user-facing problem
        raise CheckpointUnavailable(f"{source}: downloading its config.json failed ({type(e).__name__}).\n"
                                    + HOW_TO_PROVIDE.format(repo=source)) from None


# --------------------------------------------------------------------------------------------------
# weights


def read_tensors(path: Path) -> dict[str, Tensor]:
    """A checkpoint's tensors: safetensors, or a pytorch_model.bin read with ``weights_only`` (no code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_backbone_state(checkpoint: Checkpoint, model: Any) -> dict[str, Tensor]:
    """The checkpoint's weights as the decoder's backbone state dict, for ``model`` (the resolved ModelSpec).

    Raises UserError naming the checkpoint when its tensors do not convert (missing or misshapen tensors).
    """
    config = checkpoint.config
    try:
        return converter_for(config).state_dict(read_tensors(checkpoint.weights), model)
    except ValueError as e:
        raise UserError(f"backbone.pretrained: {checkpoint.source} ({checkpoint.folder}): {e}") from None


# --------------------------------------------------------------------------------------------------
# the tiny random GPT-2


def write_tiny_random_gpt2(cache: str | Path | None = None) -> Path:
    """Write (once) :data:`TINY_RANDOM_GPT2` into ``<cache>/pretrained/tiny-random-gpt2/`` and return the
    folder: config.json, model.safetensors in GPT-2's own layout (Conv1D weights (in, out), ``transformer.``
    keys; normal(0, 0.02) from :data:`TINY_RANDOM_SEED`, zero biases, unit LayerNorms) and a byte-level
    tokenizer.json (256 byte tokens + ``<|endoftext|>`` = 256, no merges)."""
    from safetensors.torch import save_file

    target = cache_dir(cache) / "pretrained" / "tiny-random-gpt2"
    if (target / "config.json").is_file():
        return target
    c = TINY_RANDOM_GPT2_CONFIG
    D, V, P, L = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_layer"]
    g = torch.Generator().manual_seed(TINY_RANDOM_SEED)

    def normal(*shape: int) -> Tensor:
        return (torch.randn(*shape, generator=g) * c["initializer_range"]).contiguous()

    state = {"transformer.wte.weight": normal(V, D), "transformer.wpe.weight": normal(P, D),
             "transformer.ln_f.weight": torch.ones(D), "transformer.ln_f.bias": torch.zeros(D)}
    for i in range(L):
        p = f"transformer.h.{i}."
        for name, (fan_in, fan_out) in {"attn.c_attn": (D, 3 * D), "attn.c_proj": (D, D),
                                        "mlp.c_fc": (D, 4 * D), "mlp.c_proj": (4 * D, D)}.items():
            state[p + name + ".weight"], state[p + name + ".bias"] = normal(fan_in, fan_out), torch.zeros(fan_out)
        for ln in ("ln_1", "ln_2"):
            state[p + ln + ".weight"], state[p + ln + ".bias"] = torch.ones(D), torch.zeros(D)
    tmp = temp_dir_beside(target)
    atomic_write_json(tmp / "config.json", c)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    byte_level_tokenizer(V - 1).save(str(tmp / "tokenizer.json"))
    publish_dir(tmp, target)
    return target


def byte_level_tokenizer(n_bytes: int = 256) -> Any:
    """A ``tokenizers`` byte-level BPE without merges: ids 0..255 the bytes (GPT-2's byte-to-character
    alphabet, sorted), ``<|endoftext|>`` the next id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())[:n_bytes]
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok
