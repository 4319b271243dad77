"""The process environment and `.env` (secrets live only there), and the database URL policy."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from core.errors import ConfigError
from core.paths import PROJECT_ROOT


@dataclass(frozen=True)
class Environment:
    """Values from the process environment and `.env` (process environment wins)."""
    values: dict[str, str] = field(default_factory=dict)
    env_file: Path | None = None

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.values.get(key)
        return default if value in (None, "") else value

    def flag(self, key: str) -> bool:
        return (self.get(key) or "").strip().lower() in {"1", "true", "yes", "on"}

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value this environment carries, for redaction."""
        found: list[str] = []
        for key, value in self.values.items():
            if value and any(word in key.upper() for word in SECRET_KEY_WORDS):
                found.append(value)
        url = self.get("DATABASE_URL")
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:                  # malformed: check_database_url says so; keep the whole URL secret
                password = url
            if password:
                found.append(password)
                found.append(unquote(password))
        return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))


SECRET_KEY_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "PWD")

ENV_KEYS = (
    "DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
    "MOOMOO_HOST", "MOOMOO_PORT", "MOOMOO_TRADE_PASSWORD",
    "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_BASE_URL", "ALPACA_DATA_URL", "ALPACA_STREAM_URL",
    "AGENT_ID", "LOG_LEVEL", "CATALYST_BROKER", "CATALYST_ALLOW_INSECURE_DB", "CATALYST_CONFIG",
    "CATALYST_VAR_DIR", "CATALYST_LOG_DIR",
)


def load_environment(env_file: Path | None = None, environ: dict[str, str] | None = None) -> Environment:
    """Read `.env` (refusing one readable by group or others) and overlay the process environment."""
    environ = dict(os.environ if environ is None else environ)
    if env_file is None:
        named = environ.get("CATALYST_ENV_FILE")
        env_file = Path(named) if named else PROJECT_ROOT / ".env"
    values: dict[str, str] = {}
    if env_file.exists():
        mode = env_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{env_file}: refusing to read a secrets file that group or others can access "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {env_file}")
        from dotenv import dotenv_values
        try:
            values = {k: v for k, v in dotenv_values(env_file, encoding="utf-8").items() if v is not None}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{env_file}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                              f"save it as UTF-8") from None
    else:
        env_file = None
    for key, value in environ.items():
        if key in ENV_KEYS or key.startswith(("CATALYST_", "ALPACA_", "MOOMOO_", "ANTHROPIC_")):
            values[key] = value
    return Environment(values=values, env_file=env_file)


# ---------------------------------------------------------------- database URL policy

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
SECURE_SSLMODES = {"require", "verify-ca", "verify-full"}


def check_database_url(url: str, allow_insecure: bool) -> None:
    """Refuse a malformed DATABASE_URL, and a remote database without TLS unless explicitly allowed
    (CATALYST_ALLOW_INSECURE_DB=1). The URL is read as the driver reads it: a parameter given twice is refused
    (asyncpg takes the last one, a naive check the first), and every host counts — the URL's and any `host=`."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL is malformed: {exc}") from None
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ConfigError(f"DATABASE_URL must start with postgresql:// (got scheme {parts.scheme!r})")
    for item in parts.netloc.rpartition("@")[2].split(","):
        port = item.rpartition("]")[2] if item.startswith("[") else item
        port = port.partition(":")[2] if ":" in port else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"DATABASE_URL is malformed: port {port!r} is not a number from 1 to 65535")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    twice = sorted({k for k in names if names.count(k) > 1})
    if twice:
        raise ConfigError(f"DATABASE_URL gives {', '.join(twice)} more than once; give each parameter once")
    query = dict(pairs)
    hosts = [h for h in _netloc_hosts(parts.netloc) if h] + [h for h in query.get("host", "").split(",") if h]
    remote = [h for h in hosts if not (h.startswith("/") or h.strip("[]") in LOCAL_HOSTS)]
    if not remote:
        return
    sslmode = query.get("sslmode", "")
    if sslmode not in SECURE_SSLMODES and not allow_insecure:
        raise ConfigError(
            f"DATABASE_URL points at remote host {remote[0]!r} without TLS: add ?sslmode=require (or verify-full), "
            f"or set CATALYST_ALLOW_INSECURE_DB=1 to accept an unencrypted connection")


def _netloc_hosts(netloc: str) -> list[str]:
    """Hosts of a netloc, multi-host lists included ('u:p@h1:5432,h2' -> ['h1', 'h2'])."""
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("["):
            hosts.append(item[1:item.find("]")] if "]" in item else item[1:])
        else:
            hosts.append(item.partition(":")[0])
    return [unquote(h) for h in hosts]
