"""Tasks -> token-id prompts, and output ids -> text, the same way for both backends.

The chat template (thinking off, as profile_throughput) is applied when ``--chat-template`` says so,
or by default when the tokenizer has one; otherwise the prompt text is encoded as is.
"""
from throughput.errors import BenchmarkInputError
from throughput.prompts import Prompt, encode, render_chat


def load_tokenizer(model_path: str):
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    except Exception as e:  # noqa: BLE001  any failure here is "this is not a usable model path"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BenchmarkInputError(f'cannot load a tokenizer from {model_path}: {first}') from None


def use_chat_template(tokenizer, requested: bool | None) -> bool:
    has_template = bool(getattr(tokenizer, 'chat_template', None))
    if requested and not has_template:
        raise BenchmarkInputError('--chat-template: the tokenizer has no chat template (use --no-chat-template)')
    return has_template if requested is None else requested


def build_prompts(tasks, tokenizer, chat_template: bool, default_max_new_tokens: int) -> list[Prompt]:
    prompts = []
    for task in tasks:
        if chat_template:
            text = render_chat(tokenizer, [{'role': 'user', 'content': task.prompt}])
            ids = encode(tokenizer, text)  # the template holds the special tokens
        else:
            text = task.prompt
            ids = list(tokenizer.encode(text))
        prompts.append(Prompt(ids, task.max_new_tokens or default_max_new_tokens, text))
    return prompts


def decode_output(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True)
