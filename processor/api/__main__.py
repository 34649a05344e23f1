"""`python -m processor.api`: rewrite the checked-in OpenAPI document from the app."""

import json

from processor.api.app import OPENAPI_PATH, openapi_document

OPENAPI_PATH.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
print(f"wrote {OPENAPI_PATH}")
