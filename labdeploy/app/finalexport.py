"""The final export: what a destroy with its data saves, after the app stops and before anything goes.

`destroy(app, server, confirm=True, remove_data=True, final_export=FinalExport("final", mode="both",
files=True, logs=True))` stops the app, exports every table into the folder, downloads the app's
files and container logs there, and only then deletes (`final_export="final"` is
`FinalExport("final")`: the regular archive alone). The panel's "Export, then destroy" and the
CLI's `destroy --final-export DIR` both use it; a failure here starts the app again and deletes
nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

from .. import export as data_out
from ..data.archive import ExportData, ensure_folder
from ..errors import ValidationError
from ..progress import LogLine, Reporter


@dataclass(frozen=True)
class FinalExport:
    """Where the final export goes and what it holds.

    `mode` is the export's ("regular", "anonymous", "both"); a regular archive is saved in every
    mode, because it is the copy of the data that the destroy relies on. `parquet` adds Parquet
    folders, `files` the app's persistent files (`<app>-files/`), `logs` its container logs
    (`<app>-logs.txt`). `on_exported(data)` is called as soon as the export is saved, so a front
    end can show the tables even if a later step of the destroy fails.
    """

    folder: Union[str, os.PathLike]
    mode: str = "regular"
    parquet: bool = False
    files: bool = False
    logs: bool = False
    on_exported: Optional[Callable[[ExportData], None]] = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, value: Union["FinalExport", str, os.PathLike]) -> "FinalExport":
        """Checked, with its folder made (a folder that can't be written is refused before anything stops)."""
        options = value if isinstance(value, FinalExport) else cls(value)
        if options.mode not in data_out.MODES:
            raise ValidationError(f"Unknown export mode {options.mode!r}.", f"Use one of {', '.join(data_out.MODES)}.",
                                  code="invalid.export.mode")
        return replace(options, folder=ensure_folder(options.folder))

    def steps(self) -> list[str]:
        """The progress steps the final export reports, in order."""
        return ["Read the tables", "Check row counts", *(["Anonymise"] if self.mode != "regular" else []),
                "Write the archive", *(["Write Parquet"] if self.parquet else []),
                *(["Download files"] if self.files else []), *(["Download logs"] if self.logs else [])]


@dataclass
class Saved:
    data: ExportData  # the regular tables; `.anonymous` holds the anonymised ones unless mode is "regular"
    paths: list = field(default_factory=list)  # archives, then the files folder and the logs file


def take(app: str, remote, options: FinalExport, *, has_containers: bool, reporter: Reporter) -> Saved:
    """Export every table into the folder, then the files and logs asked for (the app is stopped)."""
    folder = Path(options.folder)
    mode = "both" if options.mode == "anonymous" else options.mode  # the regular copy is always kept
    data = data_out.export(app, remote, mode=mode, save_to=folder, parquet=options.parquet, reporter=reporter)
    saved = Saved(data, list(dict.fromkeys(data.paths)))
    if options.on_exported is not None:
        options.on_exported(data)
    if options.files:
        data_out.download_files(app, remote, folder / f"{app}-files", reporter=reporter)
        saved.paths.append(str(folder / f"{app}-files"))
    if options.logs and has_containers:
        saved.paths.append(str(data_out.download_logs(app, remote, folder, reporter=reporter)))
    elif options.logs:
        reporter(LogLine(f"{app} has no containers left: no logs to download", "destroy"))
    return saved
