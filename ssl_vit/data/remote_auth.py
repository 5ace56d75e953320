"""Which bearer token an http(s) request may carry: each token goes only to the hosts it was given for.

Gated and private shards (ImageNet on the Hugging Face Hub, a lab's own server) need an `Authorization: Bearer`
header. A token sent to the wrong host is a leaked credential, so the choice is made per request URL, by its
origin (scheme, host, port), and never carried along a redirect to another origin:

- `HF_TOKEN` goes to `https://huggingface.co` and `https://hf.co`, and to the origin of `HF_ENDPOINT` when that is
  set (a Hub mirror; huggingface_hub sends its token there too). Never to any other host: the Hub's downloads
  redirect to signed CDN URLs that need no token;
- `SSL_VIT_HTTP_TOKEN` goes to the hosts listed in `SSL_VIT_HTTP_TOKEN_HOSTS` (comma-separated `host` or
  `host:port`, which mean https, or `http://host[:port]` to allow plain http), and to no other. It wins over
  `HF_TOKEN` where both apply.

Every hop of a redirect is decided again (`TokenRedirects`): urllib copies a request's ordinary headers to the
next hop, so the header is added as an unredirected one and only the hop's own rule can add it back. The
token never appears in a message.

A 401 or 403 answer gets one line saying which variable applies to that URL and whether it was set
(`advice`). `hf://` and `gs://` URLs read through fsspec take their credentials from their own libraries
(huggingface_hub reads HF_TOKEN or `hf auth login`'s file; gcsfs Google's application-default credentials).
"""
from __future__ import annotations

import os
import urllib.request
from urllib.parse import urlsplit

HF_TOKEN = "HF_TOKEN"
HF_ENDPOINT = "HF_ENDPOINT"
HTTP_TOKEN = "SSL_VIT_HTTP_TOKEN"
HTTP_TOKEN_HOSTS = "SSL_VIT_HTTP_TOKEN_HOSTS"
_HUB_ORIGINS = (("https", "huggingface.co", 443), ("https", "hf.co", 443))
_DEFAULT_PORT = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin(url: str) -> Origin | None:
    """(scheme, lower-case host, port) of an http(s) URL; None for anything else or a malformed one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORT[scheme]


def _hub_origins() -> tuple[Origin, ...]:
    endpoint = origin(os.environ.get("HF_ENDPOINT", "").strip())
    return _HUB_ORIGINS + ((endpoint,) if endpoint is not None else ())


def _listed_origins() -> tuple[Origin, ...]:
    """The origins `SSL_VIT_HTTP_TOKEN_HOSTS` lists: a bare `host[:port]` means https."""
    out = []
    for entry in os.environ.get("SSL_VIT_HTTP_TOKEN_HOSTS", "").split(","):
        entry = entry.strip()
        if entry:
            found = origin(entry if "://" in entry else f"https://{entry}")
            if found is not None:
                out.append(found)
    return tuple(out)


def token_variable(url: str) -> str | None:
    """The environment variable whose token `url` may carry, set or not; None: no token may go there."""
    where = origin(url)
    if where is None:
        return None
    if where in _listed_origins():
        return HTTP_TOKEN
    if where in _hub_origins():
        return HF_TOKEN
    return None


def bearer(url: str) -> tuple[str, str] | None:
    """(variable, token) for a request to `url`, when a token applies there and is set."""
    name = token_variable(url)
    if name == HTTP_TOKEN:
        token = os.environ.get("SSL_VIT_HTTP_TOKEN", "").strip()
    elif name == HF_TOKEN:
        token = os.environ.get("HF_TOKEN", "").strip()
    else:
        return None
    return (name, token) if token else None


def authorize(request: urllib.request.Request) -> str | None:
    """Add the bearer header `request`'s own URL may carry (unredirected); returns the variable used, if any."""
    found = bearer(request.full_url)
    if found is None:
        return None
    request.add_unredirected_header("Authorization", f"Bearer {found[1]}")
    return found[0]


class TokenRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, with the token decided again for each hop's URL (and dropped where it does not apply)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.headers.pop("Authorization", None)  # only ever an unredirected header; never carried by copying
            authorize(new)
        return new


def advice(url: str, status: int) -> str:
    """What to do about a 401/403 answer from `url`, in one line."""
    name = token_variable(url)
    if name is not None and bearer(url) is not None:
        hub = name == HF_TOKEN
        return (f"the token in {name} was refused (HTTP {status}): check that it is valid and may read this "
                + ("repository; for a gated dataset, accept its terms on its Hub page with the same account"
                   if hub else "file"))
    if name == HF_TOKEN:
        return (f"set {HF_TOKEN} to a Hugging Face access token with read access (for a gated dataset, accept its "
                "terms on its Hub page first)")
    if name == HTTP_TOKEN:
        return f"set {HTTP_TOKEN} to the token this server wants ({HTTP_TOKEN_HOSTS} already lists it)"
    where = origin(url)
    host = "the host" if where is None else (
        where[1] + ("" if where[2] == _DEFAULT_PORT[where[0]] else f":{where[2]}"))
    listed = host if where is None or where[0] == "https" else f"http://{host}"
    return (f"if the server wants a token, set {HTTP_TOKEN} to it and {HTTP_TOKEN_HOSTS}={listed} (a token is "
            "sent only to the hosts listed there; HF_TOKEN only to huggingface.co, hf.co and HF_ENDPOINT)")
