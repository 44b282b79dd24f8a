"""fedmsg x509 signature validation, and a loud start-up check that it can work.

fedmsg validates with ``fedmsg.crypto.validate`` (fedmsg docs, "Authentication";
``fedmsg/crypto/x509_ng.py``): the ``certificate`` must chain to
``ca_cert_location``, not be revoked by ``crl_location``, its key must verify
``signature`` (RSA PKCS#1 v1.5, SHA-1) over the canonical JSON of the message
(``fedmsg.encoding.dumps`` without ``signature``/``certificate``), and its CN must
be allowed for the topic by ``routing_policy`` (all CNs are, unless
``routing_nitpicky``).

What this module adds around fedmsg's verdict:

* **It refuses to start** (:class:`listener.core.errors.SignatureSetupError`, exit 78)
  instead of counting nothing: pyOpenSSL without ``OpenSSL.crypto.load_crl``
  (pyOpenSSL >= 25 removed it; fedmsg then silently swaps in a validator that
  rejects every message), fedmsg's x509 backend not loaded, another backend,
  a CA or CRL that is missing, unreadable, expired, or given as an ``https://``
  URL (fedmsg would download it on the message path, blocking the event loop for
  up to 30 s, and again after every invalid message: a forged-message flood would
  become a download flood).  fedmsg's defaults for both are such URLs, so both
  must be set; ``crl_location = None`` explicitly turns revocation checks off.
* **Reasons.**  A message that fedmsg rejects is diagnosed with fedmsg's own steps
  (``x509_ng._validate_signing_cert``, the key's ``verify``,
  ``utils.validate_policy``) and counted under one of :data:`SIGNATURE_REASONS`.
* **CRL refresh.**  fedmsg caches the CA and CRL for the life of the process and
  reloads them only after a failed validation, so a certificate revoked by a newer
  CRL file would stay valid.  The files' ``mtime``/size are checked every
  ``reload_interval_s`` and the cache is refreshed when they change.
* **Cheap calls.**  ``fedmsg.crypto.validate`` deep-copies its config for every
  message; it gets only the crypto keys, and the routing policy (a large dict in
  Fedora's config) is checked here with fedmsg's ``validate_policy``.
* datagrepper bodies (``source_name``/``source_version``, from backfill) go
  through fedmsg's ``fix_datagrepper_message`` first, as fedmsg's replay does.
* fedmsg logs every invalid message at ERROR with its whole body; those loggers are
  set to CRITICAL (the intake logs each reject once with its msg_id and reason).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from listener.core.errors import SignatureSetupError

log = logging.getLogger(__name__)

#: validator(body) -> None when valid, else the reject reason.
Validator = Callable[[Mapping[str, Any]], "str | None"]

#: Every reason a signed (or unsigned) message can be rejected for.
SIGNATURE_REASONS = (
    "unsigned",  # no signature or no certificate
    "bad_certificate",  # the certificate or signature cannot be decoded
    "untrusted_certificate",  # does not chain to the configured CA (a forgery)
    "revoked_certificate",  # listed in the CRL
    "expired_certificate",  # the signing certificate is out of its validity period
    "crl_expired",  # the configured CRL is past its nextUpdate: refresh it
    "bad_signature",  # the signature does not match the message (tampered)
    "routing_policy",  # the certificate's CN may not publish on this topic
)

#: OpenSSL X509_V_ERR_* codes -> reason (openssl/x509_vfy.h).
_VERIFY_ERRORS = {10: "expired_certificate", 12: "crl_expired", 23: "revoked_certificate"}

#: Reasons that depend on the certificate alone (cached per certificate).
_CERT_REASONS = frozenset(
    {"bad_certificate", "untrusted_certificate", "revoked_certificate", "expired_certificate"}
)
#: Certificates remembered as verified (or refused) until the CA/CRL change.
CERT_CACHE_SIZE = 1024

#: fedmsg config keys fedmsg's x509 validation reads.
_CRYPTO_KEYS = (
    "ssldir",
    "ca_cert_location",
    "crl_location",
    "crypto_backend",
    "crypto_validate_backends",
)


def _local_file(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SignatureSetupError(
            f"validate_signatures is on but {key} is not set: give a local PEM file "
            "(fedmsg's default is an https:// URL it would fetch on the message path)"
        )
    if "://" in value:
        raise SignatureSetupError(
            f"{key} = {value!r} is a URL: fedmsg would download it while handling "
            "messages (and again after each invalid one); download it once "
            "(e.g. from cron) and give the local file"
        )
    if not os.path.isfile(value):
        raise SignatureSetupError(f"{key} = {value!r}: no such file")
    return value


def check_signature_setup(
    fedmsg_config: Mapping[str, Any],
    reload_interval_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> Validator | None:
    """Build the signature validator, or None when ``validate_signatures`` is off.

    Args:
        fedmsg_config: fedmsg's config (``validate_signatures``,
            ``ca_cert_location``, ``crl_location``, ``routing_policy``,
            ``routing_nitpicky``, ``crypto_backend``, ``crypto_validate_backends``).
        reload_interval_s: how often the CA/CRL files are checked for a change,
            seconds (0: on every message).
        clock: monotonic seconds (injected for tests).

    Returns:
        ``validate(body) -> None | reason``: None when fedmsg accepts the message,
        else one of :data:`SIGNATURE_REASONS`.  It never raises.

    Raises:
        SignatureSetupError: validation is on but cannot work (see module
            docstring): pyOpenSSL without ``load_crl``, fedmsg's x509 backend not
            loaded, another backend, a CA/CRL missing, a URL, unreadable, or expired.
    """
    if not fedmsg_config.get("validate_signatures"):
        return None
    try:
        # imported here: pyOpenSSL only when signatures are validated
        import OpenSSL
        from OpenSSL import crypto as ossl
    except ImportError as exc:
        raise SignatureSetupError(f"validate_signatures needs pyOpenSSL: {exc}") from exc
    if not hasattr(ossl, "load_crl"):
        raise SignatureSetupError(
            f"validate_signatures is on but pyOpenSSL {OpenSSL.__version__} has no "
            "OpenSSL.crypto.load_crl: fedmsg would reject every message. "
            "Install pyOpenSSL==24.2.1 (see constraints.txt)."
        )
    # imported here: fedmsg loads its config and its processors at import
    import fedmsg.crypto
    import fedmsg.crypto.utils as futils
    import fedmsg.crypto.x509_ng as x509_ng

    if not getattr(x509_ng, "_cryptography", False):
        raise SignatureSetupError(
            "fedmsg's x509 backend is disabled (cryptography/pyOpenSSL import failed): "
            "fedmsg would reject every message"
        )
    backend = fedmsg_config.get("crypto_backend", "x509")
    if backend != "x509":
        raise SignatureSetupError(f"only the x509 crypto backend is supported, not {backend!r}")
    if any(b != "x509" for b in fedmsg_config.get("crypto_validate_backends") or []):
        raise SignatureSetupError("crypto_validate_backends may only list 'x509'")
    ca_path = _local_file("ca_cert_location", fedmsg_config.get("ca_cert_location"))
    if "crl_location" in fedmsg_config and fedmsg_config["crl_location"] is None:
        crl_path: str | None = None
        log.warning("crl_location is None: revoked certificates will be accepted")
    else:
        crl_path = _local_file("crl_location", fedmsg_config.get("crl_location"))
    _check_files(ossl, ca_path, crl_path)

    cfg: dict[str, Any] = {k: fedmsg_config[k] for k in _CRYPTO_KEYS if k in fedmsg_config}
    cfg.update(
        crypto_backend="x509",
        ca_cert_location=ca_path,
        crl_location=crl_path,
        routing_policy={},
        routing_nitpicky=False,
    )
    routing_policy = dict(fedmsg_config.get("routing_policy") or {})
    nitpicky = bool(fedmsg_config.get("routing_nitpicky", False))
    for name in ("fedmsg.crypto", "fedmsg.crypto.x509_ng", "fedmsg.crypto.utils"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    fedmsg.crypto.init(**cfg)
    futils.load_certificates(ca_path, crl_path, invalidate_cache=True)

    def stamp() -> tuple[Any, ...]:
        out = []
        for p in (ca_path, crl_path):
            try:
                st = os.stat(p) if p else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size) if st else None)
        return tuple(out)

    # certificate field -> (public key, not_valid_after as UNIX s), for certificates
    # fedmsg found to chain to the CA and not revoked; -> reason for those it did not
    trusted: OrderedDict[str, tuple[Any, float]] = OrderedDict()
    refused: OrderedDict[str, str] = OrderedDict()
    state: dict[str, Any] = {
        "stamp": stamp(),
        "checked": clock(),
        "crl_next_update": _crl_next_update(crl_path),
    }

    def forget() -> None:
        trusted.clear()
        refused.clear()

    def maybe_reload() -> None:
        nxt = state["crl_next_update"]
        if nxt is not None and time.time() > nxt:
            state["crl_next_update"] = None
            forget()
            log.error("the CRL %s has expired: every signed message is rejected", crl_path)
        now = clock()
        if now - state["checked"] < reload_interval_s:
            return
        state["checked"] = now
        new = stamp()
        if new != state["stamp"]:
            state["stamp"] = new
            try:
                futils.load_certificates(ca_path, crl_path, invalidate_cache=True)
                state["crl_next_update"] = _crl_next_update(crl_path)
                forget()
                log.info("CA/CRL changed on disk: reloaded %s, %s", ca_path, crl_path)
            except Exception as exc:  # a half-written file: keep the old, retry later
                state["stamp"] = ()
                log.warning("cannot reload CA/CRL: %s", exc)

    def remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        if len(cache) > CERT_CACHE_SIZE:
            cache.popitem(last=False)

    def validate(body: Mapping[str, Any]) -> str | None:
        if "signature" not in body or "certificate" not in body:
            return "unsigned"
        try:
            maybe_reload()
            message = futils.fix_datagrepper_message(dict(body))
            field = message["certificate"]
            hit = trusted.get(field) if isinstance(field, str) else None
            if hit is not None and hit[1] > time.time():
                if not _signature_ok(message, hit[0]):
                    return "bad_signature"
                return _policy(message, routing_policy, nitpicky)
            if isinstance(field, str) and field in refused:
                return refused[field]
            ok = fedmsg.crypto.validate(message, **cfg)
        except Exception as exc:  # a malformed certificate or signature
            log.debug("signature check raised on %s: %s", body.get("msg_id"), exc)
            return diagnose(dict(body), ca_path, crl_path)
        reason = None if ok is True else diagnose(message, ca_path, crl_path)
        if isinstance(field, str):
            if reason is None or reason == "bad_signature":  # the chain was fine
                key = _public_key(field)
                if key is not None:
                    remember(trusted, field, key)
            elif reason in _CERT_REASONS:
                remember(refused, field, reason)
        if reason is None:
            return _policy(message, routing_policy, nitpicky)
        return reason

    return validate


def _crl_next_update(crl_path: str | None) -> float | None:
    """The CRL's nextUpdate as UNIX seconds (None: no CRL or no date)."""
    if not crl_path:
        return None
    with open(crl_path, "rb") as fh:
        nxt = x509.load_pem_x509_crl(fh.read()).next_update_utc
    return nxt.timestamp() if nxt is not None else None


