"""The model directory's tokenizer (``tokenizer.json`` via the ``tokenizers``
package), its special tokens and its chat template."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from lowbit.util.errors import LowbitError

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Bounds on rendering a chat template, which is code from the model directory.
# jinja2's sandbox stops it reaching Python internals, but not from looping for
# ever or building a string of gigabytes; real templates render in
# milliseconds and produce the messages plus a few hundred characters.
TEMPLATE_SECONDS = 2.0
TEMPLATE_OUTPUT_CHARS = 1 << 22  # plus the messages' own length
# Largest string, list or number of digits an operator or filter may build, and
# largest integer argument (a width, a repeat count) a call or filter may take.
TEMPLATE_MAX_SIZE = 1 << 20


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
        self.chat_template_source = f"{cfg}: chat_template"
        jinja_file = model_dir / CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            try:
                template = jinja_file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise TokenizerError(f"{jinja_file}: unreadable ({e})") from None
            self.chat_template_source = str(jinja_file)
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
        """The prompt text for ``messages``, ending with the assistant's turn.

        The template runs sandboxed, within TEMPLATE_SECONDS and size bounds;
        whatever goes wrong in it is a TokenizerError naming its file.
        """
        if not self.chat_template:
            raise TokenizerError("the model directory has no chat template (tokenizer_config.json)")
        limit = TEMPLATE_OUTPUT_CHARS + sum(len(str(m.get("content", ""))) for m in messages)
        try:
            return render_template(
                self.chat_template,
                limit,
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except _TemplateTimeout:
            raise TokenizerError(
                f"{self.chat_template_source}: rendering took over {TEMPLATE_SECONDS} s; refused"
            ) from None
        except RecursionError:
            raise TokenizerError(f"{self.chat_template_source}: recursion too deep") from None
        except MemoryError:
            raise TokenizerError(f"{self.chat_template_source}: out of memory") from None
        except Exception as e:
            # The template is the model's code: any exception it raises (its own
            # raise_exception, a TypeError, a size bound) is bad input.
            raise TokenizerError(
                f"{self.chat_template_source}: chat template failed: {type(e).__name__}: {e}"
            ) from None


class _TemplateTimeout(BaseException):
    """Raised into a template that runs too long (a BaseException, so that no
    ``except Exception`` in jinja2's runtime can swallow it)."""


def _check_size(n: int) -> None:
    from jinja2.sandbox import SecurityError

    if n > TEMPLATE_MAX_SIZE:
        raise SecurityError(f"a value of size {n} (more than {TEMPLATE_MAX_SIZE}) refused")


def _size(value: object) -> int:
    """Length of a string or sequence, or digits (bits / 3) of an int; else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value.bit_length() // 3
    if isinstance(value, str | bytes | list | tuple):
        return len(value)
    return 0


def _check_format(spec: object) -> None:
    """Refuse a format string (``%`` or ``str.format``) with a huge width or precision."""
    if isinstance(spec, str):
        for digits in re.findall(r"\d{7,}", spec):
            _check_size(int(digits))


def _check_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse an integer argument large enough to build a huge value (widths, counts)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int | float) and not isinstance(a, bool) and abs(a) > TEMPLATE_MAX_SIZE:
            _check_size(int(min(abs(a), 2**63)))


def _bounded_filter(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja2's pass_context/pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_args(args, kwargs)
        return f(*args, **kwargs)

    return checked


def _sandbox() -> Any:
    """An immutable jinja2 sandbox whose operators, calls and filters are size-bounded."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        # Operators that can build a large value from small ones; jinja2 does
        # not constant-fold intercepted operators, so the check runs each time.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                if isinstance(left, int) and isinstance(right, int):
                    _check_size(_size(left) + _size(right))
                else:
                    count = right if isinstance(right, int) else left
                    seq = left if isinstance(right, int) else right
                    _check_size(_size(seq) * max(int(count), 0) if isinstance(count, int) else 0)
            elif operator == "**" and isinstance(left, int) and isinstance(right, int):
                _check_size(max(_size(left), 1) * max(right, 0))
            elif operator == "+":
                _check_size(_size(left) + _size(right))
            elif operator == "%":
                _check_format(left)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check_args(args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            # jinja2 wraps str.format when it is looked up; check the widths there.
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_format(value.__self__)
            return wrapped

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = Bounded(trim_blocks=True, lstrip_blocks=True)
    env.filters = {k: _bounded_filter(f) for k, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    return env


def render_template(source: str, max_chars: int, **context: Any) -> str:
    """Compile and render ``source`` in the bounded sandbox, within TEMPLATE_SECONDS.

    The time bound is a trace function on this thread: it checks the clock at
    every Python call and, inside the template's own code, at every line, so a
    loop that outputs nothing is stopped too. Output beyond ``max_chars`` is
    refused as it streams.
    """
    deadline = time.monotonic() + TEMPLATE_SECONDS

    def tick(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _TemplateTimeout
        # Line events only in the compiled template (cheap elsewhere).
        return tick if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(tick)
    try:
        out: list[str] = []
        total = 0
        for chunk in _sandbox().from_string(source).generate(**context):
            total += len(chunk)
            if total > max_chars:
                raise ValueError(f"output exceeds {max_chars} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        sys.settrace(previous)
