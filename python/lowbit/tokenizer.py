"""The model directory's tokenizer (``tokenizer.json`` via the ``tokenizers``
package), its special tokens and its chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class TokenizerError(LowbitError):
    """A prompt needs a tokenizer or chat template the model directory lacks."""


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older files
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Text to token ids and back, plus the chat template when there is one."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        path = model_dir / TOKENIZER_FILE
        try:
            self._tok = HfTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise TokenizerError(f"{path}: not a readable tokenizer ({e})") from None
        self._config: dict[str, Any] = {}
        cfg = model_dir / "tokenizer_config.json"
        if cfg.is_file():
            try:
                self._config = json.loads(cfg.read_text())
            except ValueError as e:
                raise TokenizerError(f"{cfg}: not JSON ({e})") from None
        template = self._config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = model_dir / CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            template = jinja_file.read_text()
        self.chat_template: str | None = template
        self.bos_token = _token_text(self._config.get("bos_token"))
        self.eos_token = _token_text(self._config.get("eos_token"))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages``, ending with the assistant's turn."""
        if not self.chat_template:
            raise TokenizerError("the model directory has no chat template (tokenizer_config.json)")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as e:
            raise TokenizerError(f"chat template: {e}") from None