def _public_key(certificate_field: str) -> tuple[Any, float] | None:
    """``(public key, not_valid_after UNIX s)`` of a message's certificate field."""
    try:
        cert = x509.load_pem_x509_certificate(base64.b64decode(certificate_field))
    except Exception:
        return None
    return cert.public_key(), cert.not_valid_after_utc.timestamp()


def _signature_ok(message: Mapping[str, Any], public_key: Any) -> bool:
    """fedmsg's signature step (``x509_ng.validate``): RSA PKCS#1 v1.5 with SHA-1
    over ``fedmsg.encoding.dumps`` of the message without its credentials."""
    # imported here: fedmsg loads its config and its processors at import
    import fedmsg.crypto
    import fedmsg.encoding

    try:
        body = fedmsg.crypto.strip_credentials(dict(message))
        public_key.verify(
            base64.b64decode(message["signature"]),
            fedmsg.encoding.dumps(body).encode("utf-8"),
            padding.PKCS1v15(),
            hashes.SHA1(),
        )
    except Exception:
        return False
    return True


def _check_files(ossl: Any, ca_path: str, crl_path: str | None) -> None:
    """Parse the CA and CRL now, so a bad file fails at start-up, not per message."""
    now = datetime.now(UTC)
    try:
        with open(ca_path, "rb") as fh:
            ca = ossl.load_certificate(ossl.FILETYPE_PEM, fh.read())
    except Exception as exc:
        raise SignatureSetupError(f"cannot read the CA certificate {ca_path}: {exc}") from exc
    if ca.has_expired():
        raise SignatureSetupError(f"the CA certificate {ca_path} has expired")
    if crl_path is None:
        return
    try:
        with open(crl_path, "rb") as fh:
            data = fh.read()
        ossl.load_crl(ossl.FILETYPE_PEM, data)
        crl = x509.load_pem_x509_crl(data)
    except Exception as exc:
        raise SignatureSetupError(f"cannot read the CRL {crl_path}: {exc}") from exc
    nxt = crl.next_update_utc
    if nxt is not None and nxt < now:
        raise SignatureSetupError(
            f"the CRL {crl_path} expired at {nxt.isoformat()}: every message would be "
            "rejected (crl_expired); fetch a fresh one"
        )


