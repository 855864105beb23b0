"""The HTML report (``gradscope analyze RUN... --html``): one self-contained page, rendered by a real
headless Chromium (Debian's ``chromium``), showing the verdict, findings with remedies, the figures
and the block-grouped table for two runs side by side."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope.cli import main

pytest.importorskip("matplotlib")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND"]


def _train(path: Path, act: type[nn.Module], steps: int = 40, depth: int = 6) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), act()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False) as scope:
        for _ in range(steps):
            x = torch.randn(32, 16)
            loss = (model(x) - x[:, :1]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            scope.log(loss=loss)
            opt.step()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    _train(root / "sigmoid", nn.Sigmoid)
    _train(root / "leaky", nn.LeakyReLU)
    out = root / "report.html"
    result = CliRunner().invoke(main, ["analyze", str(root / "sigmoid"), str(root / "leaky"), "--html", str(out)])
    assert result.exit_code == 0, result.output
    return root, out


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href", "srcset", "action", "poster") and v]


def test_page_is_self_contained(report):
    _, out = report
    text = out.read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert parser.refs and all(r.startswith("data:image/png;base64,") for r in parser.refs)
    assert not re.search(r"url\(|@import|https?://", text.split("<body", 1)[0])  # nothing in the style


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed: apt-get install -y chromium (make install-dev does "
                "it where apt-get is available)")


def _run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_chromium_renders_both_runs_side_by_side(report, tmp_path):
    root, out = report
    dom = _run_chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    for section in ("Verdict", "Findings and remedies", "Gradient flow", "Norm by depth",
                    "Global norm and loss", "Activation health", "Layers by block"):
        assert f">{section}</h2>" in page, section
    assert page.count('class="run"') == 2 and ">sigmoid<" in page and ">leaky<" in page
    # the verdicts, in the order of the runs: the sigmoid stack's gradients vanish, the leaky one is healthy
    verdicts = re.findall(r'class="verdict (v-\w+)">([^<]+)<', page)
    assert [v for v, _ in verdicts] == ["v-warning", "v-healthy"] or verdicts[0][0] == "v-error", verdicts
    findings = page.split(">Findings and remedies</h2>", 1)[1].split("</h2>", 1)[0]
    sigmoid_cell, leaky_cell = findings.split('<div class="cell">')[1:3]
    assert "vanishing_gradient" in sigmoid_cell and "Remedy:" in sigmoid_cell
    assert "No findings" in leaky_cell
    assert page.count("data:image/png;base64,") == 8  # four figures per run
    table = page.split(">Layers by block</h2>", 1)[1]
    assert table.count("<details>") >= 2 * 7  # one per Linear layer of each run


def test_screenshot_shows_the_figures(report, tmp_path):
    from matplotlib.image import imread

    _, out = report
    shot = tmp_path / "shot.png"
    res = _run_chromium(tmp_path, "--window-size=1400,2400", f"--screenshot={shot}", out.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1400)
    # the heatmaps and curves drew: many saturated (coloured) pixels, not a blank or broken-image page
    spread = img.max(axis=2) - img.min(axis=2)
    assert (spread > 0.3).mean() > 0.02
    # the two columns each hold a figure: coloured pixels on the left half and on the right half
    left, right = spread[:, :700], spread[:, 700:]
    assert (left > 0.3).mean() > 0.01 and (right > 0.3).mean() > 0.01
    # negative control: the same page with its images corrupted fails the colour check
    broken = tmp_path / "broken.html"
    broken.write_text(out.read_text(encoding="utf-8").replace("base64,", "base64,QUJD"), encoding="utf-8")
    shot2 = tmp_path / "broken.png"
    _run_chromium(tmp_path, "--window-size=1400,2400", f"--screenshot={shot2}", broken.as_uri())
    img2 = imread(shot2)[..., :3]
    assert ((img2.max(axis=2) - img2.min(axis=2)) > 0.3).mean() < 0.01


def test_html_bad_paths_exit_2(report, tmp_path):
    root, _ = report
    res = CliRunner().invoke(main, ["analyze", str(root / "leaky"), "--html", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output
