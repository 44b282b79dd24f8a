"""A private RabbitMQ shaped like Fedora's public broker (tests and ``make run-amqp``).

Fedora's broker (``amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub``,
fedora-messaging docs "Fedora's Message Broker") takes TLS only, logs readers in
with their client certificate (SASL EXTERNAL, user = the certificate's CN), and
lets the user ``fedora`` declare, bind and read only queues named by a UUID,
bound to ``amq.topic``.  :class:`FedoraBroker` runs Debian's ``rabbitmq-server``
(3.10) the same way from a temp folder:

* a throwaway CA made by ``openssl`` at start (:func:`make_ca`, :func:`issue`),
  a server certificate for ``localhost`` / ``127.0.0.1``, client certificates
  ``CN=fedora`` and ``CN=publisher``, one ``CN=fedora`` that has expired, and a
  second CA that signed nothing the broker trusts (a "wrong CA");
* TLS listener only (``listeners.tcp = none``), ``verify_peer`` with
  ``fail_if_no_peer_cert``, ``auth_mechanisms.1 = EXTERNAL`` and the
  ``rabbitmq_auth_mechanism_ssl`` plugin, ``ssl_cert_login_from = common_name``;
* vhost ``/public_pubsub``; user ``fedora`` with permissions configure = write =
  a UUID, read = a UUID or ``amq.topic`` (so a queue of any other name is
  refused, ``ACCESS_REFUSED``); user ``publisher`` may only write to
  ``amq.topic``; ``guest`` is deleted;
* its own ``epmd`` on a free port, its own node name, data and logs in the
  folder: nothing touches a system broker (:class:`listener.tools.rabbitmq_node.RabbitNode`).

:meth:`FedoraBroker.listener_conf` and :meth:`FedoraBroker.publisher_conf` write
fedora-messaging config files (``fedora.toml`` shape) for either user.

Raises :class:`BrokerError` when ``rabbitmq-server`` or ``openssl`` is missing or
the node does not boot.
"""

from __future__ import annotations

import datetime
import secrets
import shutil
import subprocess
from pathlib import Path

from listener.tools.rabbitmq_node import BrokerError, RabbitNode

__all__ = ["BrokerError", "FedoraBroker", "issue", "make_ca"]

#: The vhost and exchange of Fedora's public broker.
VHOST = "/public_pubsub"
EXCHANGE = "amq.topic"
#: A UUID in its usual text form (what Fedora's broker allows as a queue name).
UUID_RE = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: ``rabbitmqctl set_permissions`` of ``fedora``: configure, write, read.
FEDORA_PERMISSIONS = (f"^{UUID_RE}$", f"^{UUID_RE}$", f"^({UUID_RE}|amq\\.topic)$")
#: ... and of ``publisher``: publish to ``amq.topic`` only.
PUBLISHER_PERMISSIONS = ("^$", "^amq\\.topic$", "^$")


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=str(cwd), capture_output=True, text=True, timeout=60
    )
    if done.returncode:
        raise BrokerError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA ``CN=<name>`` valid 10 years: ``(cert, key)`` PEM paths in
    ``folder`` (``<name>.pem``, ``<name>.key``).

    Raises:
        BrokerError: openssl failed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return cert, key


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%SZ")


