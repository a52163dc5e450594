"""Ray's token authentication, as a driver meets it.

Ray 2.60 guards every cluster port with a shared token when ``RAY_AUTH_MODE=token``. A
process finds the token where Ray looks for it, in this order: the ``RAY_AUTH_TOKEN``
variable, the file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``.

Ray itself turns token mode on for a driver only when it finds a local cluster by itself
(``ray.init()`` / ``"auto"``); given an explicit address (``RAY_ADDRESS``, ``host:port``,
``ray://``) it stays off, and the cluster refuses the connection. :func:`use_token_if_found`
closes that gap: when this process has a token and ``RAY_AUTH_MODE`` is unset, it turns
token mode on. An explicit ``RAY_AUTH_MODE`` is always left as the user set it.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "token")
    >>> write_token_file(path)                       # doctest: +ELLIPSIS
    '...'
    >>> oct(os.stat(path).st_mode & 0o777)
    '0o600'
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AUTH_MODE_ENV",
    "TOKEN_ENV",
    "TOKEN_PATH_ENV",
    "TokenSource",
    "find_token",
    "token_mode_on",
    "use_token_if_found",
    "write_token_file",
]

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


@dataclass(frozen=True)
class TokenSource:
    """Where this process's Ray auth token comes from (never the token itself).

    Attributes:
        where: ``"RAY_AUTH_TOKEN"``, or the path of the token file.
    """

    where: str


def default_token_path() -> Path:
    """``~/.ray/auth_token``: where Ray keeps a token when nothing else is named."""
    return Path.home() / ".ray" / "auth_token"


def find_token() -> TokenSource | None:
    """Where Ray would read this process's token from, or ``None`` when there is none.

    Example:
        >>> import os
        >>> os.environ["RAY_AUTH_TOKEN"] = "abc"
        >>> find_token()
        TokenSource(where='RAY_AUTH_TOKEN')
        >>> del os.environ["RAY_AUTH_TOKEN"]
    """
    if os.environ.get(TOKEN_ENV, "").strip():
        return TokenSource(TOKEN_ENV)
    named = os.environ.get(TOKEN_PATH_ENV)
    for path in ([Path(named).expanduser()] if named else []) + [default_token_path()]:
        try:
            if path.read_text().strip():
                return TokenSource(str(path))
        except OSError:
            continue
    return None


def token_mode_on() -> bool:
    """Whether this process speaks to Ray with its token (``RAY_AUTH_MODE=token``)."""
    return os.environ.get(AUTH_MODE_ENV, "").strip().lower() == "token"


def use_token_if_found() -> TokenSource | None:
    """Turn Ray's token mode on for this process when it has a token and the mode is unset.

    Returns:
        Where the token comes from, when token mode is on after this call; else ``None``.
    """
    source = find_token()
    if AUTH_MODE_ENV not in os.environ and source is not None:
        os.environ[AUTH_MODE_ENV] = "token"
    if source is not None:
        # Also when the mode was on already: Ray caches the first token it read, so a
        # notebook that fixes RAY_AUTH_TOKEN_PATH after a refused attempt would go on
        # sending the refused token until the kernel restarts.
        _reload_ray_auth_config()
    return source if token_mode_on() else None


def _reload_ray_auth_config() -> None:
    # Ray reads RAY_AUTH_MODE into its cached config (and caches the token) at import:
    # refresh both so this process sends the token from now on. Checked for Ray 2.60.
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - Ray without token authentication
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def write_token_file(path: str | os.PathLike[str]) -> str:
    """Write a new random token (256 bits, as Ray makes them) to ``path``, mode 0600.

    The file is created with its final mode (never readable by others, not even briefly);
    an existing file is replaced.

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, target)
    return str(target)
