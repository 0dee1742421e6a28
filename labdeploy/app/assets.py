"""The experiment's `assets/` folder on the server: ~/dallinger-data/<app>/assets, swapped in
whole in one command, so the app never serves a half-copied folder. Links inside the folder
are left out; a link that leads out of it is refused (nothing outside travels)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from ..commands import appstate
from ..experiment import folder
from ..progress import LogLine, Reporter
from ..server import layout


def upload(remote, app: str, experiment_dir: Path, reporter: Reporter) -> int:
    """experiment/assets -> ~/dallinger-data/<app>/assets; returns the number of files."""
    src = experiment_dir / "assets"
    if src.is_symlink():
        folder.link_target(experiment_dir.resolve(), "assets")  # refused if it leads out of the folder
    if not src.is_dir():
        remote.makedirs(layout.app_data(app), 0o755)  # the app's data folder, mounted into it
        return 0
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.rglob("*")):
            if path.is_symlink():
                continue  # never follow links out of the experiment folder
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
            count += path.is_file()
    remote.run(appstate.swap_assets(app), stdin=buf.getvalue(), timeout=600)
    reporter(LogLine(f"uploaded {count} asset file(s) to ~/{layout.app_data(app)}/assets", "assets"))
    return count
