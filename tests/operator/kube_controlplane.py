"""A throwaway Kubernetes control plane for tests: etcd + kube-apiserver on 127.0.0.1.

envtest-style: no kubelet, no controller-manager, no scheduler. Certificates, the
service-account key pair and a static admin token are generated into a temporary directory;
ports are free ones picked at start. `scripts/setup/30-kube.sh` builds/installs the binaries
into `${CHATPLANE_CACHE:-~/.cache/chatplane}/kube/bin/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from chatplane.cluster import free_port

START_TIMEOUT_S = 90.0
# The operator runs as the ServiceAccount the chart creates (release "chatplane" in this
# namespace), with only the RBAC the chart grants it.
OPERATOR_NAMESPACE = "chatplane-system"
OPERATOR_SA = "chatplane-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
# The same for a release "scoped" installed with watchNamespaces (Roles only).
SCOPED_SA = "scoped-chatplane-operator"
SCOPED_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SCOPED_SA}"


def kube_bin_dir() -> Path:
    cache = os.environ.get("CHATPLANE_CACHE") or str(Path.home() / ".cache" / "chatplane")
    return Path(cache) / "kube" / "bin"


def find_binary(name: str) -> str | None:
    candidate = kube_bin_dir() / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certs(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for 127.0.0.1/localhost, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatplane-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    paths = workdir / "ca.crt", workdir / "apiserver.crt", workdir / "apiserver.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


@dataclasses.dataclass
class ControlPlane:
    """A running etcd + kube-apiserver; `kubeconfig` is an admin kubeconfig file."""

    url: str
    token: str
    ca_file: Path
    kubeconfig: Path
    workdir: Path
    processes: list[subprocess.Popen[bytes]]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def get(self, path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=5) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def operator_env(self, user: str = "operator") -> dict[str, str]:
        """Credentials of the chart's ServiceAccount (`operator`: the cluster-wide release,
        `scoped`: the release limited to some namespaces), not of an admin."""
        return {**os.environ, "KUBECONFIG": str(self.workdir / f"kubeconfig-{user}")}


def _wait_ready(plane: ControlPlane, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        for proc in plane.processes:
            if proc.poll() is not None:
                which = "etcd" if proc is plane.processes[0] else "kube-apiserver"
                raise RuntimeError(f"{which} exited with {proc.returncode}; "
                                   f"see etcd.log and apiserver.log in {plane.workdir}")
        with contextlib.suppress(OSError):
            status, body = plane.get("/readyz")
            if status == 200:
                return
            last = body.decode(errors="replace")[-500:]
        time.sleep(0.25)
    raise TimeoutError(f"kube-apiserver not ready in {START_TIMEOUT_S}s: {last}")


def _kubeconfig(path: Path, url: str, ca: Path, token: str) -> None:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{url}", certificate-authority: "{ca}"}}
users:
- name: admin
  user: {{token: "{token}"}}
contexts:
- name: test
  context: {{cluster: test, user: admin, namespace: default}}
current-context: test
""")


@contextlib.contextmanager
def running(workdir: Path, etcd: str, apiserver: str) -> Iterator[ControlPlane]:
    """Start etcd and kube-apiserver in `workdir`; stop both on exit."""
    ca, cert, key = _certs(workdir)
    sa_key = _key()
    (workdir / "sa.key").write_bytes(_pem_key(sa_key))
    (workdir / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    token, op_token, scoped_token = (secrets.token_hex(16) for _ in range(3))
    groups = f"system:serviceaccounts,system:serviceaccounts:{OPERATOR_NAMESPACE}"
    (workdir / "tokens.csv").write_text(
        f'{token},admin,admin-uid,"system:masters"\n'
        f'{op_token},{OPERATOR_USER},operator-uid,"{groups}"\n'
        f'{scoped_token},{SCOPED_USER},scoped-uid,"{groups}"\n')
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    etcd_log = open(workdir / "etcd.log", "wb")
    api_log = open(workdir / "apiserver.log", "wb")
    try:
        procs.append(subprocess.Popen([
            etcd, "--name", "test", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer_port}",
            "--quota-backend-bytes", str(2 * 1024**3),
        ], stdout=etcd_log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([
            apiserver,
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(api_port),
            "--tls-cert-file", str(cert), "--tls-private-key-file", str(key),
            "--client-ca-file", str(ca),
            "--token-auth-file", str(workdir / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(workdir / "sa.pub"),
            "--service-account-signing-key-file", str(workdir / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--disable-admission-plugins", "ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--cert-dir", str(workdir / "certs"),
            "--v", "1",
        ], stdout=api_log, stderr=subprocess.STDOUT))
        url = f"https://127.0.0.1:{api_port}"
        kubeconfig = workdir / "kubeconfig"
        _kubeconfig(kubeconfig, url, ca, token)
        _kubeconfig(workdir / "kubeconfig-operator", url, ca, op_token)
        _kubeconfig(workdir / "kubeconfig-scoped", url, ca, scoped_token)
        plane = ControlPlane(url, token, ca, kubeconfig, workdir, procs)
        _wait_ready(plane, time.monotonic() + START_TIMEOUT_S)
        yield plane
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        etcd_log.close()
        api_log.close()
