"""The model directory's tokenizer (``tokenizer.json`` via the ``tokenizers``
package), its special tokens and its chat template."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class TokenizerError(LowbitError):
    """A prompt needs a tokenizer or chat template the model directory lacks."""


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older files
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise TokenizerError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return config


def _chat_template(value: Any, path: Path) -> str | None:
    """The template text: a string, or the "default" of a list of named templates."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named: dict[Any, str] = {}
        for i, t in enumerate(value):
            if not (isinstance(t, dict) and isinstance(t.get("template"), str)):
                raise TokenizerError(
                    f"{path}: chat_template[{i}]: expected {{'name': ..., 'template': '...'}}"
                )
            named.setdefault(t.get("name"), t["template"])
        return named.get("default") or next(iter(named.values()), None)
    raise TokenizerError(f"{path}: chat_template: expected a string or a list of named templates")


@contextlib.contextmanager
def _tokenizers_errors(path: Path, what: str) -> Iterator[None]:
    """The ``tokenizers`` package's failures as a TokenizerError naming the file.

    It raises a bare Exception on bad files, and a Rust panic (pyo3's
    PanicException, a BaseException) when a file that loaded is inconsistent
    (a merge naming a token the vocabulary lacks) as soon as it is used.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:
        raise TokenizerError(f"{path}: {what} ({type(e).__name__}: {e})") from None


class Tokenizer:
    """Text to token ids and back, plus the chat template when there is one."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        self.path = path = model_dir / TOKENIZER_FILE
        with _tokenizers_errors(path, "not a readable tokenizer"):
            self._tok = HfTokenizer.from_file(str(path))
        self._config: dict[str, Any] = {}
        cfg = model_dir / "tokenizer_config.json"
        if cfg.is_file():
            self._config = _read_config(cfg)
        template = _chat_template(self._config.get("chat_template"), cfg)
        jinja_file = model_dir / CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            try:
                template = jinja_file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise TokenizerError(f"{jinja_file}: unreadable ({e})") from None
        self.chat_template: str | None = template
        self.bos_token = _token_text(self._config.get("bos_token"))
        self.eos_token = _token_text(self._config.get("eos_token"))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with _tokenizers_errors(self.path, "cannot encode"):
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        with _tokenizers_errors(self.path, "cannot decode"):
            return self._tok.decode(ids, skip_special_tokens=True)

    def token_id(self, text: str | None) -> int | None:
        with _tokenizers_errors(self.path, "cannot look up a token"):
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
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as e:
            # The template is data from the model directory: its runtime
            # errors (a list % a list, a missing key) are bad input too.
            raise TokenizerError(f"chat template: {type(e).__name__}: {e}") from None
