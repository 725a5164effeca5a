"""A small client of Orthanc's REST API (standard library only): what the node needs, and its failures sorted.

Failures are sorted into what the node does about them: :class:`OrthancUnavailable` (wait and retry),
:class:`OrthancAuthError` (stop, exit 6), :class:`OrthancNotFound` and :class:`OrthancError`.
:func:`load_credentials` reads credentials from the environment or a file, never the command line;
:class:`Credentials` hides the password. TLS certificates are always verified.

See docs/deployment.md ("Faults, and what the node does") for each class and the credentials rules.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import CacError, SendError, UsageError

__all__ = ["Credentials", "OrthancAuthError", "OrthancClient", "OrthancError", "OrthancNotFound",
           "OrthancUnavailable", "USER_ENV", "PASSWORD_ENV", "load_credentials", "check_url"]

USER_ENV = "CAC_ORTHANC_USER"
PASSWORD_ENV = "CAC_ORTHANC_PASSWORD"


class OrthancError(CacError):
    """Orthanc refused a request (other than 401/403/404), or answered something that is not JSON."""

    exit_code = 6

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class OrthancUnavailable(OrthancError):
    """Orthanc cannot be reached just now; try again later."""


class OrthancAuthError(SendError):
    """Orthanc refused our credentials (401/403), or its TLS certificate is not trusted: retrying cannot help."""


class OrthancNotFound(OrthancError):
    """HTTP 404: the resource is not (or no longer) in Orthanc."""


@dataclass(frozen=True)
class Credentials:
    """HTTP basic-auth credentials; the password never shows in ``repr`` or ``str``."""

    user: str
    password: str = field(repr=False)
    source: str = ""  # where they came from (an environment variable or a file), for messages

    def header(self) -> str:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def __str__(self) -> str:
        return f"user {self.user!r} (from {self.source})"


def load_credentials(credentials_file: Optional[Path] = None, environ: Optional[dict] = None) -> Optional[Credentials]:
    """The credentials to use: from ``credentials_file`` (one line ``user:password``) or the environment.

    The file wins when given. Without either, None (an Orthanc without authentication). A user without a
    password (or the reverse) is a usage error, as is an unreadable or malformed file; messages never
    include the password.
    """
    env = os.environ if environ is None else environ
    if credentials_file is not None:
        path = Path(credentials_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--credentials {path}: cannot read it ({exc.strerror or exc}).") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) != 1 or ":" not in lines[0] or not lines[0].split(":", 1)[0] or not lines[0].split(":", 1)[1]:
            raise UsageError(f"--credentials {path}: expected one line 'user:password' (lines starting with # "
                             "are comments); the file's content is not shown here.")
        user, password = lines[0].split(":", 1)
        return Credentials(user, password, source=str(path))
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if not user and not password:
        return None
    if not user or not password:
        raise UsageError(f"set both {USER_ENV} and {PASSWORD_ENV} (or neither, for an Orthanc without "
                         f"authentication); only {USER_ENV if user else PASSWORD_ENV} is set.")
    return Credentials(user, password, source=f"${USER_ENV}/${PASSWORD_ENV}")


def check_url(url: str) -> str:
    """The Orthanc base URL without a trailing slash; a usage error when it is not http(s) or holds credentials."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must be Orthanc's http:// or https:// address (e.g. https://pacs.example.org:8042);"
                         f" got {_redact(url)!r}.")
    if parts.username is not None or parts.password is not None:
        raise UsageError("--url must not hold credentials (a command line is visible to every user in ps): give "
                         f"them in {USER_ENV} and {PASSWORD_ENV}, or in a file with --credentials FILE.")
    if parts.query or parts.fragment:
        raise UsageError(f"--url is Orthanc's base address, without ?query or #fragment; got {url!r}.")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _redact(url: str) -> str:
    """``url`` with any user:password@ part replaced (for messages about a URL we refuse)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = "***@" + host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class OrthancClient:
    """Orthanc's REST API at ``url`` (see :func:`check_url`), with optional basic auth and a private CA.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``https://orthanc.example.org:8042``.
    credentials : Credentials, optional
    ca_file : path, optional
        PEM file of the CA that signed Orthanc's certificate (else the system's CA store).
    timeout : float
        Seconds to wait for a connection and for each answer.
    """

    def __init__(self, url: str, credentials: Optional[Credentials] = None, *, ca_file: Optional[Path] = None,
                 timeout: float = 60.0) -> None:
        self.url = check_url(url)
        self._credentials = credentials
        self.timeout = timeout
        self.requests = 0  # requests sent (for tests and the log)
        if ca_file is not None and not Path(ca_file).is_file():
            raise UsageError(f"--ca-file {ca_file}: no such file.")
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self._ssl))

    def __repr__(self) -> str:
        return f"OrthancClient({self.url!r}, {self._credentials!s})" if self._credentials else \
            f"OrthancClient({self.url!r})"

    # --- requests -----------------------------------------------------------------------------------------

    def request(self, method: str, path: str, data: Optional[bytes] = None,
                content_type: Optional[str] = None) -> bytes:
        """The body of Orthanc's answer to ``method path``; raises the errors of this module."""
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self._credentials is not None:
            req.add_unredirected_header("Authorization", self._credentials.header())
        if content_type:
            req.add_header("Content-Type", content_type)
        what = f"{method} {self.url}{path}"
        self.requests += 1
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            body = b""
            try:
                body = exc.read()
            except Exception:  # noqa: BLE001 - the body only adds detail
                pass
            exc.close()
            raise self._http_error(exc.code, what, body) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError) or (
                    isinstance(reason, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(reason)):
                raise OrthancAuthError(
                    f"{self.url}: Orthanc's TLS certificate is not trusted ({getattr(reason, 'verify_message', '') or reason}); "
                    "give the CA that signed it with --ca-file PEM (certificates are always verified).") from None
            if isinstance(reason, ssl.SSLError):
                raise OrthancAuthError(f"{self.url}: TLS handshake failed ({reason}); is this an https:// Orthanc?") \
                    from None
            if isinstance(reason, socket.gaierror):
                raise OrthancUnavailable(f"{what}: the host name cannot be resolved ({reason.strerror}).") from None
            raise OrthancUnavailable(f"{what}: {_describe(reason)}.") from None
        except (TimeoutError, socket.timeout):
            raise OrthancUnavailable(f"{what}: no answer within {self.timeout:g} s.") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise OrthancUnavailable(f"{what}: {_describe(exc)}.") from None

    def _http_error(self, code: int, what: str, body: bytes) -> OrthancError:
        detail = ""
        try:
            doc = json.loads(body)
            detail = "; ".join(str(doc[k]) for k in ("Message", "Details") if doc.get(k))
        except (ValueError, TypeError, AttributeError):
            detail = body[:200].decode("utf-8", "replace").strip()
        if code in (401, 403):
            who = (f"with {self._credentials}" if self._credentials is not None
                   else f"without credentials (set {USER_ENV} and {PASSWORD_ENV}, or --credentials FILE)")
            hint = ("Check the user name and password (Orthanc's RegisteredUsers)." if code == 401 else
                    "Check that this user may use the REST API, and Orthanc's RemoteAccessAllowed when the node "
                    "runs on another machine.")
            return OrthancAuthError(f"{self.url}: Orthanc refused the request {who}: HTTP {code} "
                                    f"{'Unauthorized' if code == 401 else 'Forbidden'}. {hint}")
        if code == 404:
            return OrthancNotFound(f"{what}: not found (HTTP 404){': ' + detail if detail else ''}.", code)
        if code in (502, 503, 504):  # a proxy in front of a stopped Orthanc, or Orthanc busy
            return OrthancUnavailable(f"{what}: HTTP {code}{': ' + detail if detail else ''}.", code)
        return OrthancError(f"{what}: HTTP {code}{': ' + detail if detail else ''}.", code)

    def get_json(self, path: str) -> Any:
        body = self.request("GET", path)
        try:
            return json.loads(body)
        except ValueError:
            raise OrthancUnavailable(f"GET {self.url}{path}: the answer is not JSON (is this Orthanc's REST "
                                     "API?).") from None

    def get(self, path: str) -> bytes:
        return self.request("GET", path)

    def post_json(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        body = self.request("POST", path, data, content_type)
        try:
            return json.loads(body)
        except ValueError:
            raise OrthancError(f"POST {self.url}{path}: the answer is not JSON.") from None

    def put(self, path: str, data: bytes, content_type: str = "text/plain") -> None:
        self.request("PUT", path, data, content_type)

    def delete(self, path: str, missing_ok: bool = True) -> bool:
        """DELETE ``path``; False when it was not there (and ``missing_ok``)."""
        try:
            self.request("DELETE", path)
        except OrthancNotFound:
            if not missing_ok:
                raise
            return False
        return True

    # --- what the node uses -------------------------------------------------------------------------------

    def system(self) -> dict:
        return self.get_json("/system")

    def changes(self, since: int, limit: int = 200) -> dict:
        return self.get_json(f"/changes?since={int(since)}&limit={int(limit)}")

    def last_change(self) -> int:
        return int(self.get_json("/changes?last").get("Last", 0))

    def store(self, dicom: bytes) -> dict:
        """POST /instances: ``{"ID", "Status" ("Success" or "AlreadyStored"), "ParentStudy", ...}``."""
        answer = self.post_json("/instances", dicom, "application/dicom")
        if not isinstance(answer, dict) or "ID" not in answer:
            raise OrthancError(f"POST {self.url}/instances: unexpected answer {str(answer)[:200]!r}.")
        return answer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is Orthanc running, and is the port right?)"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "the connection was closed (Orthanc stopped or restarted?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer in time"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "Orthanc closed the connection without an answer (stopping or restarting?)"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text