def _signer_cn(certificate_pem: bytes) -> str | None:
    cert = x509.load_pem_x509_certificate(certificate_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _policy(
    message: Mapping[str, Any], routing_policy: dict[str, Any], nitpicky: bool
) -> str | None:
    """fedmsg's routing-policy step (``utils.validate_policy``) on a valid message."""
    if not routing_policy and not nitpicky:
        return None
    # imported here: fedmsg loads its config and its processors at import
    import fedmsg.crypto.utils as futils

    try:
        cn = _signer_cn(base64.b64decode(message["certificate"]))
    except Exception:
        return "bad_certificate"
    ok = futils.validate_policy(message.get("topic"), cn, routing_policy, nitpicky=nitpicky)
    return None if ok else "routing_policy"


def diagnose(message: Mapping[str, Any], ca_path: str, crl_path: str | None) -> str:
    """Why fedmsg rejected a signed message: one of :data:`SIGNATURE_REASONS`.

    Runs fedmsg's own steps in its order (chain and CRL, then the signature) and
    names the first that fails; never raises.
    """
    if "signature" not in message or "certificate" not in message:
        return "unsigned"
    try:
        # imported here: fedmsg loads its config and its processors at import
        import fedmsg.crypto.utils as futils
        import fedmsg.crypto.x509_ng as x509_ng

        # imported here: pyOpenSSL only when signatures are validated
        from OpenSSL.crypto import X509StoreContextError
    except Exception:  # pragma: no cover - checked at start-up
        return "bad_signature"
    try:
        base64.b64decode(message["signature"])
        cert_pem = base64.b64decode(message["certificate"])
        x509.load_pem_x509_certificate(cert_pem)
    except Exception:
        return "bad_certificate"
    try:
        ca_pem, crl_pem = futils.load_certificates(ca_path, crl_path)
        x509_ng._validate_signing_cert(ca_pem, cert_pem, crl_pem)
    except X509StoreContextError as exc:
        code = exc.errors[0] if getattr(exc, "errors", None) else None
        return _VERIFY_ERRORS.get(code, "untrusted_certificate")  # type: ignore[arg-type]
    except Exception:
        return "bad_certificate"
    # the chain is fine: the signature does not match (or fedmsg refused the
    # message's ``crypto`` field, which is the same to a reader)
    return "bad_signature"
