"""Settings: `RETAIN_*` environment variables, then `retain.toml` in the project folder, then defaults.

One typed model (`Settings`, on pydantic-settings, in model.py) holds every setting;
docs/CONFIG.md lists each table and key with its environment name. `load_settings` (load.py) is
the one place that reads them: `retain.toml` strictly (an unknown table or key is an error naming
it, a secret in the file is refused) and the environment through pydantic-settings' own source.
"""

from engine.config.load import CONFIG_FILE, load_settings
from engine.config.model import DEFAULT_URL, Cap, QuietHours, Settings, SmtpSettings

__all__ = ["CONFIG_FILE", "DEFAULT_URL", "Cap", "QuietHours", "Settings", "SmtpSettings",
           "load_settings"]
