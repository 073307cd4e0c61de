"""Server configuration: the settings (:mod:`.settings`), the TOML file (:mod:`.file`), where each value came
from (:mod:`.layers`) and the checks made before a server starts (:mod:`.validate`).

Importing this package stays cheap (standard library only): ``cargohold serve --help`` and the client
commands load it.
"""

from cargohold.config.settings import ServerSettings, default_data_dir

__all__ = ["ServerSettings", "default_data_dir"]
