"""The documentation site builds without a warning, every internal link resolves, and the
Python examples of its pages run and give the references' numbers.

The build is `make docs`'s: Sphinx with warnings as errors and nitpicky cross-references
(every ``:func:``/``:class:`` reference into spectral_jax must resolve), the notebooks
shown with their committed outputs (not executed). The built HTML is then read back: every
relative link and image must point at a file of the site and every ``#fragment`` at an id
in its page, and the equations must render offline (MathJax served from the site).

Every ```python block of the pages runs, each page's blocks in order in one namespace, in
a temporary working directory; a block is left out only by an HTML comment
``<!-- docs-test: skip: <reason> -->`` just above it, with the reason.
"""

import html.parser
import pathlib
import re
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest

import spectral_jax as sj

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- docs-test: skip: (?P<reason>\S.*?) -->")
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


class _Page(html.parser.HTMLParser):
    """The ids, links, images and scripts of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag == "a" and attributes.get("name"):
            self.ids.add(attributes["name"])
        if tag in ("a", "link") and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag == "img" and attributes.get("src"):
            self.links.append(attributes["src"])
        if tag == "script" and attributes.get("src"):
            self.scripts.append(attributes["src"])


def _parse(path: pathlib.Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(site: pathlib.Path) -> list[str]:
    """``page: link`` for every relative link or image of the site that does not resolve."""
    # The theme's templates under _static are no pages.
    paths = [p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts]
    pages = {path: _parse(path) for path in paths}
    broken = []
    for path, page in pages.items():
        for link in page.links + page.scripts:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:")):
                continue
            target = (path.parent / urllib.parse.unquote(parts.path)).resolve()
            if parts.path == "":
                target = path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: {link} (no file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if urllib.parse.unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {link} (no such id)")
    return broken


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """The site built as `make docs` builds it (about 20 s of CPU on a 2-core CPU)."""
    out = tmp_path_factory.mktemp("docs") / "html"
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n"]
    command += ["-q", "-d", str(out.parent / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and not result.stderr.strip(), (
        f"sphinx exited with {result.returncode}:\n{result.stderr[-6000:]}"
    )
    return out


def test_every_internal_link_resolves(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 15, [str(p.relative_to(site)) for p in pages]
    assert broken_links(site) == []


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "index.html").write_text(
        '<p id="top"><a href="other.html#here">a</a> <a href="#top">b</a>'
        ' <a href="missing.html">c</a> <img src="_static/figure.png">'
        ' <a href="https://example.org/x.html">d</a></p>'
    )
    (tmp_path / "other.html").write_text('<p id="there"></p>')
    assert broken_links(tmp_path) == [
        "index.html: other.html#here (no such id)",
        "index.html: missing.html (no file)",
        "index.html: _static/figure.png (no file)",
    ]


def test_every_module_of_the_package_is_documented(site):
    # A module renamed or added without its page entry would be missing from the site.
    import spectral_jax

    package_dir = pathlib.Path(spectral_jax.__file__).parent
    modules = {
        ".".join(path.relative_to(package_dir.parent).with_suffix("").parts)
        for path in package_dir.rglob("*.py")
        if not any(part.startswith("_") for part in path.relative_to(package_dir).parts)
    }
    modules |= {
        ".".join(path.parent.relative_to(package_dir.parent).parts)
        for path in package_dir.rglob("__init__.py")
    }
    text = "".join(path.read_text() for path in (site / "api").glob("*.html"))
    missing = sorted(m for m in modules if f'id="module-{m}"' not in text)
    assert missing == []


def test_equations_render_offline(site):
    page = site / "api" / "core.html"
    parsed = _parse(page)
    mathjax = [src for src in parsed.scripts if "mathjax" in src.lower()]
    assert mathjax == ["../_static/mathjax/tex-svg.js"]
    script = site / "_static" / "mathjax" / "tex-svg.js"
    assert script.is_file() and script.stat().st_size > 1_000_000
    assert not [src for src in parsed.scripts if urllib.parse.urlsplit(src).netloc]
    text = page.read_text()
    # The entry of ce_spectrum, with Eq. 5 as a display equation for MathJax.
    entry = text[text.index('id="spectral_jax.loss_spectrum.ce_spectrum"') :]
    entry = entry[: entry.index('class="sig sig-object py"')]  # up to the next entry
    assert '<div class="math' in entry and r"\mathcal{L}_{ce}(\nu)" in entry
    assert "spectral_jax.ce_spectrum" in entry  # its public name


def test_public_names_link_to_their_entries(site):
    # {func}`~spectral_jax.band_limit_of_grid` on the conventions page is a re-export.
    page = _parse(site / "conventions.html")
    assert "api/core.html#spectral_jax.bands.band_limit_of_grid" in page.links


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each ```python block of ``text``."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        marker = SKIP.fullmatch(before[-1].strip()) if before else None
        line = text[: match.start()].count("\n") + 1
        blocks.append((line, match["code"], marker["reason"] if marker else None))
    return blocks


def test_the_extractor_finds_blocks_and_skip_markers():
    text = (
        "```python\na = 1\n```\n<!-- docs-test: skip: slow -->\n```python\nb = 2\n```\n"
        "```bash\nls\n```\n<!-- docs-test: skip: -->\n```python\nc = a\n```\n"
    )
    assert python_blocks(text) == [
        (1, "a = 1\n", None),
        (5, "b = 2\n", "slow"),
        (12, "c = a\n", None),
    ]


def mean_ce(logits, labels) -> np.ndarray:
    """``[B]`` each image's mean pixel cross-entropy, in float64 NumPy."""
    logits = np.asarray(logits, np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.asarray(labels)[..., None], -1)[..., 0]
    return -picked.mean((1, 2))


