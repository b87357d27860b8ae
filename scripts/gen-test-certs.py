#!/usr/bin/env python3
"""Makes the fixed test certificates under Tests/MeshworkDataPlaneTests/Fixtures/certs.

Run once by a developer (needs the `cryptography` package); the output is committed so the
tests need nothing but the files. Certificates are EC P-256 and follow the SPIFFE X.509-SVID
shape the mesh CA will issue: a URI SAN spiffe://meshwork.test/service/<name>, not a CA,
digitalSignature, EKU server+client auth.
"""
import datetime, os, sys
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "Tests", "MeshworkDataPlaneTests", "Fixtures", "certs")
os.makedirs(out, exist_ok=True)
now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
far = now + datetime.timedelta(days=365 * 50)

def write(name, key, cert):
    with open(os.path.join(out, name + ".key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(os.path.join(out, name + ".pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))

def ca(name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meshwork tests"), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(far)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write(name, key, cert)
    return key, cert

def leaf(name, service, issuer_key, issuer_cert, not_before=now, not_after=far):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meshwork tests")]))
            .issuer_name(issuer_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://meshwork.test/service/{service}")]), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    write(name, key, cert)

ca_key, ca_cert = ca("mesh-ca")
other_key, other_cert = ca("other-ca")
leaf("web", "web", ca_key, ca_cert)
leaf("orders", "orders", ca_key, ca_cert)
leaf("rogue", "orders", other_key, other_cert)
leaf("expired", "web", ca_key, ca_cert, now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
print("wrote certificates to", os.path.abspath(out))
