"""The base model: resolving it (embedded GGUF, local directory or hub id), caching the
converted embedded model, and loading model and tokenizer for training and evaluation."""
