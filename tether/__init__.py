"""Tether: fine-tune an LLM into a recommender with LoRA, and refuse to promote an
adapter that has damaged what the base model could already do."""

__version__ = "0.1.0"
