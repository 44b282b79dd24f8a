"""fedmsg x509 signature validation, and a loud start-up check that it can work.

fedmsg validates with ``fedmsg.crypto.validate`` (fedmsg docs, "Authentication"):
the ``certificate`` must chain to ``ca_cert_location`` (cached into ``ssldir``),
not be revoked by ``crl_location``, and its key must verify ``signature`` over the
canonical JSON of the message.  fedmsg's x509 backend needs
``OpenSSL.crypto.load_crl``; pyOpenSSL >= 25 removed it, and fedmsg then silently
swaps in a validator that rejects every message.  :func:`check_signature_setup`
refuses to start in that case instead of counting nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .errors import SignatureSetupError

log = logging.getLogger(__name__)

#: validator(body) -> None when valid, else the reject reason.
Validator = Callable[[Mapping[str, Any]], "str | None"]


def check_signature_setup(fedmsg_config: Mapping[str, Any]) -> Validator | None:
    """Build the signature validator, or None when ``validate_signatures`` is off.

    Raises:
        SignatureSetupError: validation is on but cannot work (pyOpenSSL without
            ``load_crl``, cryptography missing, fedmsg's backend disabled).
    """
    if not fedmsg_config.get("validate_signatures"):
        return None
    try:
        from OpenSSL import crypto as ossl
        import OpenSSL
    except ImportError as exc:
        raise SignatureSetupError(f"validate_signatures needs pyOpenSSL: {exc}") from exc
    if not hasattr(ossl, "load_crl"):
        raise SignatureSetupError(
            f"validate_signatures is on but pyOpenSSL {OpenSSL.__version__} has no "
            "OpenSSL.crypto.load_crl: fedmsg would reject every message. "
            "Install pyOpenSSL==24.2.1 (see constraints.txt)."
        )
    import fedmsg.crypto
    import fedmsg.crypto.x509_ng as x509_ng

    if not getattr(x509_ng, "_cryptography", False):
        raise SignatureSetupError(
            "fedmsg's x509 backend is disabled (cryptography/pyOpenSSL import failed)"
        )
    backend = fedmsg_config.get("crypto_backend", "x509")
    if backend != "x509":
        raise SignatureSetupError(f"only the x509 crypto backend is supported, not {backend!r}")
    cfg = dict(fedmsg_config)
    fedmsg.crypto.init(**cfg)

    def validate(body: Mapping[str, Any]) -> str | None:
        if "signature" not in body or "certificate" not in body:
            return "unsigned"
        try:
            ok = fedmsg.crypto.validate(dict(body), **cfg)
        except Exception as exc:  # a malformed certificate or signature
            log.debug("signature check raised on %s: %s", body.get("msg_id"), exc)
            ok = False
        return None if ok else "bad_signature"

    return validate
