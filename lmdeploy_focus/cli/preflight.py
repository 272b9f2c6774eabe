"""One-line errors, before upstream starts, for two mistakes every newcomer meets on
``lmdeploy serve api_server`` and ``lmdeploy chat``:

* a model path that is neither a directory nor a hub repo id (upstream hands it to the hub client,
  which ends in an ``HFValidationError`` traceback), checked as the argument is parsed;
* no usable CUDA device with ``--device cuda`` (the default; upstream ends in ``AssertionError: Torch
  not compiled with CUDA enabled`` or a CUDA init error), checked before the command runs.
"""
import argparse
import os

HUB_ENV_FLAGS = ('LMDEPLOY_USE_MODELSCOPE', 'LMDEPLOY_USE_OPENMIND_HUB')


def _looks_like_a_path(text: str) -> bool:
    """Hub repo ids are ``name`` or ``owner/name``: never absolute, never ``./``, ``~`` or deeper."""
    return (os.path.isabs(text) or text.startswith(('.', '~')) or text.count('/') > 1 or os.sep != '/'
            and os.sep in text)


def _owner_is_a_local_folder(text: str) -> bool:
    """An ``owner/name`` whose owner is a folder here (``models/tiny-sdar`` typed in the repo) and that the hub cache
    does not hold: a mistyped path, which the hub client answered with a traceback after its retries."""
    return text.count('/') == 1 and os.path.isdir(text.split('/', 1)[0]) and not _in_hub_cache(text)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, 'config.json'), str)
    except Exception:  # noqa: BLE001  (an id the client refuses, an unreadable cache: not cached)
        return False


def _other_hub() -> bool:
    """ModelScope / OpenMind chosen: their ids and caches follow their own rules, left to their clients."""
    return any(os.getenv(flag, 'False').lower() == 'true' for flag in HUB_ENV_FLAGS)


def _is_hub_repo_id(text: str) -> bool:
    if _other_hub():
        return True
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def model_path(text: str) -> str:
    """argparse ``type`` of the ``model_path`` positional: an existing path or a plausible repo id."""
    if os.path.exists(text):
        return text
    path_shaped = _looks_like_a_path(text)
    owner_here = not path_shaped and not _other_hub() and _owner_is_a_local_folder(text)
    if path_shaped or owner_here or not _is_hub_repo_id(text):
        note = (f' ({text.split("/")[0]}/ is a folder here, so this reads as a path; run from another folder to '
                f'fetch the hub id)' if owner_here else '')
        raise argparse.ArgumentTypeError(
            f'{text!r} is not an existing directory nor a model repo id (owner/name): give the folder '
            f'holding config.json, or a hub id such as JetLM/SDAR-8B-Chat-b32{note}')
    return text


def check_model_path_argument(parser: argparse.ArgumentParser) -> None:
    """Give the parser's ``model_path`` positional the :func:`model_path` check, reported as one line
    (``PROG: error: ...``, exit status 2) without the long usage block of the serve parser."""

    def checked_model_path(text: str) -> str:
        try:
            return model_path(text)
        except argparse.ArgumentTypeError as error:
            parser.exit(2, f'{parser.prog}: error: argument model_path: {error}\n')

    checked_model_path.__name__ = 'str'  # upstream's help formatter prints 'Type: <name>': keep 'str'

    for action in parser._actions:  # argparse has no public accessor; stable since Python 3.2
        if action.dest == 'model_path' and not action.option_strings:
            action.type = checked_model_path
            return
    raise RuntimeError(f'{parser.prog}: no model_path argument to check (upstream CLI changed)')


def cuda_problem(device: str | None) -> str | None:
    """Why ``device`` cannot run here, or None. Only ``cuda`` is checked (other backends own theirs)."""
    if device not in (None, 'cuda'):
        return None
    import torch
    if torch.version.cuda is None and getattr(torch.version, 'hip', None) is None:  # ROCm builds drive 'cuda' too
        return (f'this torch build has no CUDA (torch {torch.__version__}), and LMDeploy\'s engine needs a CUDA '
                f'GPU (--device cuda): run on a GPU machine with the CUDA build of torch '
                f'(pip install -r requirements/runtime_cuda.txt); the CPU environment runs the tests, the reference decode loop and the tools')
    if not torch.cuda.is_available():
        visible = os.getenv('CUDA_VISIBLE_DEVICES')
        hint = f' (CUDA_VISIBLE_DEVICES={visible!r})' if visible is not None else ''
        return (f'no CUDA GPU is visible to torch {torch.__version__}{hint}, and LMDeploy\'s engine needs one '
                f'(--device cuda): check nvidia-smi and CUDA_VISIBLE_DEVICES')
    return None


def require_cuda(args: argparse.Namespace, command: str) -> None:
    """SystemExit with one line when ``args.device`` is CUDA and no CUDA GPU can be used."""
    problem = cuda_problem(getattr(args, 'device', None))
    if problem is not None:
        raise SystemExit(f'{command}: error: {problem}')


def require_cuda_before_download(parser: argparse.ArgumentParser, command: str) -> None:
    """The CUDA check of :func:`require_cuda`, as soon as the sub-command's arguments are parsed, for a model path that
    is no local folder: upstream's entry point fetches a hub model between parsing and the runner (where the check
    also runs), so a machine without CUDA downloaded the checkpoint (16 GB for SDAR-8B) or, offline, ended in the hub
    client's traceback before the one line. argparse parses a sub-command with its parser's ``parse_known_args``."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = parse(args, namespace)
        path = getattr(namespace, 'model_path', None)
        if path is not None and not os.path.exists(path):
            require_cuda(namespace, command)
        return namespace, extras

    parser.parse_known_args = parse_known_args
