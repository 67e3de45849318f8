"""A tiny BPE tokenizer (≤ 96 ids, the tiny models' vocabulary) with a chat template."""

from __future__ import annotations

import json
from pathlib import Path

TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "write a haiku about autumn leaves falling on a quiet river. "
    "hello world, this is a tiny model with a tiny vocabulary."
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_tokenizer(model_dir: Path, vocab_size: int = 96) -> None:
    """tokenizer.json and tokenizer_config.json for the model in ``model_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
    )
    tok.train_from_iterator([TEXT], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    assert tok.get_vocab_size() <= vocab_size
    tok.save(str(model_dir / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))


def with_tokenizer_and_text(checkpoint: Path, root: Path) -> tuple[Path, Path]:
    """A copy of ``checkpoint`` in ``root/src`` with the tiny tokenizer, and a
    text file of it (``root/text.txt``) to validate on."""
    import shutil

    src = root / "src"
    shutil.copytree(checkpoint, src)
    write_tiny_tokenizer(src)
    text = root / "text.txt"
    text.write_text(TEXT * 4)
    return src, text
