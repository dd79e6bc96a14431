"""Long real texts available offline, picked deterministically from Debian packages on the machine.

Every document is a fixed, ordered list of files (joined with a blank line) so that a document reaches
8K+ SmolLM2 tokens. Nothing is searched or sampled at random: the same paths, in the same order, every
time; the SHA-256 of each file is recorded so a result can be tied to the exact bytes it was computed on.
A document whose files are missing is skipped by `available()` (other distributions ship other
versions), never replaced silently.

`$BLASST_TEXT_ROOT` names a directory that stands in for `/`: a file is read from
`$BLASST_TEXT_ROOT/usr/share/...` instead of `/usr/share/...`. It lets the texts travel to a machine
that lacks the packages (`eval/gpu_stage.sh` copies them); the recorded paths and SHA-256 stay those
of the original files, so a result computed there is tied to the same bytes.

    python3 eval/texts.py            # lists the documents, their files, sizes and (if transformers and
                                     # the model are installed) their token counts
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

# name -> (kind, files). Packages: base-files, vim-runtime, nodejs, libstdc++-12-dev, libstdc++6.
DOCUMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # legal English prose (base-files); GPL-3 alone is just under 8K tokens, GFDL-1.3 extends it
    "licenses": ("prose", ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GFDL-1.3")),
    # a user manual: Vim's scripting chapter (prose with code examples)
    "vim-manual": ("manual", ("/usr/share/vim/vim90/doc/usr_41.txt",)),
    # an API reference in Markdown: Node.js `process`
    "node-api": ("manual", ("/usr/share/doc/nodejs/api/process.md",)),
    # C++ source with long comments: libstdc++ <bits/stl_algo.h>
    "cpp-source": ("code", ("/usr/include/c++/12/bits/stl_algo.h",)),
    # Python source: libstdc++ pretty printers for gdb
    "py-source": ("code", ("/usr/share/gcc/python/libstdcxx/v6/printers.py",)),
}


@dataclass(frozen=True)
class Document:
    name: str
    kind: str
    files: tuple[str, ...]
    sha256: tuple[str, ...]
    text: str


def located(path: str) -> str:
    """Where `path` (an absolute path of DOCUMENTS) is read from: under $BLASST_TEXT_ROOT when set."""
    root = os.environ.get("BLASST_TEXT_ROOT")
    return os.path.join(root, path.lstrip("/")) if root else path


def _read(path: str) -> bytes:
    with open(located(path), "rb") as f:
        return f.read()


def available() -> list[str]:
    """Names of the documents whose files all exist, in the fixed order of DOCUMENTS."""
    return [n for n, (_, files) in DOCUMENTS.items() if all(os.path.isfile(located(p)) for p in files)]


def load(name: str) -> Document:
    kind, files = DOCUMENTS[name]
    blobs = [_read(p) for p in files]
    text = "\n\n".join(b.decode("utf-8", errors="replace") for b in blobs)
    return Document(name, kind, files, tuple(hashlib.sha256(b).hexdigest() for b in blobs), text)


def token_ids(tokenizer, name: str, n_tokens: int, offset: int = 0) -> list[int]:
    """The first `n_tokens` token ids of a document after skipping `offset` tokens (no BOS added:
    SmolLM2's tokenizer adds none). Raises if the document is too short."""
    ids = tokenizer(load(name).text, add_special_tokens=False)["input_ids"]
    if len(ids) < offset + n_tokens:
        raise ValueError(f"document {name!r} has {len(ids)} tokens, need {offset + n_tokens}")
    return ids[offset:offset + n_tokens]


def describe(name: str) -> dict:
    """Provenance for manifests: files, their SHA-256 and sizes."""
    d = load(name)
    return {"document": name, "kind": d.kind, "files": list(d.files), "sha256": list(d.sha256),
            "bytes": [os.path.getsize(located(p)) for p in d.files]}


if __name__ == "__main__":
    tok = None
    try:
        from load_smollm2 import load_tokenizer
        tok = load_tokenizer()
    except Exception as e:  # the listing is useful without the model too
        print(f"(no tokenizer: {e})")
    for n in available():
        d = load(n)
        ntok = len(tok(d.text, add_special_tokens=False)["input_ids"]) if tok else None
        print(f"{n:12s} {d.kind:7s} {len(d.text):7d} chars {ntok if ntok is not None else '?':>7} tokens  "
              + ", ".join(d.files))
