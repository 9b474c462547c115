"""The package as users install it: a wheel carries the shipped search spaces and the GTZAN
split lists, and a plain (non-editable) install resolves ``--space mrnet`` from them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mrnet_ray

REPO = Path(mrnet_ray.__file__).resolve().parent.parent


def test_wheel_install_finds_the_shipped_spaces(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("mrnet_ray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "search_spaces").glob("*.yaml")}
    assert {"mrnet.yaml", "demo.yaml", "smoke.yaml"} <= shipped
    assert {f"mrnet_ray/search_spaces/{n}" for n in shipped} <= names
    assert "mrnet_ray/datasets/splits/gtzan/test_filtered.txt" in names

    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    probe = (
        "import mrnet_ray; from mrnet_ray.search.spaces import resolve_space; "
        "from mrnet_ray.search.space import load_space; p = resolve_space('mrnet'); "
        "load_space(p); print(mrnet_ray.__file__); print(p)"
    )
    # The installed copy comes first on sys.path, ahead of this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    package, space = out.stdout.split()
    assert Path(package).is_relative_to(site) and Path(space).is_relative_to(site)
    assert Path(space).read_text() == (REPO / "search_spaces" / "mrnet.yaml").read_text()
