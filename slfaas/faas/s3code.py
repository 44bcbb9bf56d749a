"""Function code from S3: ``Code.S3Bucket``/``S3Key``/``S3ObjectVersion`` fetched with boto3.

The endpoint is ``slfaas server --s3-endpoint-url`` if given, else whatever boto3 resolves by
itself (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` in the environment, a config profile, or
AWS). Credentials come from boto3's usual chain; with none at all the request goes unsigned
(a public bucket, or a local S3 that does not check). Any S3 failure is answered the way
Lambda answers it: ``InvalidParameterValueException: Error occurred while GetObject. S3 Error
Code: NoSuchKey. S3 Error Message: The specified key does not exist.``
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Mapping

from slfaas.errors import InvalidParameter

log = logging.getLogger(__name__)

MAX_CODE_BYTES = 2 << 30      # the largest code zip fetched (the store's unzipped limit too)
_BUCKET_RE = re.compile(r"^[0-9A-Za-z.\-_]{3,63}$")
_S3_FIELDS = ("S3Bucket", "S3Key", "S3ObjectVersion")


def wants_s3(code: Mapping[str, Any]) -> bool:
    return any(k in code for k in _S3_FIELDS)


def _validated(code: Mapping[str, Any]) -> tuple[str, str, str | None]:
    bucket, key, version = code.get("S3Bucket"), code.get("S3Key"), code.get("S3ObjectVersion")
    if bucket is None or key is None:
        raise InvalidParameter("Please provide a source for function code: S3Bucket and S3Key are both required "
                               "for code from S3.")
    if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket) or bucket.endswith("."):
        raise InvalidParameter(
            f"1 validation error detected: Value '{bucket}' at 's3Bucket' failed to satisfy constraint: Member must "
            f"satisfy regular expression pattern: ^[0-9A-Za-z\\.\\-_]*(?<!\\.)$")
    if not isinstance(key, str) or not 1 <= len(key) <= 1024:
        raise InvalidParameter(f"1 validation error detected: Value '{key}' at 's3Key' failed to satisfy "
                               f"constraint: Member must have length between 1 and 1024")
    if version is not None and (not isinstance(version, str) or not 1 <= len(version) <= 1024):
        raise InvalidParameter(f"1 validation error detected: Value '{version}' at 's3ObjectVersion' failed to "
                               f"satisfy constraint: Member must have length between 1 and 1024")
    return bucket, key, version


def _get_object_error(code: str, message: str) -> InvalidParameter:
    return InvalidParameter(f"Error occurred while GetObject. S3 Error Code: {code}. S3 Error Message: {message}")


class S3CodeFetcher:
    def __init__(self, endpoint_url: str | None = None, region: str = "us-east-1"):
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config

                session = boto3.session.Session()
                local = bool(self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                             or os.environ.get("AWS_ENDPOINT_URL"))
                options: dict[str, Any] = {
                    "retries": {"total_max_attempts": 2}, "connect_timeout": 5, "read_timeout": 120,
                    # a local S3 (moto, MinIO) has no wildcard DNS for bucket.host names
                    "s3": {"addressing_style": "path" if local else "auto"},
                }
                if session.get_credentials() is None:
                    options["signature_version"] = UNSIGNED
                self._client = session.client("s3", endpoint_url=self.endpoint_url,
                                              region_name=session.region_name or self.region,
                                              config=Config(**options))
            return self._client

    def fetch(self, code: Mapping[str, Any]) -> bytes:
        """The zip named by ``code``'s S3 fields, as bytes (CodeSha256/CodeSize are of these)."""
        bucket, key, version = _validated(code)
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version:
            params["VersionId"] = version
        try:
            obj = self._s3().get_object(**params)
            size = int(obj.get("ContentLength") or 0)
            if size > MAX_CODE_BYTES:
                obj["Body"].close()
                raise InvalidParameter(f"Unzipped size must be smaller than {MAX_CODE_BYTES} bytes; "
                                       f"s3://{bucket}/{key} is {size} bytes")
            data = obj["Body"].read(MAX_CODE_BYTES + 1)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code_ = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Unknown"))
            message = str(err.get("Message") or _DEFAULT_MESSAGES.get(code_, "S3 refused the request"))
            raise _get_object_error(code_, message)
        except BotoCoreError as exc:  # unreachable endpoint, no credentials, bad response...
            log.warning("fetching s3://%s/%s failed: %s", bucket, key, exc)
            raise _get_object_error(exc.__class__.__name__, str(exc))
        if len(data) > MAX_CODE_BYTES:
            raise InvalidParameter(f"Unzipped size must be smaller than {MAX_CODE_BYTES} bytes")
        log.info("fetched code s3://%s/%s%s (%d bytes)", bucket, key, f"?versionId={version}" if version else "",
                 len(data))
        return data


# HEAD-style errors come without a body; these are S3's own texts for the common ones
_DEFAULT_MESSAGES = {
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchKey": "The specified key does not exist.",
    "404": "Not Found",
    "403": "Access Denied",
    "AccessDenied": "Access Denied",
}
