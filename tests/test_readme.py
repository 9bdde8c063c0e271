"""The README is the repository's landing page (issue 23): what the add-on is, the commands
to run the demo (with the consumer that sends its mail) and the tests, and links that work.

Its first block says that mail needs the consumer and how to run it: right after the first
command (the demo), the text says so and the next command starts ``examcache-consumer``."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: the README when issue 23 was filed had 520 lines (a manual); the landing page stays short
MAX_LINES = 300


def commands(markdown: str) -> list[str]:
    return [c.strip() for c in re.findall(r"```sh\n(.*?)```", markdown, re.S)]


def first_block_problems(markdown: str) -> list[str]:
    """What the first block lacks: the demo's command, then the consumer's, with the text
    between them saying that mail waits for the consumer."""
    found = commands(markdown)
    if len(found) < 2:
        return ["fewer than two commands"]
    problems = []
    if "pserve" not in found[0]:
        problems.append("the first command does not run the demo")
    if not re.search(r"(^|/)examcache-consumer \S+\.ini$", found[1]):
        problems.append("the second command does not run examcache-consumer on an .ini")
    between = markdown.split(found[0], 1)[1].split(found[1], 1)[0]
    if not re.search(r"mail needs the consumer", between, re.I) or "waiting" not in between:
        problems.append("the text after the first command does not say mail needs the consumer")
    heading = markdown.find("\n## ")
    if heading != -1 and markdown.index(found[1]) > heading:
        problems.append("the consumer's command is not in the first block")
    return problems


def broken_links(markdown: str, base: Path) -> list[str]:
    """Relative link targets (inline links and images) that name no file of the repository."""
    targets = re.findall(r"\]\(\s*<?([^)\s>#]+)(?:#[^)\s>]*)?>?\)", markdown)
    return sorted({t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)
                   and not (base / t).exists()})


def test_the_first_block_says_mail_needs_the_consumer_and_how_to_run_it():
    assert first_block_problems(README.read_text()) == []


def test_the_first_block_check_can_fail():
    planted = ("# x\n\n```sh\npserve development.ini\n```\n\nEnjoy.\n\n"
               "```sh\npytest\n```\n\n## More\n")
    assert first_block_problems(planted) == [
        "the second command does not run examcache-consumer on an .ini",
        "the text after the first command does not say mail needs the consumer"]


def test_the_readme_is_a_landing_page():
    text = README.read_text()
    found = commands(text)
    assert any(c.startswith("python3 -m venv") and "pserve development.ini" in c for c in found)
    assert any(c.endswith(".venv/bin/pytest") for c in found)  # the tests, as .ci/run runs them
    for page in ("docs/quickstart.md", "docs/tutorial.md", "docs/configuration.md",
                 "CHANGES.rst"):
        assert f"]({page}" in text, page
    assert len(text.splitlines()) <= MAX_LINES


def test_every_relative_link_of_the_readme_names_a_file():
    assert broken_links(README.read_text(), ROOT) == []
    assert broken_links("[a](docs/nonesuch.md#x) [b](README.md) [c](https://e.example/)",
                        ROOT) == ["docs/nonesuch.md"]