def run_page(page: pathlib.Path, workdir: pathlib.Path) -> list[dict]:
    """The namespace after each block that runs, the page's blocks run in order in one
    namespace in ``workdir``."""
    scope: dict = {"__name__": "docs"}
    snapshots = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        for line, code, reason in python_blocks(page.read_text()):
            if reason is None:
                exec(compile(code, f"{page.relative_to(DOCS)}:{line}", "exec"), scope)  # noqa: S102
                snapshots.append(dict(scope))
    return snapshots


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(r is None for _, _, r in python_blocks(p.read_text()))],
    ids=lambda p: str(p.relative_to(DOCS)),
)
def test_page_examples_run(page, tmp_path):
    snapshots = run_page(page, tmp_path)
    name = page.relative_to(DOCS).as_posix()
    if name == "getting_started.md":
        arrays, on_model = snapshots
        # On arrays: the components of each image sum to its mean CE (float64 NumPy).
        scope = arrays
        ce = mean_ce(scope["logits"], scope["labels"])
        np.testing.assert_allclose(np.asarray(scope["spectrum"]).sum((1, 2)), ce, rtol=1e-5)
        np.testing.assert_allclose(scope["stats"].parseval_error(), 0.0, atol=1e-5)
        # On a model: the analysis's mean CE is the model's pixel CE (float64 NumPy).
        scope = on_model
        model_logits = scope["model"].apply(scope["variables"], scope["images"])
        np.testing.assert_allclose(
            scope["result"].mean_ce, mean_ce(model_logits, scope["labels"]).mean(), rtol=1e-4
        )
    if name == "api/jacobians.md":
        (scope,) = snapshots
        # The rows by jax.vjp are the full matrix's rows at the same frequencies.
        flat = sj.ravel_frequencies(scope["nu_i"], (16, 16))
        np.testing.assert_allclose(scope["rows"], np.asarray(scope["jac"])[flat], atol=1e-5)


def test_every_page_with_code_runs_some_of_it():
    skipped = {
        p.relative_to(DOCS).as_posix()
        for p in PAGES
        if (blocks := python_blocks(p.read_text())) and all(r is not None for _, _, r in blocks)
    }
    assert skipped <= {"api/data.md", "api/evaluation.md", "api/models.md"}, skipped
