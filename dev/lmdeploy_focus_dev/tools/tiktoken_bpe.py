"""Turn a tiktoken-style rank table into the vocab + merges of a byte-level BPE model.

A tiktoken rank file lists byte strings with their rank and nothing else: the merge rules are
implicit (a token of rank r is what BPE produces by merging lower-ranked pairs). HF `tokenizers`
needs them explicit, so we recover each token's merge by re-running BPE on its own bytes with
only merges of lower rank allowed; the two pieces left are the pair that merges into it.
"""

import base64
from pathlib import Path


def read_rank_file(path: str | Path) -> dict[bytes, int]:
    """Read `base64-token rank` lines into {token bytes: rank}."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if not line.strip():
            continue
        encoded, rank = line.split()
        ranks[base64.b64decode(encoded)] = int(rank)
    return ranks


def byte_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level alphabet: every byte gets a printable, non-space unicode character.

    Bytes that already print as themselves keep their character; the rest (controls, space,
    a few Latin-1 gaps) are shifted to code points 256, 257, ... in byte order.
    """
    keeps_own_char = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
                      *range(ord('®'), ord('ÿ') + 1)]
    kept = set(keeps_own_char)
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in kept:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def _bpe_pieces(token: bytes, ranks: dict[bytes, int], below_rank: int) -> list[bytes]:
    """BPE over `token`'s bytes, applying only merges whose result ranks below `below_rank`."""
    pieces = [token[i:i + 1] for i in range(len(token))]
    while len(pieces) > 1:
        best_index, best_rank = -1, below_rank
        for i in range(len(pieces) - 1):
            rank = ranks.get(pieces[i] + pieces[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            break
        pieces[best_index:best_index + 2] = [pieces[best_index] + pieces[best_index + 1]]
    return pieces


def ranks_to_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab {unicode string: id} and merges in priority (= rank) order."""
    alphabet = byte_to_unicode()

    def as_unicode(token: bytes) -> str:
        return ''.join(alphabet[b] for b in token)

    vocab = {as_unicode(token): rank for token, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        pieces = _bpe_pieces(token, ranks, rank)
        if len(pieces) != 2:
            # a token BPE cannot reach from its own lower-ranked merges would be dead weight
            # in HF BPE as well; the Qwen table has none, so flag it loudly instead of guessing
            raise ValueError(f'token {token!r} (rank {rank}) does not split into one merge: {pieces}')
        merges.append((as_unicode(pieces[0]), as_unicode(pieces[1])))
    return vocab, merges
