"""The cold tier's segments on S3-compatible object storage (production).

`S3Segments` is a `SegmentStore` (storage/archive_segments.py) over the four
S3 calls the archive needs: PutObject, GetObject, ListObjectsV2 (by prefix,
paged) and DeleteObject, path-style (`<endpoint>/<bucket>/<key>`, which
SeaweedFS, MinIO, Ceph RGW and AWS S3 all serve), signed with AWS Signature
Version 4 on the aiohttp client chatplane already uses. Not boto3: it is
synchronous (a thread per call) and brings botocore's ~100 MB of service
models for four calls; aiobotocore pins one exact botocore release.

A segment is written whole by one PutObject, which S3 makes visible whole
or not at all, like the rename of `DirSegments`. Failures (connection,
timeout, 5xx, a refused signature) raise `StorageUnavailable`: the archiver's
pass fails and is retried by its supervisor, a read of an archived page
fails retriably. Credentials are static keys from the settings
(`archive.archive_s3_*`, docs/storage.md, "Archive").
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
import xml.etree.ElementTree as ET

import aiohttp
from yarl import URL

from chatplane.settings import Archive
from chatplane.storage.base import StorageUnavailable

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
TIMEOUT_S = 30.0


def _quote(value: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(value, safe=safe)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(method: str, host: str, path: str, query: dict[str, str], payload_sha256: str,
         *, access_key: str, secret_key: str, region: str,
         now: datetime.datetime) -> dict[str, str]:
    """The headers that authenticate one request (SigV4, service "s3").
    `path` is already URI-encoded, as it goes on the wire."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, path,
        "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())),
        "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
        signed, payload_sha256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {"Host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                             f"SignedHeaders={signed}, Signature={signature}"}


class S3Segments:
    """Segments as objects `<prefix><name>` in one bucket."""

    def __init__(self, endpoint: str, bucket: str, *, access_key: str, secret_key: str,
                 region: str = "us-east-1", prefix: str = "") -> None:
        url = URL(endpoint)
        self.base = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.explicit_port else "")
        self.host = url.raw_authority  # as aiohttp sends it
        self.bucket = bucket
        self.prefix = prefix
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, config: Archive) -> S3Segments:
        return cls(config.archive_s3_endpoint, config.archive_s3_bucket,
                   access_key=config.archive_s3_access_key,
                   secret_key=config.archive_s3_secret_key,
                   region=config.archive_s3_region, prefix=config.archive_s3_prefix)

    async def _request(self, method: str, key: str | None, *, query: dict[str, str] | None = None,
                       data: bytes = b"") -> tuple[int, bytes]:
        if self._session is None:  # made in the loop that uses it
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), auto_decompress=False)
        path = f"/{_quote(self.bucket)}" + (f"/{_quote(key, '-_.~/')}" if key is not None else "")
        query = query or {}
        headers = sign(method, self.host, path, query,
                       hashlib.sha256(data).hexdigest() if data else EMPTY_SHA256,
                       access_key=self.access_key, secret_key=self.secret_key,
                       region=self.region, now=datetime.datetime.now(datetime.UTC))
        qs = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        url = URL(f"{self.base}{path}" + (f"?{qs}" if qs else ""), encoded=True)
        try:
            async with self._session.request(method, url, data=data or None,
                                             headers=headers) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StorageUnavailable(f"archive object storage {self.base}: {exc!r}") from exc
        if response.status >= 300 and response.status != 404:
            raise StorageUnavailable(f"archive object storage {self.base}: {method} {path} ->"
                                     f" {response.status} {_s3_error(body)}")
        return response.status, body

    async def check(self) -> None:
        """At start: the bucket exists and the keys may list it."""
        status, _ = await self._request("GET", None, query={"list-type": "2", "max-keys": "1"})
        if status == 404:
            raise StorageUnavailable(f"archive bucket {self.bucket!r} does not exist at"
                                     f" {self.base}")

    async def create_bucket(self) -> None:
        """For tests and first setups: PUT the bucket (already there: fine)."""
        try:
            await self._request("PUT", None)
        except StorageUnavailable as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise

    async def put(self, name: str, data: bytes) -> None:
        status, _ = await self._request("PUT", self.prefix + name, data=data)
        if status == 404:
            raise StorageUnavailable(f"archive bucket {self.bucket!r} does not exist")

    async def get(self, name: str) -> bytes | None:
        status, body = await self._request("GET", self.prefix + name)
        return None if status == 404 else body

    async def names(self, prefix: str) -> list[str]:
        found: list[str] = []
        query = {"list-type": "2", "prefix": self.prefix + prefix}
        while True:
            status, body = await self._request("GET", None, query=query)
            if status == 404:
                raise StorageUnavailable(f"archive bucket {self.bucket!r} does not exist")
            root = ET.fromstring(body)
            for contents in root.iter(f"{S3_NS}Contents"):
                key = contents.findtext(f"{S3_NS}Key") or ""
                if key.startswith(self.prefix):
                    found.append(key[len(self.prefix):])
            token = root.findtext(f"{S3_NS}NextContinuationToken")
            if root.findtext(f"{S3_NS}IsTruncated") != "true" or not token:
                return found
            query = {**query, "continuation-token": token}

    async def delete(self, name: str) -> None:
        await self._request("DELETE", self.prefix + name)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _s3_error(body: bytes) -> str:
    """S3's error code and message, from its XML error body."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return body[:200].decode(errors="replace")
    code = root.findtext("Code") or root.findtext(f"{S3_NS}Code") or ""
    message = root.findtext("Message") or root.findtext(f"{S3_NS}Message") or ""
    return f"{code}: {message}".strip(": ")
