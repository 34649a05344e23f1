"""The HTTP gateway (`warren api`): a REST API, a webhook endpoint and a dashboard at /ui.

Needs the `api` extra: `pip install "warren[api]"`.
"""

from processor.api.app import create_app
from processor.api.auth import ApiConfig, load_config, new_token

__all__ = ["ApiConfig", "create_app", "load_config", "new_token"]