def issue(
    folder: Path,
    ca: tuple[Path, Path],
    cn: str,
    *,
    name: str = "",
    server: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """A certificate ``CN=<cn>`` signed by ``ca``: ``(cert, key)`` PEM paths
    (``<name or cn>.pem`` / ``.key`` in ``folder``).

    Args:
        server: for a TLS server: SAN ``DNS:localhost, IP:127.0.0.1``.
        not_before / not_after: validity (default: an hour ago to a year on;
            dates in the past make an expired certificate: ``openssl ca``).

    Raises:
        BrokerError: openssl failed.
    """
    now = datetime.datetime.now(datetime.UTC)
    start = not_before or now - datetime.timedelta(hours=1)
    end = not_after or now + datetime.timedelta(days=365)
    base = name or cn
    cert, key, csr = folder / f"{base}.pem", folder / f"{base}.key", folder / f"{base}.csr"
    db = folder / "ca-db"
    (db / "new").mkdir(parents=True, exist_ok=True)
    (db / "index.txt").touch()
    if not (db / "serial").exists():
        (db / "serial").write_text(secrets.token_hex(8) + "\n")
    ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else ""
    ext += "extendedKeyUsage=" + ("serverAuth" if server else "clientAuth") + "\n"
    conf = folder / f"{base}.cnf"
    conf.write_text(
        "[ca]\ndefault_ca=ca_default\n[ca_default]\n"
        f"dir={db}\ndatabase={db}/index.txt\nnew_certs_dir={db}/new\nserial={db}/serial\n"
        "default_md=sha256\npolicy=policy_any\nunique_subject=no\nemail_in_dn=no\n"
        "[policy_any]\ncommonName=supplied\n"
        f"[ext]\nbasicConstraints=CA:FALSE\n{ext}"
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
        "-keyout", str(key), "-out", str(csr), cwd=folder,
    )  # fmt: skip
    _openssl(
        "ca", "-batch", "-notext", "-config", str(conf), "-extensions", "ext",
        "-cert", str(ca[0]), "-keyfile", str(ca[1]), "-in", str(csr), "-out", str(cert),
        "-startdate", _stamp(start), "-enddate", _stamp(end), cwd=folder,
    )  # fmt: skip
    return cert, key


class FedoraBroker(RabbitNode):
    """A RabbitMQ node shaped like Fedora's public broker (module docstring).

    Args:
        folder: where its data, logs and certificates go (created).
        name: part of the Erlang node name (``<name>-<pid>@localhost``).
        timeout_factor: multiplies every wait (:class:`RabbitNode`).

    Attributes:
        port: the AMQPS port on 127.0.0.1.
        tls: the folder of the certificates: ``ca.pem`` (the broker's CA),
            ``server.pem``, ``fedora.pem``/``.key``, ``publisher.pem``/``.key``,
            ``fedora-expired.pem``/``.key``, ``wrong-ca.pem``.
    """

    def __init__(
        self, folder: Path, name: str = "wallboard-fedora", timeout_factor: float = 1.0
    ) -> None:
        super().__init__(folder, name, timeout_factor)
        self.tls = folder / "tls"

    # -- files ------------------------------------------------------------------

    def make_pki(self) -> None:
        """The CA, the server's, fedora's, publisher's and an expired certificate,
        and a wrong CA (once; kept across restarts)."""
        if (self.tls / "wrong-ca.pem").exists():
            return
        ca = make_ca(self.tls, "ca")
        issue(self.tls, ca, "localhost", name="server", server=True)
        issue(self.tls, ca, "fedora")
        issue(self.tls, ca, "publisher")
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
        issue(
            self.tls,
            ca,
            "fedora",
            name="fedora-expired",
            not_before=past,
            not_after=past + datetime.timedelta(days=30),
        )
        make_ca(self.tls, "wrong-ca")

    plugins = ("rabbitmq_auth_mechanism_ssl",)

    def configure(self) -> None:
        """The certificates (:meth:`make_pki`), then the config files.

        Raises:
            BrokerError: openssl is missing or failed.
        """
        if not shutil.which("openssl"):
            raise BrokerError("needs openssl (make sysdeps)")
        self.make_pki()
        super().configure()

    def listeners(self) -> str:
        """TLS only, client certificates checked, the login is their CN (SASL EXTERNAL)."""
        t = self.tls
        return (
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {t / 'ca.pem'}\n"
            f"ssl_options.certfile = {t / 'server.pem'}\n"
            f"ssl_options.keyfile = {t / 'server.key'}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            "ssl_options.versions.1 = tlsv1.3\n"
            "ssl_options.versions.2 = tlsv1.2\n"
            "auth_mechanisms.1 = EXTERNAL\n"
            "ssl_cert_login_from = common_name\n"
        )

    @property
    def url(self) -> str:
        """fedora's URL, as Fedora's (no password), on this broker's port."""
        return f"amqps://fedora:@localhost:{self.port}/%2Fpublic_pubsub"

    @property
    def publisher_url(self) -> str:
        return f"amqps://publisher:@localhost:{self.port}/%2Fpublic_pubsub"

    def _toml(self, path: Path, url: str, cert: str, ca: str = "ca") -> Path:
        t = self.tls
        path.write_text(
            f'amqp_url = "{url}"\n'
            'callback = "fedora_messaging.example:printer"\n'
            'publish_exchange = "amq.topic"\n\n'
            "[tls]\n"
            f'ca_cert = "{t / (ca + ".pem")}"\n'
            f'keyfile = "{t / (cert + ".key")}"\n'
            f'certfile = "{t / (cert + ".pem")}"\n\n'
            "[client_properties]\n"
            'app = "fedmsg-wallboard test"\n\n'
            '[exchanges."amq.topic"]\n'
            'type = "topic"\ndurable = true\nauto_delete = false\narguments = {}\n\n'
            "[[bindings]]\n"
            'exchange = "amq.topic"\nrouting_keys = ["#"]\n'
        )
        return path

    def listener_conf(self, path: Path | None = None, cert: str = "fedora", ca: str = "ca") -> Path:
        """A fedora-messaging config file for user ``fedora`` (Fedora's ``fedora.toml``
        shape, this broker's URL and certificates): its path."""
        return self._toml(path or self.tmp / "fedora.toml", self.url, cert, ca)

    def publisher_conf(self, path: Path | None = None) -> Path:
        """The same for user ``publisher`` (what ``amqp-replay`` publishes with)."""
        return self._toml(path or self.tmp / "publisher.toml", self.publisher_url, "publisher")

    # -- the node -----------------------------------------------------------------

    def provision(self) -> None:
        """The vhost, users ``fedora`` and ``publisher`` (certificate login only) and
        their permissions; ``guest`` deleted."""
        users = self.ctl("list_users", "-q", "--no-table-headers")
        if "guest" in users.split():
            self.ctl("delete_user", "guest")
        if VHOST not in self.ctl("list_vhosts", "-q", "--no-table-headers").split():
            self.ctl("add_vhost", VHOST)
        for user, perms in (("fedora", FEDORA_PERMISSIONS), ("publisher", PUBLISHER_PERMISSIONS)):
            if user not in users.split():
                self.ctl("add_user", user, secrets.token_hex(16))
                self.ctl("clear_password", user)  # certificate login only
            self.ctl("set_permissions", "-p", VHOST, user, *perms)

    def queues(self) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, unacknowledged)}`` in ``/public_pubsub``."""
        return self.queue_counts(VHOST)
