"""Sample playbooks and templates, shipped with Retain for `retain demo` and `retain init`."""

from pathlib import Path

SAMPLES_DIR = Path(__file__).parent
