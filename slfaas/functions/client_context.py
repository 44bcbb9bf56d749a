"""``context.client_context``, shaped like the AWS Lambda Python runtime's: an object with
``client`` (installation_id, app_title, app_version_name, app_version_code, app_package_name),
``custom`` and ``env``, or None when the caller sent no ClientContext."""
from __future__ import annotations

import json
from typing import Any


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, data: dict[str, Any]):
        for name in self.__slots__:
            setattr(self, name, data.get(name))


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data: dict[str, Any]):
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = data.get("custom")
        self.env = data.get("env")

    @classmethod
    def parse(cls, raw: str | None) -> "ClientContext | None":
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return cls(data) if isinstance(data, dict) else None
