"""Write the KJV Bible as training / held-out text for the tiny model (run where Debian apt works).

    python -m lmdeploy_focus_dev.tools.tiny_dllm.prepare_kjv [--out .data/tiny_dllm] [--debs DIR]

Debian ships the King James Version (public domain) as ``bible-kjv-text``, in the compressed
format of its reader ``bible`` (package ``bible-kjv``). Both packages are fetched with
``apt-get download`` (nothing is installed), unpacked with ``dpkg-deb -x`` into a temporary folder,
and the unpacked reader prints every verse (``Ge1:1 In the beginning ...``). Output, one verse per
line without its reference (~4.3 MB in all):

* ``kjv_train.txt``: all chapters but the held-out ones;
* ``kjv_heldout.txt``: every 25th chapter (~3.7% of the text), used for text-continuation eval;
* ``SOURCE.json``: package versions and file hashes.

The GPU hosts have no network: this folder travels to them (``carry``).
"""
import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .data import HELDOUT_FILE, TRAIN_FILE

PACKAGES = ('bible-kjv', 'bible-kjv-text')
HELDOUT_EVERY = 25  # chapters
ALL_VERSES = 'Gen1:1-Rev22:21'
_VERSE = re.compile(r'^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$')


def download_debs(dest: Path) -> list[Path]:
    subprocess.run(['apt-get', 'download', *PACKAGES], cwd=dest, check=True, capture_output=True)
    return sorted(dest.glob('*.deb'))


def dump_verses(debs: list[Path], work: Path) -> list[str]:
    """``Book C:V text`` lines printed by the unpacked ``bible`` reader."""
    root = work / 'root'
    for deb in debs:
        subprocess.run(['dpkg-deb', '-x', str(deb), str(root)], check=True)
    reader, data = root / 'usr/bin/bible', root / 'usr/lib'
    # -f turns pretty-printing off: one verse per line, reference first
    result = subprocess.run([str(reader), '-f', '-p', str(data), ALL_VERSES], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=True, timeout=300)
    return result.stdout.splitlines()


def split_chapters(lines: list[str]) -> tuple[list[str], list[str]]:
    train, heldout = [], []
    chapter, last = -1, None
    for line in lines:
        match = _VERSE.match(line)
        if not match:
            raise ValueError(f'unexpected reader output line: {line[:80]!r}')
        book, number, _, text = match.groups()
        if (book, number) != last:
            chapter, last = chapter + 1, (book, number)
        (heldout if chapter % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append(text.strip())
    return train, heldout


def _deb_version(deb: Path) -> str:
    return subprocess.run(['dpkg-deb', '-W', '--showformat=${Package} ${Version}', str(deb)], capture_output=True,
                          text=True, check=True).stdout.strip()


def prepare(out: Path, debs_dir: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        debs = sorted(debs_dir.glob('*.deb')) if debs_dir else download_debs(work)
        if len(debs) < len(PACKAGES):
            raise FileNotFoundError(f'need the .deb files of {PACKAGES}, found {[d.name for d in debs]}')
        train, heldout = split_chapters(dump_verses(debs, work))
        source = {'packages': [_deb_version(d) for d in debs], 'heldout': f'every {HELDOUT_EVERY}th chapter'}
    for name, verses in ((TRAIN_FILE, train), (HELDOUT_FILE, heldout)):
        data = ('\n'.join(verses) + '\n').encode('utf-8')
        (out / name).write_bytes(data)
        source[name] = {'verses': len(verses), 'bytes': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
    (out / 'SOURCE.json').write_text(json.dumps(source, indent=2) + '\n', encoding='utf-8')
    return source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='.data/tiny_dllm', type=Path)
    parser.add_argument('--debs', type=Path, help='folder already holding the two .deb files (skips apt-get)')
    args = parser.parse_args(argv)
    print(json.dumps(prepare(args.out, args.debs), indent=2))


if __name__ == '__main__':
    main(sys.argv[1:])
