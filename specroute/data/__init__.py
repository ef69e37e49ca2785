"""Data: corpus sources (embedded, local files, fineweb-edu), tokenizers, token shard cache, batches."""

from specroute.data.sampler import WindowSampler
from specroute.data.shards import TokenData, prepare_data
from specroute.data.tokenizer import DataUnavailable, load_tokenizer

__all__ = ["DataUnavailable", "TokenData", "WindowSampler", "load_tokenizer", "prepare_data"]
