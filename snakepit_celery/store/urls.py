"""Store URLs: the one parser, the one redaction, and the TLS spellings.

Every message, ``repr`` and log line that can hold a URL passes it through
``redact()`` first, so no password reaches a terminal or a log. ``parse_url``
cuts any store URL into its parts; ``parse_sentinel_url`` and
``parse_cluster_url`` read the host lists of the two multi-host schemes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from snakepit_celery.errors import ConfigError

__all__ = [
    "CERT_REQS",
    "ClusterURL",
    "SentinelURL",
    "StoreURL",
    "checked_scheme",
    "parse_cluster_url",
    "parse_sentinel_url",
    "parse_url",
    "redact",
    "schemes_text",
]

#: ``ssl_cert_reqs`` spellings Celery/kombu accept (any case) -> redis-py's value.
CERT_REQS: Mapping[str, str] = {
    "cert_required": "required",
    "cert_optional": "optional",
    "cert_none": "none",
    "required": "required",
    "optional": "optional",
    "none": "none",
}
_CERT_REQS_TEXT = "CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE, required, optional, none"

#: Query parameters whose value is a secret.
_SECRET_PARAM = re.compile(
    r"(?P<key>(?:^|(?<=[?&;\s'\"]))[\w.-]*(?:password|passwd|pwd|secret|token)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)
#: A run of text that may be one URL (message text is split at blanks and quotes).
_TOKEN = re.compile(r"[^\s'\"]+")


def _redact_token(token: str) -> str:
    if "@" not in token:
        return token
    head, sep, rest = token.partition("://")
    if not sep:
        head, rest = "", token
    userinfo, _, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{head}{sep}{user}:***@{hosts}" if colon else token


def redact(text: str) -> str:
    """``text`` with every URL password hidden: ``user:***@``, ``?password=***``.

    Works on a bare URL or on a message holding URLs, with or without
    ``scheme://``; a user name without a password (``amqp://guest@host``) stays.
    """
    text = _TOKEN.sub(lambda m: _redact_token(m.group(0)), text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('key')}***", text)


def schemes_text(schemes: Sequence[str]) -> str:
    """``redis://, rediss://, ...``: the allowed values of a store URL setting."""
    return ", ".join(f"{scheme}://" for scheme in schemes)


def checked_scheme(
    url: Any,
    schemes: Sequence[str],
    *,
    setting: str = "snakepit_store_url",
    allowed: str | None = None,
) -> str:
    """The lower-cased scheme of ``url``; ConfigError (URL redacted) unless it is in ``schemes``."""
    scheme = url.split("://", 1)[0].lower() if isinstance(url, str) and "://" in url else None
    if scheme not in schemes:
        shown = redact(url) if isinstance(url, str) else url
        raise ConfigError(setting, shown, schemes_text(schemes) if allowed is None else allowed)
    return str(scheme)


def _bad_url(url: str, allowed: str) -> ConfigError:
    return ConfigError("snakepit_store_url", redact(url), allowed)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A store URL cut into parts: credentials decoded, the rest as written."""

    scheme: str
    netloc: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None

    def option(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def flag(self, name: str) -> bool:
        """Query parameter ``name`` read as a boolean (``1``, ``true``, ``yes``, ``on``)."""
        return (self.option(name) or "false").lower() in ("1", "true", "yes", "on")

    def hosts(self, url: str, default_port: int, allowed: str) -> tuple[tuple[str, int], ...]:
        """The ``host:port`` list of the netloc (IPv6 in brackets); ConfigError when bad."""
        hosts: list[tuple[str, int]] = []
        for item in filter(None, self.netloc.split(",")):
            if item.startswith("["):
                host, _, port_text = item[1:].partition("]")
                port_text = port_text.lstrip(":")
            else:
                host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
            if port_text and not port_text.isdigit():
                raise _bad_url(url, allowed)
            port = int(port_text) if port_text else default_port
            if not host or not 0 < port < 65536:
                raise _bad_url(url, allowed)
            hosts.append((host, port))
        if not hosts:
            raise _bad_url(url, allowed)
        return tuple(hosts)

    def cert_reqs(self, url: str) -> str | None:
        """``ssl_cert_reqs`` in redis-py's spelling (None when absent); ConfigError when unknown."""
        value = self.option("ssl_cert_reqs")
        if value is None:
            return None
        mapped = CERT_REQS.get(value.strip().lower())
        if mapped is None:
            raise ConfigError(
                "snakepit_store_url",
                value,
                _CERT_REQS_TEXT,
                message=(
                    f"invalid ssl_cert_reqs {value!r} in snakepit_store_url {redact(url)!r} "
                    f"(allowed: {_CERT_REQS_TEXT})"
                ),
            )
        return mapped

    def without(self, url: str, name: str) -> str:
        """``url`` with query parameter ``name`` removed."""
        base, _, _ = url.partition("?")
        rest = {k: v for k, v in self.query.items() if k != name}
        return f"{base}?{urlencode(rest, doseq=True)}" if rest else base


def parse_url(url: str) -> StoreURL:
    """Cut ``scheme://[user[:password]@]netloc[/path][?query]`` into a ``StoreURL``."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    username = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return StoreURL(scheme.lower(), netloc, path, parse_qs(query), username, password)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """Parts of ``redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>/<db>``."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    ssl_cert_reqs: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """Parts of ``redis+cluster://[user:pass@]h1:7000,h2:7001[/0]``."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    ssl_cert_reqs: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL: sentinel hosts, master service name and db.

    ``?sentinel_password=...`` authenticates to the sentinels (the userinfo
    password is the master's); ``?ssl=true`` uses TLS to the master.
    """
    allowed = "redis+sentinel://[user:password@]host:26379[,host:port...]/<service>[/<db>]"
    parts = parse_url(url)
    hosts = parts.hosts(url, 26379, allowed)
    names = [p for p in parts.path.split("/") if p]
    db_text = names[1] if len(names) == 2 else parts.option("db") or "0"
    if not names or len(names) > 2 or not db_text.isdigit():
        raise _bad_url(url, allowed)
    return SentinelURL(
        hosts=hosts,
        service=unquote(names[0]),
        db=int(db_text),
        username=parts.username,
        password=parts.password,
        sentinel_password=parts.option("sentinel_password"),
        ssl=parts.flag("ssl"),
        ssl_cert_reqs=parts.cert_reqs(url),
    )


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse a ``redis+cluster://`` URL: startup nodes (Cluster has database 0 only)."""
    allowed = "redis+cluster://[user:password@]host:port[,host:port...][/0]"
    parts = parse_url(url)
    hosts = parts.hosts(url, 6379, allowed)
    if parts.path.strip("/") not in ("", "0"):
        raise _bad_url(url, allowed)
    return ClusterURL(
        hosts=hosts,
        username=parts.username,
        password=parts.password,
        ssl=parts.flag("ssl"),
        ssl_cert_reqs=parts.cert_reqs(url),
    )
