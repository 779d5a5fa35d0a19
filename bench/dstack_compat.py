"""How many of dstack's own configuration files Stackyard accepts, and why it refuses the others.

Usage: .venv/bin/python bench/dstack_compat.py PATH [--list]

PATH is a checkout of https://github.com/dstackai/dstack (or any folder): every ``*.dstack.yml`` file and
every YAML block of a Markdown page whose top-level ``type`` is a dstack configuration type is parsed by
the code the apply endpoint runs (``configurations.loading``). Valueless ``env`` entries get a value, as
the CLI sends the user's shell values. Prints the counts, and the refusals grouped by their message.
Nothing of dstack's is kept: the files are read where they are.
"""

import collections
import os
import pathlib
import re
import sys

import django

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

import yaml  # noqa: E402

from configurations.loading import load_document, parse_configuration  # noqa: E402
from core.specs import SpecError  # noqa: E402

TYPES = ("task", "service", "dev-environment", "fleet", "volume", "gateway")
_BLOCK_RE = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documents(root: pathlib.Path):
    """(where, text) of every dstack configuration under ``root``."""
    for path in sorted(root.rglob("*.dstack.yml")):
        yield str(path.relative_to(root)), path.read_text(errors="replace")
    for path in sorted(root.rglob("*.md")):
        for i, match in enumerate(_BLOCK_RE.finditer(path.read_text(errors="replace"))):
            text = match.group(1)
            if re.search(rf"^type:\s*({'|'.join(TYPES)})\s*$", text, re.MULTILINE):
                yield f"{path.relative_to(root)}#{i}", text


def shell_env(doc: dict) -> dict:
    """A value for each valueless env entry, as ``stackyard apply`` takes them from the user's shell."""
    env = doc.get("env")
    names = [e for e in env if isinstance(e, str) and "=" not in e] if isinstance(env, list) else (
        [k for k, v in env.items() if v is None] if isinstance(env, dict) else [])
    return {name: "from-the-shell" for name in names}


def check(text: str) -> str | None:
    """None when accepted, else the refusal as the API would word it."""
    try:
        doc = load_document(text, "application/yaml")
        parse_configuration(doc, shell_env(doc))
    except SpecError as err:
        return str(err)
    except yaml.YAMLError as err:  # pragma: no cover - load_document turns these into SpecError
        return f"YAML: {err}"
    return None


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    results = [(where, check(text)) for where, text in documents(root)]
    refused = [(where, why) for where, why in results if why]
    print(f"{len(results)} configurations, {len(results) - len(refused)} accepted, {len(refused)} refused")
    reasons = collections.Counter(re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", why)[:90] for _, why in refused)
    for reason, count in reasons.most_common():
        print(f"{count:4d}  {reason}")
    if "--list" in sys.argv:
        for where, why in refused:
            print(f"  {where}: {why}")


if __name__ == "__main__":
    main()
