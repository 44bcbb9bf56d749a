"""slfaas: serverless LoRA functions on one shared LLM backbone (see DESIGN.md)."""

__version__ = "0.1.0"
