"""Chat messages → one prompt, the way the base model was tuned to read them.

The base tokenizer's own chat template when it has one (``tokenizer.chat_template``, rendered
by transformers with the generation prompt appended); otherwise a simple documented template::

    System: {content}
    User: {content}
    Assistant: {content}
    Assistant:

(one line per message, ``Role: content``, role capitalised, then ``Assistant:`` for the model
to continue). Runs inside the instance, which has the tokenizer; the control plane never
loads one.
"""
from __future__ import annotations

from typing import Any, Sequence

SIMPLE_TEMPLATE_NAME = "slfaas-simple"


def simple_template(messages: Sequence[tuple[str, str]]) -> str:
    lines = [f"{role[:1].upper()}{role[1:]}: {content}" for role, content in messages]
    return "\n".join(lines + ["Assistant:"])


def chat_prompt(tokenizer: Any, messages: Sequence[tuple[str, str]]) -> tuple[str, bool]:
    """(prompt text, whether the text already holds the model's special tokens such as BOS:
    then the caller must not add them again when it tokenizes)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                             tokenize=False, add_generation_prompt=True)
        return str(text), True
    return simple_template(messages), False
