"""Where an input image is, and the URL DashScope is given for it.

* A public http(s) URL goes as it is.
* ``oss://bucket/key``, a private OSS object, is signed (a V4 presigned GET, see
  `airflow_provider_aitryon.oss`) with an Airflow ``oss`` connection just before pre-flight and
  the submit. The signed URL exists only in the request: logs, XCom, the registry, manifests and
  errors show the ``oss://`` URI, and the request fingerprint (no double charge) is taken from the
  unsigned call, so re-signing on a retry does not make the same request look new.
* A local path or ``file://`` URI (opt-in, for development) is uploaded to DashScope's temporary
  storage by an uploader the caller passes; the submit then carries
  ``X-DashScope-OssResourceResolve: enable`` so DashScope resolves the ``oss://`` URL it got back.

`sendable` (sync, for operators) and `asendable` (for triggers) turn a built `ApiCall` into a
`Sendable`: the call as sent, and how each sent URL is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from airflow_provider_aitryon import api
from airflow_provider_aitryon.downloads import AddressPolicy, DownloadBounds, DownloadError, fetch
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.image_rules import MAX_BYTES as MAX_INPUT_BYTES
from airflow_provider_aitryon.oss.presign import DEFAULT_EXPIRES, presign_get
from airflow_provider_aitryon.oss.settings import DEFAULT_CONN_ID as DEFAULT_OSS_CONN_ID
from airflow_provider_aitryon.oss.settings import OssSettings, aload_settings, load_settings
from airflow_provider_aitryon.oss.uri import is_oss_uri
from airflow_provider_aitryon.uploads import OSS_RESOURCE_RESOLVE_HEADER, is_temporary_url, local_image_path

# Uploads a local file for a model and returns the oss:// URL DashScope's storage gave it.
Uploader = Callable[[str, str, str], str]  # (field name, local path, model) -> oss:// URL

__all__ = [
    "DEFAULT_EXPIRES",
    "DEFAULT_OSS_CONN_ID",
    "OSS_RESOURCE_RESOLVE_HEADER",
    "Sendable",
    "Uploader",
    "asendable",
    "read_image",
    "sendable",
]


@dataclass(frozen=True)
class Sendable:
    """A submit as it is sent, and what users see of it.

    :param call: the call with every input a URL DashScope can fetch (signed where needed).
    :param shown: sent URL -> how messages show it (the ``oss://`` URI of a signed URL).
    :param get_only: sent URLs signed for GET: a HEAD on them is refused by OSS.
    :param checked: sent URLs whose images were already checked (local files, before their upload):
        pre-flight has nothing to fetch there, only DashScope can read them.
    """

    call: api.ApiCall
    shown: Mapping[str, str]
    get_only: frozenset[str]
    checked: frozenset[str] = frozenset()


def sendable(
    call: api.ApiCall,
    *,
    oss_conn_id: str = DEFAULT_OSS_CONN_ID,
    expires: timedelta = DEFAULT_EXPIRES,
    uploader: Uploader | None = None,
) -> Sendable:
    """Sign the call's ``oss://`` inputs and upload its local files; the call as it will be sent.

    The OSS connection is read only when an input is ``oss://``.

    :param call: a submit built by `api.tryon_call` or `api.refiner_call`.
    :param oss_conn_id: the Airflow ``oss`` connection whose AccessKey signs.
    :param expires: how long a signed URL stays valid (queue wait and retries included).
    :param uploader: uploads local files; None refuses them in one sentence.
    """
    settings: list[OssSettings] = []

    def sign(uri: str) -> str:
        if not settings:
            settings.append(load_settings(oss_conn_id))
        return presign_get(uri, expires=expires, settings=settings[0])

    return _resolve(call, sign, uploader)


async def asendable(
    call: api.ApiCall,
    *,
    oss_conn_id: str = DEFAULT_OSS_CONN_ID,
    expires: timedelta = DEFAULT_EXPIRES,
    settings: OssSettings | None = None,
) -> Sendable:
    """`sendable` for an event loop: the connection is read without blocking it; signing is local.

    Local files are refused here: uploads belong to the operators (development only).

    :param call: the submit to send.
    :param oss_conn_id: the Airflow ``oss`` connection whose AccessKey signs.
    :param expires: how long a signed URL stays valid.
    :param settings: the connection, already read (a trigger reads it once for all its items).
    """
    if settings is None and any(is_oss_uri(u) and not is_temporary_url(u) for u in _inputs(call).values()):
        settings = await aload_settings(oss_conn_id)
    loaded = settings

    def sign(uri: str) -> str:
        assert loaded is not None
        return presign_get(uri, expires=expires, settings=loaded)

    return _resolve(call, sign, None)


def _inputs(call: api.ApiCall) -> dict[str, str]:
    inputs = (call.body or {}).get("input") or {}
    if not isinstance(inputs, Mapping):
        return {}
    return {name: value for name, value in inputs.items() if isinstance(value, str) and name.endswith("_url")}


def _resolve(call: api.ApiCall, sign: Callable[[str], str], uploader: Uploader | None) -> Sendable:
    inputs = _inputs(call)
    model = str((call.body or {}).get("model"))
    sent: dict[str, str] = {}
    shown: dict[str, str] = {}
    get_only: set[str] = set()
    checked: set[str] = set()
    uploaded = False
    for name, value in inputs.items():
        if is_temporary_url(value):
            # Already in DashScope's temporary storage (an earlier upload, or the SDK's): sent as it
            # is, for DashScope to resolve; nobody else can read it.
            url, uploaded = value, True
            checked.add(url)
        elif is_oss_uri(value):
            url = sign(value)
            get_only.add(url)
        elif api.is_local_reference(value):
            if uploader is None:
                raise DashScopeConfigError(
                    f"{name} is a local file ({value.strip()}); DashScope cannot read it: set "
                    "upload_local_files=True to upload it to DashScope's temporary storage (development only), or "
                    "pass an http(s) URL or an oss:// URI."
                )
            url = uploader(name, value.strip(), model)  # the uploader checks the image first
            uploaded = True
            checked.add(url)
        else:
            continue
        sent[name] = url
        shown[url] = value
    if not sent:
        return Sendable(call, {}, frozenset())
    body: dict[str, Any] = dict(call.body or {})
    body["input"] = {**body.get("input", {}), **sent}
    headers = {**call.extra_headers, **(OSS_RESOURCE_RESOLVE_HEADER if uploaded else {})}
    return Sendable(replace(call, body=body, extra_headers=headers), shown, frozenset(get_only), frozenset(checked))


def read_image(
    ref: str,
    *,
    field_name: str = "image",
    oss_conn_id: str = DEFAULT_OSS_CONN_ID,
    policy: AddressPolicy | None = None,
    max_bytes: int = MAX_INPUT_BYTES,
    deadline: float = 60.0,
) -> bytes:
    """The bytes of an input image wherever it is, bounded: for a contact sheet or a gallery.

    :param ref: an http(s) URL, ``oss://bucket/key`` or a local path / ``file://`` URI.
    :param field_name: the argument's name, for messages.
    :param oss_conn_id: the ``oss`` connection that reads ``oss://`` objects.
    :param policy: which addresses an http(s) URL may resolve to (`preflight.input_policy`).
    :param max_bytes: largest image accepted (DashScope's input limit by default).
    :param deadline: seconds the whole download may take.
    :raises DashScopeConfigError: the image is missing, too large or cannot be read, in one sentence.
    """
    if is_oss_uri(ref) or api.is_local_reference(ref):
        from airflow.sdk import ObjectStoragePath

        try:
            if is_oss_uri(ref):
                path = ObjectStoragePath(ref.strip(), conn_id=oss_conn_id)
                # Not ObjectStoragePath.open: it reports every read to hook lineage, and a gallery
                # of a partition reads thousands of inputs (lineage is reported per partition).
                with path.fs.open(path.path, "rb") as remote:
                    data = remote.read(max_bytes + 1)
            else:
                with open(str(local_image_path(ref, field=field_name)), "rb") as local:
                    data = local.read(max_bytes + 1)
        except OSError as exc:
            raise DashScopeConfigError(f"{field_name} {ref} cannot be read ({exc}); check that it exists.") from None
    else:
        bounds = DownloadBounds(connect_timeout=10.0, read_timeout=30.0, deadline=deadline, max_bytes=max_bytes)
        try:
            reply = fetch(ref, bounds=bounds, policy=policy)
        except DownloadError as exc:
            raise DashScopeConfigError(f"{field_name} {api.shown_url(ref)} {exc.reason}.") from None
        if not 200 <= reply.status < 300:
            raise DashScopeConfigError(f"{field_name} {api.shown_url(ref)} answered HTTP {reply.status}.")
        data = reply.body
    if len(data) > max_bytes:
        raise DashScopeConfigError(f"{field_name} {api.shown_url(ref)} is larger than {max_bytes} bytes.")
    return data


def require_sendable(call: api.ApiCall) -> None:
    """Refuse a submit whose inputs DashScope could not read as they are (the hook's last check).

    :param call: the submit about to be sent.
    :raises DashScopeConfigError: an ``oss://`` input that was not signed, or a local file that was
        not uploaded: pass the call through `sendable` first (the operators do).
    """
    for name, value in _inputs(call).items():
        if api.is_local_reference(value) or (is_oss_uri(value) and not is_temporary_url(value)):
            raise DashScopeConfigError(
                f"{name} {value.strip()} cannot be sent to DashScope as it is; sign oss:// inputs and upload local "
                "files with airflow_provider_aitryon.sources.sendable() first (the operators do)."
            )
