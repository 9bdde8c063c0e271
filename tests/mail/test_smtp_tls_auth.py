"""TLS and AUTH with reused SMTP connections, end to end: the ``examcache-consumer`` process
(PostgreSQL outbox, a private Redis) against an aiosmtpd server that requires STARTTLS and
AUTH, with a certificate made here and trusted through ``SSL_CERT_FILE``. Each connection
does STARTTLS and AUTH once and then carries several mails; a wrong password and an
untrusted certificate are permanent failures (one attempt, no mail)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import uuid
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from webtest import TestApp

from ..conftest import free_port
from .support import (ConsumerProcess, ScriptedHandler, SMTPServer, make_app, queue_mails,
                      wait_until, write_ini)

SENDER = "no-reply@exams.example"
USER, PASSWORD = "exams", "s3cret"


def make_certificate(directory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "examcache test SMTP")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@dataclass
class SecureHandler(ScriptedHandler):
    """Notes, for every stored mail, whether its session was under TLS and authenticated."""

    auths: list[tuple[str, bool]] = field(default_factory=list)
    secure: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        self.secure.append(session.ssl is not None and session.authenticated)
        return await super().handle_DATA(server, session, envelope)

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
        self.auths.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535


@pytest.fixture
def certificate(tmp_path):
    return make_certificate(tmp_path)


@pytest.fixture
def secure_server(certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    smtp = SMTPServer(free_port())
    handler = smtp.handler = SecureHandler()
    smtp.controller = Controller(handler, hostname="127.0.0.1", port=smtp.port,
                                 tls_context=context, require_starttls=True,
                                 auth_required=True, auth_require_tls=True,
                                 authenticator=handler.authenticate)
    smtp.start()
    yield smtp
    smtp.stop()


@pytest.fixture
def system(secure_server, db, pg_url, private_redis, tmp_path):
    consumers: list[ConsumerProcess] = []

    def build(**overrides):
        settings = {"sqlalchemy.url": pg_url, "mail.transport": "smtp", "mail.host": "127.0.0.1",
                    "mail.port": secure_server.port, "mail.tls": "true",
                    "mail.username": USER, "mail.password": PASSWORD,
                    "mail.default_sender": SENDER, "mail.queue_url": private_redis.url,
                    "mail.queue_name": f"tlstest-{uuid.uuid4().hex[:8]}",
                    "mail.retry_delay": "0.5", "mail.relay_interval": "1", "mail.workers": "1",
                    "mail.lease": "3", "mail.shutdown_timeout": "5", **overrides}
        ini = write_ini(str(tmp_path / "mail.ini"), settings)
        consumer = ConsumerProcess(ini, str(tmp_path / "consumer.log"))
        consumers.append(consumer)
        return TestApp(make_app(pg_url, settings, engine=db)), consumer

    yield build
    for consumer in consumers:
        consumer.stop()


def status(testapp, job_id: str) -> dict:
    return testapp.get(f"/jobs/{job_id}").json


def test_starttls_and_auth_once_per_reused_connection(system, secure_server, certificate,
                                                      monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])  # the consumer trusts the test CA
    testapp, consumer = system(**{"mail.smtp_max_messages_per_connection": "3"})
    jobs = queue_mails(testapp, 6, "tls")
    consumer.start()
    wait_until(lambda: all(status(testapp, j)["state"] == "completed" for j in jobs),
               timeout=30, message="all completed")
    handler = secure_server.handler
    assert sorted(secure_server.accepted_ids()) == sorted(f"<{j}@exams.example>" for j in jobs)
    assert handler.secure == [True] * 6  # every mail under TLS, authenticated
    assert len({a.peer for a in handler.attempts}) == 2  # 6 mails on 2 connections (cap 3)
    assert [ok for _mech, ok in handler.auths] == [True, True]  # AUTH once per connection
    assert [status(testapp, j)["attempts"] for j in jobs] == [1] * 6


@pytest.mark.parametrize("case", ["wrong password", "untrusted certificate"])
def test_auth_and_certificate_failures_are_permanent(system, secure_server, certificate,
                                                     monkeypatch, case):
    if case == "wrong password":
        monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
        testapp, consumer = system(**{"mail.password": "wrong"})
        expected = "535"
    else:  # the system's default trust store does not know the test certificate
        testapp, consumer = system()
        expected = "TLS certificate rejected"
    [job] = queue_mails(testapp, 1, "bad")
    consumer.start()
    wait_until(lambda: status(testapp, job)["state"] == "failed", timeout=30, message="failed")
    consumer.wait_for_rounds(2)  # a retry (0.5 s) or a re-queue would have run by now
    result = status(testapp, job)
    assert result["attempts"] == 1 and expected in result["failedReason"], result
    assert secure_server.handler.accepted == []
    auths = [ok for _mech, ok in secure_server.handler.auths]
    if case == "wrong password":  # smtplib tries PLAIN, then LOGIN: both refused
        assert auths and not any(auths)
    else:  # no AUTH, not even the password, before a trusted TLS session
        assert auths == []
